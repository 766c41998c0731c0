"""I2C as drivers see it, a fake bus that answers like Linux i2c-dev, and error translation.

Drivers receive an `I2CBus`; in production that is an `smbus2.SMBus` (wrapped by the real back
end), in tests and simulation a `FakeI2CBus` routing transfers to emulated chips: register
chips (`RegisterDevice`, most sensors) and command chips (`I2CDevice`, such as the SHT3x, which
take a command word and answer with plain reads).

Plain I2C transfers, which SMBus calls cannot express (a read with no register byte before
it), go through `i2c_rdwr` with smbus2's own `i2c_msg` on both buses: `i2c_write` and
`i2c_read` below build them. `i2c_msg` is a ctypes structure whose buffer the kernel fills, so
the fake fills the very same structure and a driver cannot tell the two buses apart. smbus2 is
imported when the first such message is built, not by `import edgetwin.hardware`.
"""

from __future__ import annotations

import ctypes
import errno
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Protocol, Self

from edgetwin.hardware.errors import BusError, HardwareError, SensorMissingError

if TYPE_CHECKING:
    from smbus2 import i2c_msg

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

NACK_ERRNO = errno.EREMOTEIO
"""What a NACK looks like on a Raspberry Pi, and what the fake raises for one.

i2c-bcm2835 reports any NACK, in the address phase or on a data byte, as EREMOTEIO (121): it
cannot tell them apart. That includes a chip that NACKs its read header because a measurement
is not ready yet (the SHT3x without clock stretching), so a driver polling such a chip must
treat EREMOTEIO after a successful command as "busy", not as "gone".
"""

I2C_M_RD = 0x0001
"""`i2c_msg.flags` bit of a read message (linux/i2c.h); smbus2 sets it in `i2c_msg.read`."""

I2C_RDWR_MAX_MSGS = 42
"""i2c-dev refuses an I2C_RDWR ioctl with more messages than this (EINVAL)."""

I2C_MSG_MAX_LENGTH = 8192
"""i2c-dev refuses a message longer than this (EINVAL)."""


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

    def i2c_rdwr(self, *i2c_msgs: i2c_msg) -> None:
        """One combined transaction (repeated starts, one stop) of smbus2 `i2c_msg`s; read
        messages come back filled. The way to do plain reads and writes with no register byte."""
        ...

    def close(self) -> None: ...


def i2c_write(bus: I2CBus, address: int, data: Sequence[int]) -> None:
    """One plain write transfer: START, address+W, `data`, STOP, with no register byte implied.

    What command-based chips take (the SHT3x's 16-bit commands). Raises OSError like any
    transfer; drivers wrap the call in `bus_errors`.
    """
    from smbus2 import i2c_msg

    bus.i2c_rdwr(i2c_msg.write(address, list(data)))


def i2c_read(bus: I2CBus, address: int, length: int) -> bytes:
    """One plain read transfer of `length` bytes: START, address+R, bytes, STOP.

    SMBus calls cannot do this: every SMBus read but "receive byte" writes a register byte
    first, which a command-based chip would take as the start of a new command.
    """
    from smbus2 import i2c_msg

    message = i2c_msg.read(address, length)
    bus.i2c_rdwr(message)
    return bytes(message)


def dropout_error() -> OSError:
    """The failed transfer an emulated chip gives for a measurement its signal left out.

    A signal model returns NaN for "no measurement now"; the emulator then fails the transfer
    that would carry that measurement with EIO, as a chip glitching mid-conversion does, and the
    driver reports a BusError for that reading only.
    """
    return OSError(errno.EIO, os.strerror(errno.EIO))


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


class I2CDevice(ABC):
    """A chip as the wire sees it: the bytes of a write transfer in, the bytes of a read out.

    Command-based chips (the SHT3x takes a 16-bit command, then answers plain reads) implement
    `write` and `read` and nothing else; the SMBus transactions below are expressed in those
    terms, the way the adapter puts them on the wire (a register byte is just the first byte
    written). `RegisterDevice` overrides all of them in register terms.

    Either may raise OSError: `OSError(NACK_ERRNO)` for a transfer the chip does not acknowledge
    (busy, mid-reset), `dropout_error()` for a measurement its signal left out.
    """

    @abstractmethod
    def write(self, data: bytes) -> None:
        """One write transfer: every byte after the address byte, possibly none."""

    @abstractmethod
    def read(self, length: int) -> bytes:
        """One read transfer of `length` bytes, as the chip drives them onto the bus."""

    def read_block(self, reg: int, length: int) -> list[int]:
        """SMBus "read I2C block": write the register byte, repeated start, read."""
        self.write(bytes([reg]))
        return list(self.read(length))

    def write_block(self, reg: int, data: Sequence[int]) -> None:
        """SMBus "write I2C block" (and "write byte data"): register byte, then the data."""
        self.write(bytes([reg, *data]))

    def set_pointer(self, reg: int) -> None:
        """SMBus "send byte": a write of one byte."""
        self.write(bytes([reg]))

    def read_next(self) -> int:
        """SMBus "receive byte": a read of one byte."""
        return self.read(1)[0]

    def power_on(self) -> None:  # noqa: B027 - a chip without volatile state need not override
        """Called when the device is (re)connected: a chip loses volatile state on power-up."""


