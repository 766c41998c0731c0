"""Commands with an answer: the agent's side of MQTT 5 request/response.

A caller (the gateway's `POST /devices/{id}/commands/{name}`) publishes a `CommandRequest` on
`{prefix}/{device}/commands/{name}` with a Response Topic and Correlation Data; the agent runs
the command and publishes a `CommandResponse` on that topic, quoting the correlation data.

Everything here runs on the agent's loop thread, between two sensor reads: the sensors and
outputs belong to that thread, and no lock is needed. So that a burst of commands cannot hold
the readings back, the loop runs at most `COMMANDS_PER_PASS` of them before it reads again,
at most `MAX_QUEUED` wait (more are answered "busy" at once), and no command sleeps: a pulse
schedules its own end (`CommandDesk.later`).

Idempotent by id: a request whose id was answered (a QoS 1 redelivery, a caller's retry) gets
the stored answer again and does not run. An answer is kept until the later of its command's
deadline and `ANSWER_MIN_KEEP` after it was given, and the deadline is what makes the window
enough: a repeat that arrives after it would not run anyway, it is answered "expired". At most
`ANSWERS_KEPT` answers are kept; when full, those past their deadline make room, and if none
is, a new command is answered "busy" rather than risk running an old one twice. The answers
live in memory: an agent that restarts forgets them (a command it ran just before a crash may
run again if redelivered before its deadline).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Final, Generic, Protocol, TypeVar

import msgspec

from edgetwin.agent.contract import (
    MAX_COMMAND_BYTES,
    CommandId,
    CommandRequest,
    CommandResponse,
    CommandStatus,
    ContractError,
    SensorName,
    Struct,
    Topics,
    check_id,
    locate_error,
)
from edgetwin.agent.mqtt import Message, MqttLink, PublishError
from edgetwin.agent.outbox import OutboxError
from edgetwin.hardware.errors import HardwareError, OutputRangeError

if TYPE_CHECKING:
    from edgetwin.agent.runtime import Agent
    from edgetwin.hardware.output import Output

log = logging.getLogger(__name__)

COMMANDS_PER_PASS: Final = 4
"""Commands run in one turn of the loop before it reads the sensors that are due."""
MAX_QUEUED: Final = 32
"""Commands waiting for their turn; one more is answered "busy" at once."""
ANSWERS_KEPT: Final = 1024
"""Answers kept for repeats of their id: about 1 MB at worst (a diagnostics answer is ~1 KB)."""
ANSWER_MIN_KEEP: Final = 60.0
"""Seconds an answer is kept at least, past a short deadline: a caller's quick retry with the
same id still gets the answer the command gave, not "expired"."""
MAX_DEADLINE_AHEAD: Final = 600.0
"""How far in the future a deadline may lie: it bounds how long an answer must be kept."""
MAX_PULSE_SECONDS: Final = 3600.0
_REFUSED_LOG_INTERVAL: Final = 60.0


class CommandRejected(Exception):
    """The command must not run: the answer is "rejected" with this reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


A = TypeVar("A", bound=Struct)


@dataclass(frozen=True)
class Command(Generic[A]):
    """One command an agent runs: its arguments as a contract Struct (unknown keys and wrong
    types are refused, with msgspec's reason, before anything runs) and the function that runs
    it. `run` returns the answer's `result`; it raises CommandRejected when it must not act,
    HardwareError (or any other exception) when acting failed."""

    name: str
    args: type[A]
    run: Callable[[A], dict[str, Any]]


@dataclass(frozen=True, slots=True)
class _ReplyTo:
    topic: str
    correlation: bytes | None


@dataclass
class _Waiting:
    request: CommandRequest
    command: Command[Any]
    args: Any
    reply_to: list[_ReplyTo]


@dataclass(frozen=True, slots=True)
class _Answered:
    name: str
    payload: bytes
    deadline: float
    keep_until: float


@dataclass(order=True)
class _Later:
    due: float
    order: int
    run: Callable[[], None] = field(compare=False)


