"""The outputs a desired document drives: opened on the agent's back ends, driven to their
desired values, and held at their safe values whenever nobody is in control.

Three moments take control away, and each holds every output at its safe value with a reason
the reported document carries (docs/design.md, "Outputs and safety"):

- a clean stop ("shutdown"): outputs are driven safe before anything else, then released;
- a crash ("crash recovery"): nothing of the dead process can make its outputs safe, so its
  next start must. A marker file in the state directory exists from the first time an output
  is driven away from its safe value until a clean stop; found at start, it says the last life
  ended without one. The hold lasts until a new desired version is applied: re-driving the
  old values at once would switch a load on and off with every crash of a crash loop;
- the broker away longer than `[agent] safe_after_broker_away` ("broker away N s"): nobody
  can switch an output off meanwhile. The hold lasts until the desired document is delivered
  again (the broker's retained copy, which it sends at every reconnection, or a newer one):
  the document the gateway still holds is the operator's will, and the operator cannot be
  asked while the broker is away.

A shutdown outranks a crash recovery, which outranks a broker away: a weaker reason never
replaces a stronger one, and the end of a weaker one never ends a stronger one.

Only the agent's loop thread uses this module.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Final

import msgspec

from edgetwin.agent.contract import AppliedOutput, OutputSettings, SensorBackend
from edgetwin.hardware import EmulatedBackend, HardwareError, RealBackend
from edgetwin.hardware.output import Output
from edgetwin.hardware.probe import open_output_first

log = logging.getLogger(__name__)

MARKER_NAME: Final = "outputs-driven"
"""The crash marker's file name in the state directory."""

RETRY_INTERVAL: Final = 5.0
"""Seconds between attempts to open an output the hardware refused (a pin another process
holds, a chip not answering yet): often enough to notice a fixed cable soon, rarely enough not
to fill the journal."""

MARKER_TEXT: Final = b"outputs driven away from their safe values; a clean stop removes this\n"

REASON_LENGTH: Final = 1024  # the contract's bound on a reported reason


class Hold(IntEnum):
    """Why every output is held at its safe value; a higher one outranks a lower one."""

    BROKER_AWAY = 1
    CRASH_RECOVERY = 2
    SHUTDOWN = 3


Backends = Callable[[SensorBackend], Sequence[EmulatedBackend | RealBackend]]


def without_value(settings: OutputSettings) -> OutputSettings:
    """What must stay the same for a running output to be kept open: all but its value."""
    return msgspec.structs.replace(settings, value=0.0)


@dataclass
class OutputSlot:
    """One output of the applied document: its settings, its driver once open, and why the
    hardware refused it if it did."""

    name: str
    settings: OutputSettings
    output: Output | None = None
    error: str | None = None

    def report(self, hold: str | None) -> AppliedOutput:
        output = self.output
        if output is None:
            return AppliedOutput(value=None, reason=self._unavailable())
        reason: str | None = None
        if self.error is not None:
            reason = self._unavailable()
        elif hold is not None and self.settings.value != output.safe_value:
            reason = f"safe: {hold}"
        return AppliedOutput(value=output.applied, backend=output.backend.value, reason=reason)

    def _unavailable(self) -> str:
        return f"unavailable: {self.error or 'not opened yet'}"[:REASON_LENGTH]

    def close(self) -> bool:
        """Drive the safe value and release the output; whether that worked (or there was
        nothing to close)."""
        output, self.output = self.output, None
        if output is None:
            return True
        try:
            output.close()
        except HardwareError as exc:
            log.error(
                "output could not be made safe and released",
                extra={"output": self.name, "error": str(exc)},
            )
            return False
        return True


