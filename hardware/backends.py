"""Where buses come from: real Linux I2C adapters, or fake buses with emulated chips on them.

A back end is created once (by the agent from its config, by a test, by the gateway for each
simulated device) and passed to whatever opens sensors; nothing here is global. It owns its
buses: sensors borrow them and `close()` on the back end releases them.
"""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Self

from hardware.bus import FakeI2CBus, I2CBus
from hardware.errors import BusError, HardwareError, SensorMissingError
from hardware.sensor import BackendKind, Clock
from hardware.timing import RealTimer, Timer, VirtualTimer

if TYPE_CHECKING:
    from smbus2 import SMBus


class EmulatedBackend:
    """Fake I2C buses, one per bus number, created on first use.

    `clock` drives the signal models (seconds since the epoch; pass a virtual clock to run
    simulated time). `timer` is shared by drivers and emulators for conversion waits; the
    default `VirtualTimer` makes those waits free, so a simulated fleet costs no real sleeping.
    `seed` makes every sensor opened on this back end reproducible; give each simulated device
    its own so their signals differ.
    """

    kind = BackendKind.EMULATED

    def __init__(
        self,
        clock: Clock = time.time,
        seed: int = 0,
        *,
        timer: Timer | None = None,
    ) -> None:
        self.clock = clock
        self.seed = seed
        self.timer: Timer = timer if timer is not None else VirtualTimer()
        self._buses: dict[int, FakeI2CBus] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"EmulatedBackend(seed={self.seed}, buses={sorted(self._buses)})"

    def i2c_bus(self, n: int) -> FakeI2CBus:
        with self._lock:
            bus = self._buses.get(n)
            if bus is None:
                bus = self._buses[n] = FakeI2CBus(n)
            return bus

    def close(self) -> None:
        with self._lock:
            buses, self._buses = list(self._buses.values()), {}
        for bus in buses:
            bus.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class RealBackend:
    """Linux I2C adapters through smbus2, one shared handle per /dev/i2c-N.

    Handles are shared by every sensor on a bus and each transfer holds a per-bus lock: smbus2
    selects the target address with one ioctl and transfers with another, so two threads
    talking to two chips on one handle could otherwise send a transfer to the wrong chip.
    `dev_dir` exists for tests; on a board it is /dev.
    """

    kind = BackendKind.REAL

    def __init__(self, *, clock: Clock = time.time, dev_dir: str | Path = "/dev") -> None:
        self.clock = clock
        self.timer: Timer = RealTimer()
        self.dev_dir = Path(dev_dir)
        self._buses: dict[int, _SerializedBus] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"RealBackend(dev_dir={str(self.dev_dir)!r}, open={sorted(self._buses)})"

    def i2c_bus(self, n: int) -> I2CBus:
        """The adapter /dev/i2c-`n`, opened on first use.

        Raises SensorMissingError when the device node does not exist (I2C disabled or wrong
        bus number) and HardwareError when it cannot be opened (permissions, not an adapter).
        """
        with self._lock:
            bus = self._buses.get(n)
            if bus is None:
                bus = self._buses[n] = _SerializedBus(self._open_smbus(n))
            return bus

    def close(self) -> None:
        with self._lock:
            buses, self._buses = list(self._buses.values()), {}
        for bus in buses:
            bus.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _open_smbus(self, n: int) -> SMBus:
        # Imported here so that `import hardware` works where smbus2 cannot (it needs fcntl).
        from smbus2 import SMBus

        path = self.dev_dir / f"i2c-{n}"
        smbus = SMBus()
        try:
            smbus.open(str(path))
        except FileNotFoundError as exc:
            raise SensorMissingError(
                errno.ENOENT,
                f"{path} does not exist: enable I2C (raspi-config, dtparam=i2c_arm=on) "
                "or check the bus number",
            ) from exc
        except PermissionError as exc:
            raise HardwareError(
                f"permission denied opening {path}: add the service user to the 'i2c' group"
            ) from exc
        except OSError as exc:
            # The node opened but failed the adapter ioctl; smbus2 leaves the fd open then.
            smbus.close()
            raise BusError(
                exc.errno or errno.EIO, f"{path} is not a usable I2C adapter: {exc.strerror}"
            ) from exc
        return smbus


Backend = EmulatedBackend | RealBackend


def make_backend(
    kind: BackendKind | str, *, clock: Clock = time.time, seed: int = 0
) -> EmulatedBackend | RealBackend:
    """A back end chosen by configuration ("real" or "emulated"), e.g. from an agent's TOML."""
    try:
        chosen = BackendKind(kind)
    except ValueError:
        known = ", ".join(k.value for k in BackendKind)
        raise ValueError(f"unknown backend {kind!r}; known: {known}") from None
    if chosen is BackendKind.REAL:
        return RealBackend(clock=clock)
    return EmulatedBackend(clock=clock, seed=seed)


class _SerializedBus:
    """An I2CBus whose transfers hold one lock, so threads sharing an adapter take turns."""

    def __init__(self, bus: I2CBus) -> None:
        self._bus = bus
        self._lock = threading.Lock()

    def read_byte(self, i2c_addr: int) -> int:
        with self._lock:
            return self._bus.read_byte(i2c_addr)

    def write_byte(self, i2c_addr: int, value: int) -> None:
        with self._lock:
            self._bus.write_byte(i2c_addr, value)

    def read_byte_data(self, i2c_addr: int, register: int) -> int:
        with self._lock:
            return self._bus.read_byte_data(i2c_addr, register)

    def write_byte_data(self, i2c_addr: int, register: int, value: int) -> None:
        with self._lock:
            self._bus.write_byte_data(i2c_addr, register, value)

    def read_i2c_block_data(self, i2c_addr: int, register: int, length: int) -> list[int]:
        with self._lock:
            return self._bus.read_i2c_block_data(i2c_addr, register, length)

    def write_i2c_block_data(self, i2c_addr: int, register: int, data: Sequence[int]) -> None:
        with self._lock:
            self._bus.write_i2c_block_data(i2c_addr, register, data)

    def close(self) -> None:
        with self._lock:
            self._bus.close()