class CommandDesk:
    """Receives command requests, runs each id once, answers every request for it."""

    def __init__(self, device: str, topics: Topics, link: MqttLink, clock: Callable[[], float]):
        self.device = device
        self.topics = topics
        self.link = link
        self.clock = clock
        self._prefix = f"{topics.prefix}/{device}/commands/"
        self._commands: dict[str, Command[Any]] = {}
        self._queue: OrderedDict[str, _Waiting] = OrderedDict()
        self._answers: OrderedDict[str, _Answered] = OrderedDict()
        self._later: list[_Later] = []
        self._order = itertools.count()
        self.runs: Counter[str] = Counter()
        """Commands run, by name: what diagnostics reports, and how a test sees run-once."""
        self.repeats = 0
        """Requests answered without a run of their own: with a stored answer, or with the
        answer of the same id's run they found waiting."""
        self.rejected = 0
        self.unanswerable = 0
        """Requests dropped without an answer: no usable response topic."""
        self._refused_logged = -float("inf")

    def register(self, command: Command[Any]) -> None:
        self._commands[command.name] = command

    @property
    def names(self) -> list[str]:
        return sorted(self._commands)

    def owns(self, topic: str) -> bool:
        return topic.startswith(self._prefix)

    # -- requests ---------------------------------------------------------------------------

    def receive(self, message: Message) -> None:
        """Take one request off the broker: answer it at once when it must not run (or has
        run: a repeat), else queue it for `run_pending`."""
        name = message.topic[len(self._prefix) :]
        reply_to = self._reply_to(message)
        if reply_to is None:
            self.unanswerable += 1
            self._log_refused("command without a usable response topic dropped", message)
            return
        self._forget_old()
        try:
            request = self._admit(name, message.payload)
        except CommandRejected as exc:
            self._reject(name, _readable_id(message.payload), exc.reason, [reply_to])
            return
        answered = self._answers.get(request.id)
        if answered is not None:
            self.repeats += 1
            self._send(answered.payload, [reply_to])
            return
        waiting = self._queue.get(request.id)
        if waiting is not None:
            self.repeats += 1
            waiting.reply_to.append(reply_to)  # one run, both answered
            return
        try:
            command = self._command(name)
            args = _convert(command, request)
            self._check_room()
        except CommandRejected as exc:
            self._reject(name, request.id, exc.reason, [reply_to])
            return
        self._queue[request.id] = _Waiting(request, command, args, [reply_to])

    def _admit(self, name: str, payload: bytes) -> CommandRequest:
        """The request, if it is one this agent may answer from its store or queue; else
        CommandRejected. A repeat is admitted whatever its deadline: its answer exists."""
        if len(payload) > MAX_COMMAND_BYTES:
            raise CommandRejected(f"request of {len(payload)} bytes, above {MAX_COMMAND_BYTES}")
        try:
            request = CommandRequest.decode(payload)
        except ContractError as exc:
            raise CommandRejected(str(exc)) from None
        if request.device != self.device:
            raise CommandRejected(f"addressed to {request.device!r}, this is {self.device!r}")
        used_for = self._name_of(request.id)
        if used_for is not None and used_for != name:
            raise CommandRejected(f"id {request.id!r} was already used for {used_for!r}")
        if used_for is None:
            now = self.clock()
            if request.deadline <= now:
                raise CommandRejected("expired")
            if request.deadline > now + MAX_DEADLINE_AHEAD:
                raise CommandRejected(
                    f"deadline {request.deadline - now:.0f} s ahead, more than "
                    f"{MAX_DEADLINE_AHEAD:.0f} s"
                )
        return request

    def _name_of(self, request_id: str) -> str | None:
        """The command an id was given to, answered or waiting; None for a new id."""
        if (answered := self._answers.get(request_id)) is not None:
            return answered.name
        if (waiting := self._queue.get(request_id)) is not None:
            return waiting.command.name
        return None

    def _command(self, name: str) -> Command[Any]:
        command = self._commands.get(name)
        if command is None:
            raise CommandRejected(f"unknown command {name!r}; this agent runs {self.names}")
        return command

    def _check_room(self) -> None:
        if len(self._queue) >= MAX_QUEUED:
            raise CommandRejected(f"busy: {len(self._queue)} commands are waiting")
        now = self.clock()
        if len(self._answers) + len(self._queue) < ANSWERS_KEPT:
            return
        # Full: an answer whose deadline has passed may go (a repeat of it would be expired),
        # oldest first; one whose deadline has not may not, or its repeat would run again.
        for key, answered in self._answers.items():
            if answered.deadline < now:
                del self._answers[key]
                return
        raise CommandRejected(f"busy: {ANSWERS_KEPT} recent commands await their deadlines")

    def _forget_old(self) -> None:
        now = self.clock()
        for key in [k for k, a in self._answers.items() if a.keep_until < now]:
            del self._answers[key]

    def _reply_to(self, message: Message) -> _ReplyTo | None:
        """The request's response topic, if it is one of this device's: an agent publishes
        only under its own id, whatever a request asks (the broker's ACL would refuse the
        rest anyway, and without one a forged request could make it write anywhere)."""
        topic = message.response_topic
        if topic is None:
            return None
        try:
            parsed = self.topics.parse(topic)
        except ContractError:
            return None
        if parsed.kind != "response" or parsed.device != self.device:
            return None
        return _ReplyTo(topic, message.correlation_data)

    # -- running ----------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        return len(self._queue)

    def next_wait(self) -> float:
        """Seconds until this desk has work: 0 with commands waiting, else until the next
        scheduled follow-up (a pulse's end), else a long time."""
        if self._queue:
            return 0.0
        if self._later:
            return max(0.0, self._later[0].due - time.monotonic())
        return float("inf")

    def later(self, delay: float, run: Callable[[], None]) -> None:
        """Have `run` called on the loop thread `delay` seconds from now (a pulse's end)."""
        heapq.heappush(self._later, _Later(time.monotonic() + delay, next(self._order), run))

    def run_pending(self, limit: int = COMMANDS_PER_PASS) -> None:
        """Run the follow-ups that are due, then up to `limit` waiting commands."""
        now = time.monotonic()
        while self._later and self._later[0].due <= now:
            later = heapq.heappop(self._later)
            try:
                later.run()
            except Exception:
                log.exception("a command's follow-up failed")
        for _ in range(min(limit, len(self._queue))):
            _, waiting = self._queue.popitem(last=False)
            self._run(waiting)

    def _run(self, waiting: _Waiting) -> None:
        request, command = waiting.request, waiting.command
        if request.deadline <= self.clock():
            self._reject(command.name, request.id, "expired", waiting.reply_to)
            return
        status: CommandStatus = "ok"
        result: dict[str, Any] | None = None
        reason: str | None = None
        try:
            result = command.run(waiting.args)
        except CommandRejected as exc:
            status, reason = "rejected", exc.reason
        except HardwareError as exc:
            status, reason = "failed", str(exc) or type(exc).__name__
        except Exception as exc:
            log.exception("command failed", extra={"command": command.name, "id": request.id})
            status, reason = "failed", f"internal error: {type(exc).__name__}: {exc}"
        if status != "rejected":  # a command that refused to act did not run
            self.runs[command.name] += 1
        answer = self._answer(command.name, request.id, status, result, reason)
        now = self.clock()
        self._answers[request.id] = _Answered(
            command.name, answer, request.deadline, max(request.deadline, now + ANSWER_MIN_KEEP)
        )
        if status == "rejected":
            self.rejected += 1
        log.info(
            "command answered",
            extra={"command": command.name, "id": request.id, "status": status, "reason": reason},
        )
        self._send(answer, waiting.reply_to)

    def _answer(
        self,
        name: str,
        request_id: str,
        status: CommandStatus,
        result: dict[str, Any] | None,
        reason: str | None,
    ) -> bytes:
        try:
            return CommandResponse(
                device=self.device,
                id=request_id,
                name=name,
                status=status,
                ts=self.clock(),
                result=result,
                reason=None if reason is None else reason[:1024],
            ).encode()
        except (ValueError, TypeError, msgspec.EncodeError) as exc:
            # A result the contract cannot carry (a NaN, an object JSON has not): a bug here,
            # answered as such rather than left without an answer.
            log.exception("command result not encodable", extra={"command": name})
            return self._answer(name, request_id, "failed", None, f"internal error: {exc}")

    def _reject(self, name: str, request_id: str, reason: str, reply_to: list[_ReplyTo]) -> None:
        self.rejected += 1
        log.info(
            "command rejected", extra={"command": name[:64], "id": request_id, "reason": reason}
        )
        # A name that is no valid id (the topic level is free text) is answered under a
        # placeholder: the contract's answer names commands by id pattern.
        valid = name if _valid_name(name) else "invalid"
        self._send(self._answer(valid, request_id, "rejected", None, reason), reply_to)

    def _send(self, payload: bytes, reply_to: list[_ReplyTo]) -> None:
        # QoS 0: a QoS 1 answer would take a place in the broker's Receive Maximum that the
        # readings' publisher counts on; an answer lost with its connection is asked for again
        # with the same id, and the stored answer sent.
        for target in reply_to:
            try:
                self.link.publish(target.topic, payload, qos=0, correlation_data=target.correlation)
            except PublishError as exc:
                log.warning("command answer not sent", extra={"error": str(exc)})

    def _log_refused(self, what: str, message: Message) -> None:
        now = time.monotonic()
        if now - self._refused_logged >= _REFUSED_LOG_INTERVAL:
            self._refused_logged = now
            log.warning(what, extra={"topic": message.topic, "dropped": self.unanswerable})

    def figures(self) -> dict[str, Any]:
        return {
            "run": dict(sorted(self.runs.items())),
            "answered_again": self.repeats,
            "rejected": self.rejected,
            "unanswerable": self.unanswerable,
            "waiting": len(self._queue),
            "answers_kept": len(self._answers),
        }


