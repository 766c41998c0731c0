"""Where buses, pins and sysfs come from: the board's own, or emulated ones.

A back end is created once (by the agent from its config, by a test, by the gateway for each
simulated device) and passed to whatever opens sensors; nothing here is global. It owns its
buses, its gpiozero pin factory and its sysfs tree: sensors borrow them and `close()` on the
back end releases them. gpiozero's class-level `Device.pin_factory` is never read or set: every
gpiozero device is built with `pin_factory=backend.pin_factory()`, so two back ends in one
process (a real board and a simulated fleet in the gateway) never share pins.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Self

from edgetwin.hardware.bus import FakeI2CBus, I2CBus
from edgetwin.hardware.errors import BusError, HardwareError, SensorMissingError
from edgetwin.hardware.sensor import BackendKind, Clock
from edgetwin.hardware.sysfs import FakeSysfsTree, SysfsTree
from edgetwin.hardware.timing import RealTimer, Timer, VirtualTimer

if TYPE_CHECKING:
    from gpiozero import Factory
    from gpiozero.pins.mock import MockFactory
    from smbus2 import SMBus, i2c_msg


class EmulatedBackend:
    """Fake I2C buses (one per bus number), one gpiozero `MockFactory` and one fake sysfs tree,
    each created on first use.

    `clock` drives the signal models (seconds since the epoch; pass a virtual clock to run
    simulated time). `timer` is shared by drivers and emulators for conversion waits; the
    default `VirtualTimer` makes those waits free, so a simulated fleet costs no real sleeping.
    `seed` makes every sensor opened on this back end reproducible; give each simulated device
    its own so their signals differ.

    The sysfs tree lives in a private temporary directory, made when `sysfs` is first used and
    removed by `close()`; the mock pin factory is closed there too. Both come back fresh if the
    back end is used again after `close()`, as buses do.
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
        self._pin_factory: MockFactory | None = None
        self._sysfs: FakeSysfsTree | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"EmulatedBackend(seed={self.seed}, buses={sorted(self._buses)})"

    def i2c_bus(self, n: int) -> FakeI2CBus:
        with self._lock:
            bus = self._buses.get(n)
            if bus is None:
                bus = self._buses[n] = FakeI2CBus(n)
            return bus

    def pin_factory(self) -> MockFactory:
        """This back end's gpiozero `MockFactory`, made on first use; pass it as `pin_factory=`.

        Its pins are plain `MockPin`s whatever GPIOZERO_MOCK_PIN_CLASS says, since emulators
        choose their own pin classes (an HC-SR04 needs a trigger pin that echoes, a PWM
        output's load a `MockPWMPin`): see `hardware.gpio.EmulatorPinFactory`. The board
        revision follows GPIOZERO_MOCK_REVISION as in gpiozero, a Pi 3 Model B by default.
        """
        with self._lock:
            if self._pin_factory is None:
                # Imported here: gpiozero takes ~0.2 s to import; the hardware layer must not.
                from edgetwin.hardware.gpio import EmulatorPinFactory

                self._pin_factory = EmulatorPinFactory()
            return self._pin_factory

    @property
    def sysfs(self) -> FakeSysfsTree:
        """The emulated /sys, rooted in a private temporary directory made on first use."""
        with self._lock:
            if self._sysfs is None:
                root = tempfile.mkdtemp(prefix="edgetwin-sysfs-")
                self._sysfs = FakeSysfsTree(Path(root))
            return self._sysfs

    def close(self) -> None:
        """Close the buses and the pin factory, and delete the sysfs tree from disk.

        Sensors opened on this back end should be closed first: gpiozero devices still open
        keep their (now closed) mock pins until they are closed themselves.
        """
        with self._lock:
            buses, self._buses = list(self._buses.values()), {}
            factory, self._pin_factory = self._pin_factory, None
            sysfs, self._sysfs = self._sysfs, None
        for bus in buses:
            bus.close()
        if factory is not None:
            factory.close()
        if sysfs is not None:
            shutil.rmtree(sysfs.root, ignore_errors=True)

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
    """Linux I2C adapters through smbus2, the board's GPIO through gpiozero, and /sys.

    I2C handles, one per /dev/i2c-N, are shared by every sensor on a bus and each transfer
    holds a per-bus lock: smbus2 selects the target address with one ioctl and transfers with
    another, so two threads talking to two chips on one handle could otherwise send a transfer
    to the wrong chip. `dev_dir` and `sysfs_root` exist for tests; on a board they are /dev and
    /sys.
    """

    kind = BackendKind.REAL

    def __init__(
        self,
        *,
        clock: Clock = time.time,
        dev_dir: str | Path = "/dev",
        sysfs_root: str | Path = "/sys",
    ) -> None:
        self.clock = clock
        self.timer: Timer = RealTimer()
        self.dev_dir = Path(dev_dir)
        self.sysfs = SysfsTree(Path(sysfs_root))
        self._buses: dict[int, _SerializedBus] = {}
        self._pin_factory: Factory | None = None
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

    def pin_factory(self) -> Factory:
        """The gpiozero pin factory gpiozero would pick for this board, made on first use.

        The choice follows gpiozero (`Device._default_pin_factory`, gpiozero 2.0): the
        factory named by GPIOZERO_PIN_FACTORY if set, else the first of lgpio, rpigpio, pigpio
        and native that loads. It is built here from gpiozero's "gpiozero_pin_factories" entry
        points rather than through `Device.ensure_pin_factory()`, which would store it in the
        class-level `Device.pin_factory` for every device in the process. Raises
        SensorMissingError, naming every factory tried and why it failed, when none loads (not
        a Raspberry Pi, or no GPIO library installed).
        """
        with self._lock:
            if self._pin_factory is None:
                self._pin_factory = _load_pin_factory()
            return self._pin_factory

    def close(self) -> None:
        with self._lock:
            buses, self._buses = list(self._buses.values()), {}
            factory, self._pin_factory = self._pin_factory, None
        for bus in buses:
            bus.close()
        if factory is not None:
            factory.close()

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
        # Imported here: the hardware layer must import where smbus2 cannot (it needs fcntl).
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


