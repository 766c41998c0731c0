"""Driver options: the `options` table of a sensor's or an output's settings, checked key by
key as the driver reads them."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar

from edgetwin.hardware.errors import SensorSettingsError, SettingsError

if TYPE_CHECKING:
    from edgetwin.hardware.drivers import OptionValue


class DriverOptions:
    """A driver's `Placement.options`, each key checked when the driver asks for it.

    Errors (`error`: a sensor's or an output's settings error) name the driver and the key.
    `check_all_read()` refuses keys the driver never asked for, so a typo ("debounse") stops
    start-up instead of silently keeping the default. Importable without gpiozero or smbus2:
    a desired document is validated without loading either.
    """

    error: ClassVar[type[SettingsError]] = SensorSettingsError

    def __init__(self, driver: str, options: Mapping[str, OptionValue]) -> None:
        self.driver = driver
        self._options = dict(options)
        self._read: set[str] = set()

    def number(self, key: str, default: float, *, lo: float, hi: float) -> float:
        """A float option in [lo, hi]; ints are accepted, bools and strings are not."""
        self._read.add(key)
        value = self._options.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(f"{self.driver} option {key!r} must be a number, got {value!r}")
        if not lo <= value <= hi or math.isnan(value):
            raise self.error(
                f"{self.driver} option {key!r} must be within {lo}..{hi}, got {value!r}"
            )
        return float(value)

    def integer(self, key: str, default: int, *, lo: int, hi: int) -> int:
        self._read.add(key)
        value = self._options.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(f"{self.driver} option {key!r} must be an integer, got {value!r}")
        if not lo <= value <= hi:
            raise self.error(
                f"{self.driver} option {key!r} must be within {lo}..{hi}, got {value!r}"
            )
        return value

    def flag(self, key: str, default: bool) -> bool:
        self._read.add(key)
        value = self._options.get(key, default)
        if not isinstance(value, bool):
            raise self.error(f"{self.driver} option {key!r} must be true or false, got {value!r}")
        return value

    def check_all_read(self) -> None:
        unknown = sorted(set(self._options) - self._read)
        if unknown:
            known = ", ".join(sorted(self._read)) or "none"
            raise self.error(
                f"{self.driver} has no option {', '.join(map(repr, unknown))}; known: {known}"
            )