def _convert(command: Command[A], request: CommandRequest) -> A:
    try:
        return msgspec.convert(request.args, command.args)
    except msgspec.ValidationError as exc:
        message, path = locate_error(exc)
        where = f" ({'.'.join(str(p) for p in path)})" if path else ""
        raise CommandRejected(f"bad arguments for {command.name!r}{where}: {message}") from None


class _IdOnly(msgspec.Struct):
    id: CommandId


def _readable_id(payload: bytes) -> str:
    """The id of a request that may not decode, for its rejection; "unknown" without one."""
    try:
        return msgspec.json.decode(payload[:MAX_COMMAND_BYTES], type=_IdOnly).id
    except (msgspec.ValidationError, msgspec.DecodeError):
        return "unknown"


def _valid_name(name: str) -> bool:
    try:
        check_id(name, "command name")
    except ContractError:
        return False
    return True


# -- built-in commands ----------------------------------------------------------------------------


class NoArgs(Struct, frozen=True):
    pass


class ReadSensorArgs(Struct, frozen=True):
    sensor: SensorName


class RestartSensorsArgs(Struct, frozen=True):
    sensor: SensorName | None = None
    """One sensor; all of them when absent."""


class PulseOutputArgs(Struct, frozen=True):
    output: SensorName
    value: float
    seconds: Annotated[float, msgspec.Meta(gt=0, le=MAX_PULSE_SECONDS)]


