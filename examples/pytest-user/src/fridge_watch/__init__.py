"""fridge-watch: alerts when a fridge's temperature leaves its band (an example edgetwin user)."""

from fridge_watch.monitor import Alert, FridgeWatch

__all__ = ["Alert", "FridgeWatch"]