class OutputBank:
    """The running outputs and the hold on them. `marker` is the crash marker's path."""

    def __init__(self, marker: Path, backends: Backends) -> None:
        self.marker = marker
        self._backends = backends
        self.slots: dict[str, OutputSlot] = {}
        self.hold: Hold | None = None
        self._hold_text: str | None = None
        self._retry_at = 0.0
        self._broker_away_since: float | None = time.monotonic()  # away until first connected
        self._marked = marker.exists()
        self._left_unsafe = False  # an output dropped without reaching its safe value
        if self._marked:
            self._set_hold(Hold.CRASH_RECOVERY, "crash recovery")
            log.warning(
                "the last run drove outputs and ended without a clean stop: every output "
                "starts at its safe value and stays there until a new desired version",
                extra={"marker": str(marker)},
            )

    @property
    def hold_reason(self) -> str | None:
        """The hold as the reported document gives it ("crash recovery"), None if none."""
        return self._hold_text

    # -- the desired document -----------------------------------------------------------------

    def drop_unwanted(self, outputs: Mapping[str, OutputSettings]) -> None:
        """Close (safe value, then release) every running output that `outputs` removes or
        places elsewhere, so that its pin or channel is free for what comes next."""
        for name in list(self.slots):
            wanted = outputs.get(name)
            slot = self.slots[name]
            if wanted is None or without_value(wanted) != without_value(slot.settings):
                del self.slots[name]
                if not slot.close():
                    self._left_unsafe = True

    def install(self, outputs: Mapping[str, OutputSettings], *, new_version: bool) -> None:
        """Run `outputs`: drop the unwanted, open the new (at their safe values), drive each
        to its desired value unless held. A `new_version` of the desired document ends a
        crash recovery's or a broker away's hold: it is a fresh order from the operator."""
        self.drop_unwanted(outputs)
        if new_version and self.hold is not None and self.hold < Hold.SHUTDOWN:
            log.info("outputs follow the desired values again", extra={"after": self._hold_text})
            self._set_hold(None, None)
        for name, settings in outputs.items():
            slot = self.slots.get(name)
            if slot is None:
                slot = self.slots[name] = OutputSlot(name, settings)
            slot.settings = settings
            self._drive(slot)

    # -- holding and resuming -------------------------------------------------------------------

    def hold_safe(self, hold: Hold, text: str) -> bool:
        """Drive every output to its safe value and keep it there, for `text` ("broker away
        30 s"); whether any output is affected (a stronger hold already in place wins)."""
        if self.hold is not None and self.hold >= hold:
            return False
        self._set_hold(hold, text)
        if not self.slots:
            return False
        # A stop is routine; the other holds mean something went wrong.
        log.log(
            logging.INFO if hold is Hold.SHUTDOWN else logging.WARNING,
            "outputs held at their safe values",
            extra={"reason": text, "outputs": sorted(self.slots)},
        )
        for slot in self.slots.values():
            self._drive(slot)
        return True

    def resume(self, hold: Hold) -> bool:
        """End `hold` if it is the one in place, driving the desired values again; whether
        any output is affected."""
        if self.hold is not hold:
            return False
        after = self._hold_text
        self._set_hold(None, None)
        if not self.slots:
            return False
        log.info("outputs follow the desired values again", extra={"after": after})
        for slot in self.slots.values():
            self._drive(slot)
        return True

    def watch_broker(self, connected: bool, limit: float) -> bool:
        """Note whether the broker is there; once it has been away for `limit` seconds (0:
        never), hold every output safe. Whether the hold began now."""
        now = time.monotonic()
        if connected:
            self._broker_away_since = None
            return False
        if self._broker_away_since is None:
            self._broker_away_since = now
        if not limit or now - self._broker_away_since < limit:
            return False
        return self.hold_safe(Hold.BROKER_AWAY, f"broker away {limit:g} s")

    def broker_hold_in(self, limit: float) -> float | None:
        """Seconds until `watch_broker` holds the outputs for the broker's absence, if it
        will: the loop must look by then."""
        if not limit or self._broker_away_since is None or self.hold is not None:
            return None
        if not self.slots:
            return None
        return max(0.0, self._broker_away_since + limit - time.monotonic())

    def retry(self) -> bool:
        """Try again, at most every RETRY_INTERVAL, to open and drive the outputs the hardware
        refused; whether any came up."""
        failed = [slot for slot in self.slots.values() if slot.output is None or slot.error]
        now = time.monotonic()
        if not failed or now < self._retry_at:
            return False
        self._retry_at = now + RETRY_INTERVAL
        for slot in failed:
            self._drive(slot)
        return any(slot.output is not None and slot.error is None for slot in failed)

    # -- a command's momentary drive (agent/commands.py's `pulse_output`) ---------------------

    def running_outputs(self) -> Mapping[str, Output]:
        """The outputs open now, for a command that drives one for a moment. The crash
        marker is put down first: the command may drive an output away from its safe value,
        and a crash then must hold it at the next start."""
        self._mark_driven()
        return {name: slot.output for name, slot in self.slots.items() if slot.output is not None}

    def resting_value(self, name: str) -> float:
        """What output `name` goes back to after a momentary drive: its desired value, or its
        safe value while a hold is in place. KeyError for an output not open."""
        output = self.slots[name].output
        if output is None:
            raise KeyError(name)
        return output.safe_value if self.hold is not None else self.slots[name].settings.value

    def report(self) -> dict[str, AppliedOutput]:
        return {name: slot.report(self._hold_text) for name, slot in self.slots.items()}

    def close(self) -> None:
        """A clean stop's end: every output driven safe and released. The crash marker goes
        only when all of them were, and every output dropped before: an output left in an
        unknown state makes the next start a crash recovery."""
        self.hold_safe(Hold.SHUTDOWN, "shutdown")
        closed = [slot.close() for slot in self.slots.values()]
        self.slots.clear()
        if all(closed) and not self._left_unsafe:
            self.marker.unlink(missing_ok=True)
            self._marked = False

    # -- driving --------------------------------------------------------------------------------

    def _set_hold(self, hold: Hold | None, text: str | None) -> None:
        self.hold = hold
        self._hold_text = text

    def _drive(self, slot: OutputSlot) -> None:
        if slot.output is None and not self._open(slot):
            return
        output = slot.output
        assert output is not None
        target = output.safe_value if self.hold is not None else slot.settings.value
        if target != output.safe_value:
            self._mark_driven()
        try:
            output.apply(target)
        except HardwareError as exc:
            slot.error = str(exc)
            log.warning("output not driven", extra={"output": slot.name, "error": slot.error})
            return
        slot.error = None

    def _open(self, slot: OutputSlot) -> bool:
        settings = slot.settings
        try:
            slot.output = open_output_first(
                settings.driver,
                self._backends(settings.backend),
                bus=settings.bus,
                address=settings.address,
                channel=settings.channel,
                pin=settings.pin,
                options=settings.options,
            )
        except HardwareError as exc:
            slot.error = str(exc)
            log.warning("output unavailable", extra={"output": slot.name, "error": slot.error})
            return False
        slot.error = None
        log.info(
            "output opened at its safe value",
            extra={
                "output": slot.name,
                "driver": settings.driver,
                "backend": slot.output.backend.value,
            },
        )
        return True

    def _mark_driven(self) -> None:
        """Put the crash marker on disk, synced, before the first value away from safe."""
        if self._marked:
            return
        try:
            fd = os.open(self.marker, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, MARKER_TEXT)
                os.fsync(fd)
            finally:
                os.close(fd)
            directory = os.open(self.marker.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        except OSError as exc:
            # The value is driven all the same: without the marker a crash only loses the
            # hold at the next start (the outputs still open at their safe values there), and
            # a full disk must not switch a load off. Tried again at the next value.
            log.warning(
                "crash marker not written: a crash now would not hold the outputs safe",
                extra={"marker": str(self.marker), "error": str(exc)},
            )
            return
        self._marked = True
