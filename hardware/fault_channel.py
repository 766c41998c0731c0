"""Bus faults for emulated chips, sent from outside the process that runs them.

A test can break a chip on a `FakeI2CBus` directly when it owns the `EmulatedBackend` (the
agent on a thread of the test). An agent in its own process has its back end out of reach, so
this module gives it a channel: a file of commands, one JSON object a line, that the writer
appends to and the process running the emulators reads from where it left off.

Protocol (`FaultChannel` writes it, `FaultReceiver` reads it):

- ``PATH`` holds the commands, e.g. ``{"n": 1, "kind": "nack", "bus": 1, "address": 119}``,
  numbered from 1 in the order written. Only complete lines (ending in a newline) are read, so
  a command is never seen half written.
- ``PATH.applied`` is written by the receiver, one line per command it took:
  ``{"n": 1, "error": null}``, or the reason it could not apply it (no chip at that address).
  The writer waits for its command's line, so a fault is known to be in place when `send`
  returns.

The agent reads the channel named by the environment variable ``EDGETWIN_EMULATOR_FAULTS``
(`FAULTS_ENV`) between two readings; without it there is no channel. Faults only ever reach
emulated chips: a real bus has nothing to inject into.
"""

from __future__ import annotations

import errno
import json
import logging
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final, Literal

from edgetwin.hardware.backends import EmulatedBackend

log = logging.getLogger(__name__)

FAULTS_ENV: Final = "EDGETWIN_EMULATOR_FAULTS"
"""Environment variable naming the command file an agent process reads bus faults from."""

UNTIL_CLEARED: Final = 100_000
"""Transfer count that stands for "every transfer until `clear`": more than an hour of a
sensor read 20 times a second, and `FakeI2CBus` keeps one list entry per pending transfer."""

FaultKind = Literal["error", "nack", "unplug", "replug", "corrupt", "stick", "clear"]


@dataclass(frozen=True)
class BusFault:
    """One change to an emulated chip on I2C bus `bus` at 7-bit `address`.

    `kind` picks the `FakeI2CBus` hook, and the other fields are its arguments:

    - ``error``: the next `count` transfers fail with `errno_code` (EIO: a bus glitch);
    - ``nack``: the next `count` transfers are not acknowledged (as a Pi reports it);
    - ``unplug`` / ``replug``: the chip stops answering, then powers up again;
    - ``corrupt``: the next `count` bytes read have `mask` XORed in;
    - ``stick``: every byte read is ANDed with `and_mask` and ORed with `or_mask` until cleared;
    - ``clear``: drop every pending fault at the address and plug the chip back in.
    """

    kind: FaultKind
    bus: int
    address: int
    count: int = 1
    errno_code: int = errno.EIO
    mask: int = 0x01
    and_mask: int = 0xFF
    or_mask: int = 0x00


def apply_fault(fault: BusFault, backend: EmulatedBackend) -> None:
    """Make `fault` happen on `backend`'s fake bus; KeyError if the chip is not attached yet
    (an emulated chip is attached when its sensor is first opened)."""
    bus = backend.i2c_bus(fault.bus)
    if fault.kind != "clear" and bus.device_at(fault.address) is None:
        raise KeyError(f"no emulated chip at {fault.address:#04x} on I2C bus {fault.bus}")
    match fault.kind:
        case "error":
            bus.inject_error(fault.address, fault.errno_code, fault.count)
        case "nack":
            bus.inject_nack(fault.address, fault.count)
        case "unplug":
            bus.unplug(fault.address)
        case "replug":
            bus.replug(fault.address)
        case "corrupt":
            bus.corrupt_reads(fault.address, fault.count, fault.mask)
        case "stick":
            bus.stick_bits(fault.address, and_mask=fault.and_mask, or_mask=fault.or_mask)
        case "clear":
            bus.clear_faults(fault.address)
            if bus.device_at(fault.address) is not None:
                bus.replug(fault.address)


def _applied_path(path: Path) -> Path:
    return path.with_name(path.name + ".applied")


class FaultChannel:
    """The writing end: sends `BusFault`s to the process reading `path` and waits for each to
    be applied. Creates (empties) both files, so make it before the process starts."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._sent = 0
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
        _applied_path(path).write_bytes(b"")

    def send(self, fault: BusFault, timeout: float = 10.0) -> None:
        """Append `fault` and return once the receiver applied it.

        Raises RuntimeError with the receiver's reason if it could not apply it, and
        TimeoutError if nothing read it within `timeout` seconds (the process is not running,
        or was started without `FAULTS_ENV`).
        """
        with self._lock:
            self._sent += 1
            number = self._sent
            line = json.dumps({"n": number, **asdict(fault)}) + "\n"
            # One write of one short line to a file opened for appending: never interleaved.
            with self.path.open("a", encoding="utf-8") as out:
                out.write(line)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            outcome = self._outcome(number)
            if outcome is not None:
                if outcome["error"] is not None:
                    raise RuntimeError(f"fault {fault.kind} not applied: {outcome['error']}")
                return
            time.sleep(0.01)
        raise TimeoutError(f"fault {fault.kind} not applied within {timeout} s ({self.path})")

    def _outcome(self, number: int) -> dict[str, object] | None:
        try:
            text = _applied_path(self.path).read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        for line in text.splitlines():
            record: dict[str, object] = json.loads(line)
            if record.get("n") == number:
                return record
        return None


class FaultReceiver:
    """The reading end, in the process that runs the emulated chips: `poll()` applies the
    commands written since the last call to `backend` and records each outcome."""

    def __init__(self, path: Path, backend: EmulatedBackend) -> None:
        self.path = path
        self.backend = backend
        self._offset = 0

    def poll(self) -> int:
        """Apply the complete commands appended since the last call; how many there were.

        Never raises for a bad command or a missing file: the outcome says why, and the
        process running the chips carries on.
        """
        try:
            with self.path.open("rb") as commands:
                commands.seek(self._offset)
                chunk = commands.read()
        except OSError:
            return 0
        complete = chunk[: chunk.rfind(b"\n") + 1]
        if not complete:
            return 0
        self._offset += len(complete)
        outcomes = []
        for line in complete.splitlines():
            number, error = self._apply(line)
            outcomes.append(json.dumps({"n": number, "error": error}) + "\n")
        with _applied_path(self.path).open("a", encoding="utf-8") as out:
            out.write("".join(outcomes))
        return len(outcomes)

    def _apply(self, line: bytes) -> tuple[int | None, str | None]:
        number: int | None = None
        try:
            record = json.loads(line)
            number = record.pop("n")
            fault = BusFault(**record)
            apply_fault(fault, self.backend)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            log.warning("emulated bus fault not applied", extra={"error": str(exc)})
            return number, str(exc)
        log.info("emulated bus fault applied", extra={"fault": fault.kind, "n": number})
        return number, None
