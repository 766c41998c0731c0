"""Simulated devices answer like real ones: the outputs and commands of a device the gateway
plays while its agent is away.

The stand-ins (gateway/standins.py) publish a missing device's readings; this module does the
rest of what its agent would do, for the devices this gateway owns (gateway/ownership.py):

- **Outputs.** The desired document's outputs are applied as the agent applies them: checked
  with the agent's own rule (agent/desired.py `check_outputs`: a refused document is reported
  rejected, with the reason, and the last good outputs stay), each value quantised as its
  driver would, and the device's reported document says what was applied, each output marked
  `backend = "simulated"`. The signals that answer the outputs follow (`[[devices.responses]]`
  in the manifest: a first-order lag, hardware.signals.FirstOrderResponse): a heater relay
  switched on warms the simulated room, a fan's duty cools it, so a thermostat service can be
  tested against a fleet that reacts.
- **Commands.** Requests on the device's command topic are answered by the agent's own desk
  (agent/commands.py): the same idempotence by id, deadlines, queue limits and
  `pulse_output`; `read_sensor` answers the stand-in's last reading, `diagnostics` the
  simulation's figures.

A reported document is written for a played device only when its desired document has outputs
(or had some: the report then says none are driven): a device without outputs has nothing to
apply that the stand-ins do not already play, and its reported document stays the agent's own.
When the agent comes back it applies the desired document itself and writes its own report.

Every desk and output is touched by one thread, as the agent's loop does for its own: the
reconcile and the MQTT callbacks only queue work for it (`update`, `receive`).
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from edgetwin.agent.commands import (
    Command,
    CommandDesk,
    CommandRejected,
    NoArgs,
    ReadSensorArgs,
    RestartSensorsArgs,
    pulse_output_command,
)
from edgetwin.agent.contract import (
    AppliedOutput,
    ContractError,
    DesiredConfig,
    OutputSettings,
    ParsedTopic,
    ReportedConfig,
    Topics,
)
from edgetwin.agent.desired import check_outputs
from edgetwin.agent.mqtt import Message, MqttLink
from edgetwin.agent.outputs import without_value
from edgetwin.hardware.errors import HardwareError
from edgetwin.hardware.output import Output
from edgetwin.hardware.registry import output_spec
from edgetwin.hardware.sensor import BackendKind

log = logging.getLogger(__name__)

SIMULATED: Final = "simulated"
"""The `backend` of a simulated device's outputs and sensors in its reports and answers."""

_IDLE_WAIT: Final = 1.0

LastReading = tuple[float, dict[str, tuple[float, str]]]
"""A stream's last reading: its time, and each quantity's value and unit."""


class SimulatedOutput(Output):
    """One output of a played device: the range, safe value and resolution of its driver, and
    instead of a pin the signals that answer it (`drive`)."""

    driver_name = SIMULATED

    def __init__(
        self,
        device: str,
        name: str,
        settings: OutputSettings,
        drive: Callable[[str, Mapping[str, float]], None],
    ) -> None:
        spec = output_spec(settings.driver, settings.options)
        # The base class's backend is the hardware's kind; reports say "simulated" instead.
        super().__init__(
            value_range=spec.value_range,
            safe_value=spec.safe_value,
            backend=BackendKind.EMULATED,
            name=name,
        )
        self.device = device
        self.settings = settings
        self._drive = drive

    def _write(self, value: float) -> float:
        step = self.value_range.step
        applied = round(value / step) * step if step else value
        self._drive(self.device, {self.name: applied})
        return applied

    def _read(self) -> float:
        return self.safe_value if self.applied is None else self.applied

    def _release(self) -> None:
        pass


@dataclass
class _Played:
    """One device this gateway plays: its desk, its outputs as applied, the version applied."""

    device: str
    desk: CommandDesk
    since: float
    outputs: dict[str, SimulatedOutput] = field(default_factory=dict)
    version: int = 0
    reported: bool = False
    """Whether this play wrote the device's reported document (it has, or had, outputs)."""

    def running_outputs(self) -> Mapping[str, Output]:
        return self.outputs

    def resting_value(self, name: str) -> float:
        return self.outputs[name].settings.value


@dataclass(frozen=True)
class _Play:
    device: str
    desired: DesiredConfig | None