PIN_FACTORY_PREFERENCE = ("lgpio", "rpigpio", "pigpio", "native")
"""gpiozero 2.0's own order of preference (gpiozero/devices.py): lgpio first because it works
on every Pi, the Pi 5 included, through the kernel's GPIO character device."""

PIN_FACTORY_ENV = "GPIOZERO_PIN_FACTORY"


def _load_pin_factory() -> Factory:
    # Imported here: importlib.metadata (with email and zipfile) is ~1 MiB that a process
    # without real GPIO pins never needs.
    from importlib.metadata import entry_points

    available = {ep.name: ep for ep in entry_points(group="gpiozero_pin_factories")}
    wanted = os.environ.get(PIN_FACTORY_ENV)
    names = (wanted,) if wanted else PIN_FACTORY_PREFERENCE
    failures: list[str] = []
    for name in names:
        entry = available.get(name) or available.get(name.lower())
        if entry is None:
            failures.append(f"{name}: no such gpiozero pin factory")
            continue
        try:
            factory: Factory = entry.load()()
        except Exception as exc:  # gpiozero itself falls back on any failure, so do we
            failures.append(f"{name}: {exc}")
            continue
        return factory
    source = f"{PIN_FACTORY_ENV}={wanted}" if wanted else "gpiozero's defaults"
    raise SensorMissingError(
        errno.ENODEV,
        f"no GPIO pin factory could be loaded ({source}): {'; '.join(failures)}. "
        "On a Raspberry Pi install lgpio (apt install python3-lgpio, or pip install lgpio)",
    )


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

    def i2c_rdwr(self, *i2c_msgs: i2c_msg) -> None:
        with self._lock:
            self._bus.i2c_rdwr(*i2c_msgs)

    def close(self) -> None:
        with self._lock:
            self._bus.close()
