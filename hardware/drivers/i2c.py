"""What the I2C chip drivers share: the driver's hold on its chip, and the emulator's signals.

Each I2C chip module (`bme280`, `sht3x`, `bh1750`, `ads1115`) builds its driver on `I2CSensor`
and keeps everything chip-specific (register map, bring-up, measurement) to itself. The
translation of bus errors lives with the bus (`hardware.bus.bus_errors`); `I2CSensor` only
names the chip and the step in it. `SignalInputs` holds the signal models of an emulator that
measures several quantities.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import ClassVar

from edgetwin.hardware.bus import I2CBus, bus_errors
from edgetwin.hardware.sensor import BackendKind, Clock, Sensor
from edgetwin.hardware.signals import Constant, SignalModel
from edgetwin.hardware.timing import RealTimer, Timer


class I2CSensor(Sensor):
    """A driver bound to one chip at one address on an injected I2C bus.

    The constructor refuses an address the chip cannot be strapped to and does not touch the
    bus. Subclasses take `_lock` around every sequence of transfers that makes one operation,
    and wrap each transfer in `_bus_errors`, so that every OSError from the bus reaches the
    caller as a `HardwareError` naming the chip and the step.
    """

    addresses: ClassVar[tuple[int, ...]]
    """Every address the chip can be strapped to."""
    address_rule: ClassVar[str]
    """What the ValueError for any other address says before ", not 0x..", e.g. "a BME280
    answers only at 0x76 or 0x77 (SDO strapping)"."""

    def __init__(
        self,
        bus: I2CBus,
        address: int,
        *,
        backend: BackendKind,
        clock: Clock,
        timer: Timer | None,
    ) -> None:
        if address not in self.addresses:
            raise ValueError(f"{self.address_rule}, not {address:#04x}")
        super().__init__(backend, clock)
        self.address = address
        self._bus = bus
        self._timer: Timer = timer if timer is not None else RealTimer()
        # One reading is several transfers with waits between them (commands or a config
        # write, status polls, result reads); another thread's transfers in between would
        # restart or reconfigure the chip, trip the polling or take this reading's result.
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(address={self.address:#04x}, "
            f"backend={self.status.backend.value})"
        )

    def _where(self) -> str:
        return f"{self.driver_name} at {self.address:#04x}"

    def _bus_errors(self, what: str) -> AbstractContextManager[None]:
        """`bus_errors` for one step of this chip's: "bme280 at 0x76: read chip id"."""
        return bus_errors(f"{self._where()}: {what}")


class SignalInputs:
    """The signal models an emulated chip measures, one per quantity, by quantity name.

    Quantities given no model hold their default value (`Constant`); a name the chip does not
    measure is a ValueError, at construction or in `set`, so a typo cannot leave a quantity on
    its default unnoticed. Not locked: the emulator samples and replaces models under its own
    lock.
    """

    def __init__(
        self,
        chip: str,
        defaults: Mapping[str, float],
        given: Mapping[str, SignalModel] | None,
    ) -> None:
        unknown = set(given or {}) - set(defaults)
        if unknown:
            raise ValueError(
                f"{chip} emulator has no quantity {sorted(unknown)}; known: {sorted(defaults)}"
            )
        self.chip = chip
        self._models: dict[str, SignalModel] = {
            name: Constant(value) for name, value in defaults.items()
        }
        self._models.update(given or {})

    def __getitem__(self, quantity: str) -> SignalModel:
        return self._models[quantity]

    def set(self, quantity: str, model: SignalModel) -> None:
        """Measure `quantity` from `model` from now on."""
        if quantity not in self._models:
            raise ValueError(f"{self.chip} emulator has no quantity {quantity!r}")
        self._models[quantity] = model