@dataclass(frozen=True)
class _Unplay:
    device: str


@dataclass(frozen=True)
class _Request:
    device: str
    message: Message


_Work = _Play | _Unplay | _Request | None


class SimulatedDevices:
    """The outputs and command desks of the devices this gateway plays (one thread for all)."""

    def __init__(
        self,
        link: MqttLink,
        topics: Topics,
        *,
        gateway_id: str,
        drive: Callable[[str, Mapping[str, float]], None],
        last_reading: Callable[[str, str], LastReading | None],
        played_sensors: Callable[[str], list[str]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.link = link
        self.topics = topics
        self.gateway_id = gateway_id
        self._drive = drive
        self._last_reading = last_reading
        self._played_sensors = played_sensors
        self.clock = clock
        self._work: queue.SimpleQueue[_Work] = queue.SimpleQueue()
        # The thread's own: the devices played (desired document, since when), those of them
        # with a desk and outputs, and those whose desk has work left for later.
        self._plays: dict[str, tuple[DesiredConfig | None, float]] = {}
        self._played: dict[str, _Played] = {}
        self._timed: set[str] = set()
        self._lock = threading.Lock()
        self._playing: set[str] = set()  # what `update` last decided, for other threads
        self._thread: threading.Thread | None = None

    # -- from other threads -----------------------------------------------------------------

    def start(self) -> None:
        """Take the requests of every device's command topic (each gateway answers those of
        the devices it plays) and start the desks' thread."""
        self.link.subscribe([self.topics.commands()], qos=1)
        self._thread = threading.Thread(target=self._run, name="simulated-devices", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is None:
            return
        self._work.put(None)
        self._thread.join(timeout=5)
        self._thread = None

    def update(self, device: str, desired: DesiredConfig | None, *, plays: bool) -> None:
        """The reconcile's decision for `device`: this gateway plays it (its agent is away and
        the device is this gateway's), with `desired` as its desired document; or it does not."""
        with self._lock:
            if plays:
                self._playing.add(device)
            elif device in self._playing:
                self._playing.discard(device)
            else:
                return
        self._work.put(_Play(device, desired) if plays else _Unplay(device))

    def plays(self, device: str) -> bool:
        with self._lock:
            return device in self._playing

    def receive(self, parsed: ParsedTopic, message: Message) -> None:
        """A command request (MQTT network thread): queued for the desk of its device if this
        gateway plays it; otherwise its agent, or the gateway that plays it, answers."""
        device = parsed.device
        if device is None or not self.plays(device):
            return
        self._work.put(_Request(device, message))

    # -- the desks' thread ------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            wait = min((self._played[d].desk.next_wait() for d in self._timed), default=_IDLE_WAIT)
            work: _Work | type[_Idle]
            try:
                work = self._work.get(timeout=min(wait, _IDLE_WAIT))
            except queue.Empty:
                work = _Idle
            if work is None:
                return
            try:
                self._do(work)
                self._run_timed()
            except Exception:
                log.exception("simulated device work failed")

    def _do(self, work: _Work | type[_Idle]) -> None:
        if isinstance(work, _Play):
            self._plays[work.device] = (
                work.desired,
                self._plays.get(work.device, (None, time.monotonic()))[1],
            )
            played = self._played.get(work.device)
            # A desk and outputs only for a device that has outputs or is asked something: a
            # gateway may play tens of thousands of devices that never are.
            if played is None and work.desired is not None and work.desired.outputs:
                played = self._materialise(work.device)
            if played is not None:
                self._apply(played, work.desired)
        elif isinstance(work, _Unplay):
            self._plays.pop(work.device, None)
            self._timed.discard(work.device)
            if self._played.pop(work.device, None) is not None:
                log.info("simulated device handed back", extra={"device": work.device})
        elif isinstance(work, _Request):
            if work.device not in self._plays:
                return  # handed back since: its agent answers
            played = self._played.get(work.device) or self._materialise(work.device)
            played.desk.receive(work.message)
            played.desk.run_pending()
            if played.desk.next_wait() != math.inf:
                self._timed.add(work.device)

    def _run_timed(self) -> None:
        """Run the desks with work left: queued commands beyond one pass, a pulse's end."""
        for device in list(self._timed):
            desk = self._played[device].desk
            desk.run_pending()
            if desk.next_wait() == math.inf:
                self._timed.discard(device)

    def _materialise(self, device: str) -> _Played:
        desired, since = self._plays[device]
        desk = CommandDesk(device, self.topics, self.link, self.clock)
        played = self._played[device] = _Played(device, desk, since)
        for command in self._commands(played):
            desk.register(command)
        log.info("simulated device answers", extra={"device": device})
        self._apply(played, desired)
        return played

    # -- outputs --------------------------------------------------------------------------------

    def _apply(self, played: _Played, desired: DesiredConfig | None) -> None:
        """Apply `desired`'s outputs as the agent would, and report them (see the module's
        docstring for when)."""
        if desired is None or desired.version == played.version:
            return
        wanted = desired.outputs
        try:
            check_outputs(wanted, desired.sensors)
        except ContractError as exc:
            self._report(played, "rejected", rejected=desired.version, reason=str(exc))
            return
        for name in [n for n in played.outputs if n not in wanted]:
            played.outputs.pop(name).close()
        for name, settings in wanted.items():
            output = played.outputs.get(name)
            if output is None or without_value(output.settings) != without_value(settings):
                output = played.outputs[name] = SimulatedOutput(
                    played.device, name, settings, self._drive
                )
            output.settings = settings
            output.apply(settings.value)
        played.version = desired.version
        if wanted or played.reported:
            self._report(played, "applied")

    def _report(
        self,
        played: _Played,
        status: Literal["applied", "rejected"],
        *,
        rejected: int | None = None,
        reason: str | None = None,
    ) -> None:
        report = ReportedConfig(
            device=played.device,
            ts=self.clock(),
            status=status,
            applied_version=played.version,
            rejected_version=rejected,
            reason=None if reason is None else reason[:1024],
            outputs={
                name: AppliedOutput(value=output.applied, backend=SIMULATED)
                for name, output in played.outputs.items()
            },
        )
        played.reported = True
        self.link.publish(self.topics.reported(played.device), report.encode(), qos=1, retain=True)

    # -- commands -------------------------------------------------------------------------------

    def _commands(self, played: _Played) -> list[Command[Any]]:
        device = played.device

        def read_sensor(args: ReadSensorArgs) -> dict[str, Any]:
            sensors = self._played_sensors(device)
            if args.sensor not in sensors:
                raise CommandRejected(f"no sensor {args.sensor!r} runs here; {sensors} do")
            last = self._last_reading(device, args.sensor)
            if last is None:
                raise HardwareError(f"sensor {args.sensor!r} has no reading yet")
            ts, values = last
            return {
                "sensor": args.sensor,
                "ts": ts,
                "backend": SIMULATED,
                "values": {q: {"value": v, "unit": u} for q, (v, u) in values.items()},
            }

        def restart_sensors(args: RestartSensorsArgs) -> dict[str, Any]:
            sensors = self._played_sensors(device)
            if args.sensor is not None and args.sensor not in sensors:
                raise CommandRejected(f"no sensor {args.sensor!r} runs here; {sensors} do")
            names = sensors if args.sensor is None else [args.sensor]
            return {"restarted": dict.fromkeys(names, _HEALTHY)}

        def diagnostics(_: NoArgs) -> dict[str, Any]:
            return {
                "simulated_by": self.gateway_id,
                "uptime_s": round(time.monotonic() - played.since, 3),
                "config_version": played.version,
                "sensors": dict.fromkeys(self._played_sensors(device), _HEALTHY),
                "outputs": {
                    name: {"value": output.applied, "backend": SIMULATED}
                    for name, output in sorted(played.outputs.items())
                },
                "commands": played.desk.figures(),
            }

        return [
            Command("read_sensor", ReadSensorArgs, read_sensor),
            Command("restart_sensors", RestartSensorsArgs, restart_sensors),
            Command("diagnostics", NoArgs, diagnostics),
            pulse_output_command(lambda: played, played.desk),
        ]


_HEALTHY: Final = {"health": "ok", "backend": SIMULATED}


class _Idle:
    """No work came within the wait: only the desks' due follow-ups (a pulse's end) run."""