class OutputHost(Protocol):
    """What `pulse_output` needs of the runtime's outputs: those it drives now, and the value
    each holds when no pulse does (its desired value, else its safe value), to go back to."""

    def running_outputs(self) -> Mapping[str, Output]: ...

    def resting_value(self, name: str) -> float: ...


def command_desk(agent: Agent, outputs: Callable[[], OutputHost]) -> CommandDesk:
    """`agent`'s desk with the built-in commands: `read_sensor`, `restart_sensors`,
    `diagnostics`, and `pulse_output` on the host `outputs()` gives when a pulse runs."""
    desk = CommandDesk(agent.device, agent.topics, agent.link, agent.clock)
    for command in builtin_commands(agent, outputs, desk):
        desk.register(command)
    return desk


def builtin_commands(
    agent: Agent, outputs: Callable[[], OutputHost], desk: CommandDesk
) -> list[Command[Any]]:

    def read_sensor(args: ReadSensorArgs) -> dict[str, Any]:
        slot = agent.slots.get(args.sensor)
        if slot is None:
            raise CommandRejected(f"no sensor {args.sensor!r} runs here; {sorted(agent.slots)} do")
        if slot.sensor is None:
            agent.reopen_sensor(args.sensor)
        if slot.sensor is None:
            raise HardwareError(f"sensor {args.sensor!r} is missing: {slot.missing_reason}")
        reading = slot.sensor.read()
        return {
            "sensor": args.sensor,
            "ts": reading.timestamp,
            "backend": slot.sensor.status.backend.value,
            "values": {q: {"value": m.value, "unit": m.unit} for q, m in reading.values.items()},
        }

    def restart_sensors(args: RestartSensorsArgs) -> dict[str, Any]:
        if args.sensor is not None and args.sensor not in agent.slots:
            raise CommandRejected(f"no sensor {args.sensor!r} runs here; {sorted(agent.slots)} do")
        names = sorted(agent.slots) if args.sensor is None else [args.sensor]
        for name in names:
            agent.reopen_sensor(name)
        return {"restarted": {name: _health(agent, name) for name in names}}

    def diagnostics(_: NoArgs) -> dict[str, Any]:
        return agent_diagnostics(agent)

    return [
        Command("read_sensor", ReadSensorArgs, read_sensor),
        Command("restart_sensors", RestartSensorsArgs, restart_sensors),
        Command("diagnostics", NoArgs, diagnostics),
        pulse_output_command(outputs, desk),
    ]