class RegisterDevice(I2CDevice):
    """A chip emulated at register level: what it answers on the bus, byte by byte.

    Subclasses implement single-register access; block transfers and the register pointer used by
    plain byte reads are built on top, auto-incrementing as most I2C sensors do. Chips whose
    block writes work differently (the BME280 takes register/value pairs) override `write_block`.
    Plain transfers (`write`, `read`) map onto the same register model: the first byte written
    sets the pointer, the rest are written from there on, and a read starts at the pointer.
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

    def write(self, data: bytes) -> None:
        if not data:
            return  # an address-only write ("quick command") changes nothing
        if len(data) == 1:
            self.set_pointer(data[0])
        else:
            self.write_block(data[0], data[1:])

    def read(self, length: int) -> bytes:
        return bytes(self.read_block(self._pointer, length))


@dataclass(slots=True)
class _ReadFaults:
    """What the fake does to bytes read from one address: a bit flip, stuck bits."""

    corrupt_count: int = 0
    corrupt_mask: int = 0
    and_mask: int = 0xFF
    or_mask: int = 0x00

    def apply(self, data: Sequence[int]) -> list[int]:
        out = []
        for byte in data:
            received = byte
            if self.corrupt_count:
                received ^= self.corrupt_mask
                self.corrupt_count -= 1
            out.append((received & self.and_mask) | self.or_mask)
        return out

    def idle(self) -> bool:
        return self.corrupt_count == 0 and self.and_mask == 0xFF and self.or_mask == 0x00


class FakeI2CBus:
    """An I2C adapter with emulated chips on it, failing the way Linux i2c-dev fails.

    Every call is one transfer: it raises `OSError(ENXIO)` when nothing is attached at the
    address or the device is unplugged, and raises injected errors before the device sees the
    transfer, so a failed write has no effect. One lock serialises transfers because the gateway
    reads sensors from several threads, and a real adapter also carries one transfer at a time.

    Faults a test or a simulation can inject, per address:

    - `unplug` / `replug`: the chip stops answering (ENXIO), then powers up again;
    - `inject_error`: the next transfers fail with a given errno (EIO for a glitch);
    - `inject_nack`: the next transfers are not acknowledged (`NACK_ERRNO`, as on a Pi);
    - `corrupt_reads`: the next bytes read have bits flipped (noise on SDA: a CRC failure);
    - `stick_bits`: every byte read is ANDed and ORed with masks (SDA shorted, a dead chip
      reading all ones) until `clear_faults`.
    """

    def __init__(self, number: int = 1) -> None:
        self.number = number
        self._devices: dict[int, I2CDevice] = {}
        self._unplugged: set[int] = set()
        self._faults: dict[int, list[int]] = {}
        self._read_faults: dict[int, _ReadFaults] = {}
        self._closed = False
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return f"FakeI2CBus({self.number}, devices={sorted(hex(a) for a in self._devices)})"

    # -- wiring and fault injection --------------------------------------------------------

    def attach(self, address: int, device: I2CDevice) -> None:
        """Wire a device at `address`; two chips on one address is a board error, so refuse it."""
        self._check_address(address)
        with self._lock:
            if address in self._devices:
                raise ValueError(f"address {address:#04x} on {self!r} is already taken")
            self._devices[address] = device
            self._unplugged.discard(address)

    def attach_if_free(self, address: int, build: Callable[[], I2CDevice]) -> I2CDevice:
        """The device at `address`, attaching `build()` first if none is wired there.

        Atomic, so two threads opening the same emulated sensor cannot both attach a chip.
        """
        self._check_address(address)
        with self._lock:
            device = self._devices.get(address)
            if device is None:
                device = self._devices[address] = build()
            return device

    def detach(self, address: int) -> I2CDevice:
        """Remove the device at `address` for good and return it; its faults go with it."""
        with self._lock:
            self._unplugged.discard(address)
            self._faults.pop(address, None)
            self._read_faults.pop(address, None)
            try:
                return self._devices.pop(address)
            except KeyError:
                raise KeyError(f"no device at {address:#04x} on {self!r}") from None

    def device_at(self, address: int) -> I2CDevice | None:
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
        _check_count(count)
        with self._lock:
            self._faults.setdefault(address, []).extend([errno_code] * count)

    def inject_nack(self, address: int, count: int = 1) -> None:
        """Make the next `count` transfers to `address` go unacknowledged (`NACK_ERRNO`).

        A chip that stops acknowledging for a while: brown-out, a reset in progress, or a
        marginal connection. Drivers report it as SensorMissingError.
        """
        self.inject_error(address, NACK_ERRNO, count)

    def corrupt_reads(self, address: int, count: int = 1, mask: int = 0x01) -> None:
        """XOR `mask` into each of the next `count` bytes read from `address`.

        Noise on SDA during a read: the transfer succeeds, the data is wrong. Chips with a CRC
        (the SHT3x) let the driver see it; for the others it is a wrong reading, which is
        exactly why those chips have none of this protection.
        """
        _check_count(count)
        _check_byte(mask, "mask")
        if mask == 0:
            raise ValueError("a corruption mask of 0 flips nothing")
        with self._lock:
            faults = self._read_faults.setdefault(address, _ReadFaults())
            faults.corrupt_count += count
            faults.corrupt_mask = mask

    def stick_bits(self, address: int, *, and_mask: int = 0xFF, or_mask: int = 0x00) -> None:
        """From now until `clear_faults`, every byte read from `address` is
        `(byte & and_mask) | or_mask`: or_mask=0xFF is a chip (or SDA) stuck at all ones,
        and_mask=0x00 one stuck at all zeros, other masks individual stuck data lines."""
        _check_byte(and_mask, "and_mask")
        _check_byte(or_mask, "or_mask")
        with self._lock:
            faults = self._read_faults.setdefault(address, _ReadFaults())
            faults.and_mask = and_mask
            faults.or_mask = or_mask

    def clear_faults(self, address: int) -> None:
        """Drop every injected fault at `address`: pending errors, corruption, stuck bits.

        Unplugged devices stay unplugged: `replug` is the way back, with its power-up.
        """
        with self._lock:
            self._faults.pop(address, None)
            self._read_faults.pop(address, None)

    # -- the I2CBus face -------------------------------------------------------------------

    def read_byte(self, i2c_addr: int, force: bool | None = None) -> int:
        with self._lock:
            return self._delivered(i2c_addr, [self._device(i2c_addr).read_next()])[0]

    def write_byte(self, i2c_addr: int, value: int, force: bool | None = None) -> None:
        _check_byte(value, "value")
        with self._lock:
            self._device(i2c_addr).set_pointer(value)

    def read_byte_data(self, i2c_addr: int, register: int, force: bool | None = None) -> int:
        _check_byte(register, "register")
        with self._lock:
            return self._delivered(i2c_addr, self._device(i2c_addr).read_block(register, 1))[0]

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
            return self._delivered(i2c_addr, self._device(i2c_addr).read_block(register, length))

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

    def i2c_rdwr(self, *i2c_msgs: i2c_msg) -> None:
        """smbus2's combined transaction: each message goes to the device at its address.

        As with i2c-dev, the messages are checked first (EINVAL for too many or too long ones),
        then every address is reached before any message is carried out, so an injected error
        or a missing device fails the whole transaction with no write taking effect. Read
        messages are filled in place, as the kernel fills them.
        """
        if not 1 <= len(i2c_msgs) <= I2C_RDWR_MAX_MSGS:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        for message in i2c_msgs:
            if message.flags & ~I2C_M_RD:
                # 10-bit addresses, NOSTART and friends: nothing here uses or emulates them.
                raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))
            if message.len > I2C_MSG_MAX_LENGTH:
                raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
            self._check_address(message.addr)
        with self._lock:
            devices: dict[int, I2CDevice] = {}
            for message in i2c_msgs:
                if message.addr not in devices:
                    devices[message.addr] = self._device(message.addr)
            for message in i2c_msgs:
                address: int = message.addr
                length: int = message.len
                if message.flags & I2C_M_RD:
                    data = bytes(self._delivered(address, devices[address].read(length)))
                    ctypes.memmove(message.buf, data, length)
                else:
                    devices[address].write(bytes(message))

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

    def _device(self, address: int) -> I2CDevice:
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

    def _delivered(self, address: int, data: Sequence[int]) -> list[int]:
        """Bytes read from `address` as the host receives them, read faults applied; lock held."""
        faults = self._read_faults.get(address)
        if faults is None:
            return list(data)
        out = faults.apply(data)
        if faults.idle():
            del self._read_faults[address]
        return out


def _check_count(count: int) -> None:
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
