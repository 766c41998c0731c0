"""I2C as drivers see it, a fake bus that answers like Linux i2c-dev, and error translation.

Drivers receive an `I2CBus`; in production that is an `smbus2.SMBus` (wrapped by the real back
end), in tests and simulation a `FakeI2CBus` routing transfers to register-level emulators.
"""

from __future__ import annotations

import errno
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import Protocol, Self

from hardware.errors import BusError, HardwareError, SensorMissingError

I2C_BLOCK_MAX = 32
"""Longest SMBus block transfer; smbus2 raises ValueError past it, and so does the fake."""

NO_DEVICE_ERRNO = errno.ENXIO
"""What `FakeI2CBus` raises for an address nobody answers.

The kernel's Documentation/i2c/fault-codes.rst assigns ENXIO to "the address phase of a
transfer didn't get an ACK", so that is what the fake reports. Several adapter drivers still
return EREMOTEIO (121) instead, the Raspberry Pi's i2c-bcm2835 among them, which is why
`MISSING_ERRNOS` holds both and drivers must never test for one alone.
"""

MISSING_ERRNOS = frozenset({errno.ENXIO, errno.EREMOTEIO})
"""Errno values that mean "nothing acknowledged this address": the chip is absent."""


class I2CBus(Protocol):
    """The part of `smbus2.SMBus` that drivers use; a real `SMBus` satisfies it as is.

    Parameter names match smbus2's so keyword calls work on both; smbus2's extra `force`
    keyword is left out because drivers must not depend on it.
    """

    def read_byte(self, i2c_addr: int) -> int: ...

    def write_byte(self, i2c_addr: int, value: int) -> None: ...

    def read_byte_data(self, i2c_addr: int, register: int) -> int: ...

    def write_byte_data(self, i2c_addr: int, register: int, value: int) -> None: ...

    def read_i2c_block_data(self, i2c_addr: int, register: int, length: int) -> list[int]: ...

    def write_i2c_block_data(self, i2c_addr: int, register: int, data: Sequence[int]) -> None: ...

    def close(self) -> None: ...


def translate_os_error(exc: OSError, what: str) -> HardwareError:
    """Map an OSError from a bus transfer to the hardware error tree; raise the result `from exc`.

    An error that is already a `HardwareError` (ours also inherit OSError) passes unchanged, so
    translating twice is harmless. The errno is kept on the new exception for callers that log it.
    """
    if isinstance(exc, HardwareError):
        return exc
    code = exc.errno if exc.errno is not None else errno.EIO
    reason = exc.strerror or os.strerror(code)
    if code in MISSING_ERRNOS:
        return SensorMissingError(code, f"{what}: no answer ({reason})")
    return BusError(code, f"{what}: {reason}")


@contextmanager
def bus_errors(what: str) -> Iterator[None]:
    """Translate OSError raised inside the block, once: the edge between a driver and its bus.

    `what` names the device and the operation, e.g. "bme280 at 0x76: read chip id".
    """
    try:
        yield
    except HardwareError:
        raise
    except OSError as exc:
        raise translate_os_error(exc, what) from exc


def _check_byte(value: int, what: str) -> None:
    if not 0 <= value <= 0xFF:
        raise ValueError(f"{what} must fit in one byte, got {value!r}")


class RegisterDevice(ABC):
    """A chip emulated at register level: what it answers on the bus, byte by byte.

    Subclasses implement single-register access; block transfers and the register pointer used by
    plain byte reads are built on top, auto-incrementing as most I2C sensors do. Chips whose
    block writes work differently (the BME280 takes register/value pairs) override `write_block`.
    """

    _pointer: int = 0

    @abstractmethod
    def read_register(self, reg: int) -> int:
        """Value of one 8-bit register, as the chip would put it on the bus now."""

    @abstractmethod
    def write_register(self, reg: int, value: int) -> None:
        """Store one byte written by the host; read-only registers ignore it."""

    def read_block(self, reg: int, length: int) -> list[int]:
        values = [self.read_register((reg + i) & 0xFF) for i in range(length)]
        self._pointer = (reg + length) & 0xFF
        return values

    def write_block(self, reg: int, data: Sequence[int]) -> None:
        for i, value in enumerate(data):
            self.write_register((reg + i) & 0xFF, value)
        self._pointer = (reg + len(data)) & 0xFF

    def set_pointer(self, reg: int) -> None:
        """A write of the register address alone (SMBus "send byte")."""
        self._pointer = reg & 0xFF

    def read_next(self) -> int:
        """A read without a register address (SMBus "receive byte"): at the pointer, then on."""
        value = self.read_register(self._pointer)
        self._pointer = (self._pointer + 1) & 0xFF
        return value

    def power_on(self) -> None:  # noqa: B027 - a chip without volatile state need not override
        """Called when the device is (re)connected: a chip loses volatile state on power-up."""