def _health(agent: Agent, name: str) -> dict[str, Any]:
    return agent.slots[name].state().to_builtins()


def agent_diagnostics(agent: Agent) -> dict[str, Any]:
    """The agent's figures at this moment, for the `diagnostics` command."""
    link = agent.link
    try:
        depth: int | None = agent.outbox.depth
    except OutboxError:  # a failing card: the figure is unknown, the answer still goes out
        depth = None
    return {
        "agent_version": agent.version,
        "boot": agent.boot,
        "session": agent.session,
        "uptime_s": round(max(0.0, agent.clock() - agent.started_at), 3),
        "config_version": agent.applied_version,
        "sensors": {name: _health(agent, name) for name in sorted(agent.slots)},
        "readings": agent.readings,
        "delivered": agent.publisher.delivered,
        "outbox": {
            "depth": depth,
            "dropped": agent.outbox.dropped,
            "unstored": agent.unstored,
            "storage_error": agent.storage_error,
        },
        "broker": {
            "connected": link.connected,
            "connects": link.connect_count,
            "disconnects": link.disconnect_count,
            "refused_publishes": link.rejected,
            "receive_maximum": link.receive_maximum,
        },
        "commands": agent.commands.figures(),
    }


def pulse_output_command(
    outputs: Callable[[], OutputHost], desk: CommandDesk
) -> Command[PulseOutputArgs]:
    """`pulse_output`: drive an output to `value` for `seconds`, then back to its resting
    value. Answered once the output is driven, not when the pulse ends (a pulse may outlast
    any caller's patience); a second pulse on the same output replaces the first's end.

    `outputs` is called when a pulse runs: the runtime's output bank is made at its first use,
    not for the desk's sake."""
    generations: Counter[str] = Counter()

    def pulse(args: PulseOutputArgs) -> dict[str, Any]:
        host = outputs()
        running = host.running_outputs()
        output = running.get(args.output)
        if output is None:
            raise CommandRejected(
                f"no output {args.output!r} here; outputs: {sorted(running) or 'none'}"
            )
        try:
            applied = output.apply(args.value)
        except OutputRangeError as exc:
            raise CommandRejected(str(exc)) from None
        generations[args.output] += 1
        generation = generations[args.output]

        def end() -> None:
            if generations[args.output] != generation or output.closed:
                return  # a later pulse owns the output now, or it was closed
            try:
                output.apply(host.resting_value(args.output))
            except (HardwareError, KeyError) as exc:
                log.warning("pulse not ended", extra={"output": args.output, "error": str(exc)})

        desk.later(args.seconds, end)
        return {"output": args.output, "applied": applied, "seconds": args.seconds}

    return Command("pulse_output", PulseOutputArgs, pulse)
