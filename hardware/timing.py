"""Short waits inside a driver (conversion time, NVM copy), kept apart from the sensor's clock.

`Sensor.clock` stamps readings with wall-clock time, which may be virtual and may jump (NTP).
Polling deadlines need a monotonic time source and a way to wait, and the two must agree with
whatever is answering on the bus: a real chip runs on real time, an emulator on the timer it
shares with its driver. Emulated back ends use `VirtualTimer` so that a simulated fleet never
spends real milliseconds waiting for conversions that exist only in a model.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Timer(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards; only differences are meaningful."""
        ...

    def sleep(self, seconds: float) -> None:
        """Let `seconds` pass on this timer."""
        ...


class RealTimer:
    """Real time: what a driver talking to real silicon must use."""

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class VirtualTimer:
    """Time that advances only when someone sleeps on it; sleeping returns at once.

    Shared between a driver and its emulator, it makes the driver's polling loop run for real
    (status reads, deadlines) at no wall-clock cost. Threads share one virtual time line, so a
    sleep in one thread also ages conversions started by another: harmless for emulation, where
    only the order of events matters.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def monotonic(self) -> float:
        with self._lock:
            return self._now

    def sleep(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"cannot sleep a negative time: {seconds}")
        with self._lock:
            self._now += seconds


class ManualClock:
    """A `Clock` (seconds since the epoch) that moves only when told: for replays and tests."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"a clock for signal models must not go back: {seconds}")
        with self._lock:
            self._now += seconds