class FakeI2CBus:
    """An I2C adapter with emulated chips on it, failing the way Linux i2c-dev fails.

    Every call is one transfer: it raises `OSError(ENXIO)` when nothing is attached at the
    address or the device is unplugged, and raises injected errors before the device sees the
    transfer, so a failed write has no effect. One lock serialises transfers because the gateway
    reads sensors from several threads, and a real adapter also carries one transfer at a time.
    """

    def __init__(self, number: int = 1) -> None:
        self.number = number
        self._devices: dict[int, RegisterDevice] = {}
        self._unplugged: set[int] = set()
        self._faults: dict[int, list[int]] = {}
        self._closed = False
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return f"FakeI2CBus({self.number}, devices={sorted(hex(a) for a in self._devices)})"

    # -- wiring and fault injection --------------------------------------------------------

    def attach(self, address: int, device: RegisterDevice) -> None:
        """Wire a device at `address`; two chips on one address is a board error, so refuse it."""
        self._check_address(address)
        with self._lock:
            if address in self._devices:
                raise ValueError(f"address {address:#04x} on {self!r} is already taken")
            self._devices[address] = device
            self._unplugged.discard(address)

    def attach_if_free(self, address: int, build: Callable[[], RegisterDevice]) -> RegisterDevice:
        """The device at `address`, attaching `build()` first if none is wired there.

        Atomic, so two threads opening the same emulated sensor cannot both attach a chip.
        """
        self._check_address(address)
        with self._lock:
            device = self._devices.get(address)
            if device is None:
                device = self._devices[address] = build()
            return device

    def detach(self, address: int) -> RegisterDevice:
        """Remove the device at `address` for good and return it."""
        with self._lock:
            self._unplugged.discard(address)
            self._faults.pop(address, None)
            try:
                return self._devices.pop(address)
            except KeyError:
                raise KeyError(f"no device at {address:#04x} on {self!r}") from None

    def device_at(self, address: int) -> RegisterDevice | None:
        """The device wired at `address`, plugged in or not."""
        with self._lock:
            return self._devices.get(address)

    def unplug(self, address: int) -> None:
        """Keep the device wired but stop it answering, as when its cable is pulled."""
        with self._lock:
            if address not in self._devices:
                raise KeyError(f"no device at {address:#04x} on {self!r}")
            self._unplugged.add(address)

    def replug(self, address: int) -> None:
        """Reconnect an unplugged device; it powers up again and loses its volatile state."""
        with self._lock:
            if address not in self._unplugged:
                return
            self._unplugged.discard(address)
            self._devices[address].power_on()

    def inject_error(self, address: int, errno_code: int, count: int = 1) -> None:
        """Make the next `count` transfers to `address` raise `OSError(errno_code)`."""
        if count < 1:
            raise ValueError(f"count must be at least 1, got {count}")
        with self._lock:
            self._faults.setdefault(address, []).extend([errno_code] * count)

    # -- the I2CBus face -------------------------------------------------------------------

    def read_byte(self, i2c_addr: int, force: bool | None = None) -> int:
        with self._lock:
            return self._device(i2c_addr).read_next()

    def write_byte(self, i2c_addr: int, value: int, force: bool | None = None) -> None:
        _check_byte(value, "value")
        with self._lock:
            self._device(i2c_addr).set_pointer(value)

    def read_byte_data(self, i2c_addr: int, register: int, force: bool | None = None) -> int:
        _check_byte(register, "register")
        with self._lock:
            return self._device(i2c_addr).read_block(register, 1)[0]

    def write_byte_data(
        self, i2c_addr: int, register: int, value: int, force: bool | None = None
    ) -> None:
        _check_byte(register, "register")
        _check_byte(value, "value")
        with self._lock:
            self._device(i2c_addr).write_block(register, [value])

    def read_i2c_block_data(
        self, i2c_addr: int, register: int, length: int, force: bool | None = None
    ) -> list[int]:
        _check_byte(register, "register")
        if not 0 <= length <= I2C_BLOCK_MAX:
            raise ValueError(f"Desired block length over {I2C_BLOCK_MAX} bytes")
        with self._lock:
            return self._device(i2c_addr).read_block(register, length)

    def write_i2c_block_data(
        self, i2c_addr: int, register: int, data: Sequence[int], force: bool | None = None
    ) -> None:
        _check_byte(register, "register")
        if len(data) > I2C_BLOCK_MAX:
            raise ValueError(f"Data length cannot exceed {I2C_BLOCK_MAX} bytes")
        for value in data:
            _check_byte(value, "data byte")
        with self._lock:
            self._device(i2c_addr).write_block(register, list(data))

    def close(self) -> None:
        with self._lock:
            self._closed = True

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals -------------------------------------------------------------------------

    @staticmethod
    def _check_address(address: int) -> None:
        if not 0 <= address <= 0x7F:
            raise ValueError(f"I2C addresses are 7-bit, got {address!r}")

    def _device(self, address: int) -> RegisterDevice:
        """The device a transfer reaches, or the OSError i2c-dev would give; lock held."""
        self._check_address(address)
        if self._closed:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        pending = self._faults.get(address)
        if pending:
            code = pending.pop(0)
            if not pending:
                del self._faults[address]
            raise OSError(code, os.strerror(code))
        device = self._devices.get(address)
        if device is None or address in self._unplugged:
            raise OSError(NO_DEVICE_ERRNO, os.strerror(NO_DEVICE_ERRNO))
        return device
