"""The agent's command desk without a broker: run-once bookkeeping, its bounds, and
`pulse_output` on an emulated GPIO pin. What crosses the broker is in test_commands.py."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from edgetwin.agent import commands as desk_module
from edgetwin.agent.commands import (
    COMMANDS_PER_PASS,
    MAX_QUEUED,
    Command,
    CommandDesk,
    NoArgs,
    pulse_output_command,
)
from edgetwin.agent.contract import CommandRequest, CommandResponse, Topics
from edgetwin.agent.mqtt import Message
from edgetwin.hardware import EmulatedBackend, Output, open_output
from edgetwin.hardware.drivers.gpio_output import emulator_for
from edgetwin.testing.waiting import poll

DEVICE = "pi-desk"
TOPICS = Topics()
REPLY = TOPICS.response(DEVICE, "tester")


class RecordingLink:
    """Stands in for MqttLink's publish: keeps what the desk answers, and to whom."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, CommandResponse, bytes | None]] = []

    def publish(
        self, topic: str, payload: bytes, *, qos: int = 0, correlation_data: bytes | None = None
    ) -> None:
        self.sent.append((topic, CommandResponse.decode(payload), correlation_data))

    def answers(self) -> list[CommandResponse]:
        return [answer for _, answer, _ in self.sent]


class Clock:
    def __init__(self) -> None:
        self.now = 1_790_000_000.0

    def __call__(self) -> float:
        return self.now


def make_desk(clock: Clock) -> tuple[CommandDesk, RecordingLink, list[str]]:
    link = RecordingLink()
    desk = CommandDesk(DEVICE, TOPICS, link, clock)  # type: ignore[arg-type]
    ran: list[str] = []

    def note(_: NoArgs) -> dict[str, Any]:
        ran.append("note")
        return {"count": len(ran)}

    desk.register(Command("note", NoArgs, note))
    return desk, link, ran


def send(
    desk: CommandDesk,
    clock: Clock,
    command_id: str,
    *,
    name: str = "note",
    deadline_in: float = 10,
    correlation: bytes = b"c",
    args: Mapping[str, Any] | None = None,
) -> CommandRequest:
    request = CommandRequest(
        device=DEVICE, id=command_id, deadline=clock.now + deadline_in, args=dict(args or {})
    )
    resend(desk, request, name=name, correlation=correlation)
    return request


def resend(
    desk: CommandDesk, request: CommandRequest, *, name: str = "note", correlation: bytes = b"c"
) -> None:
    """`request` again, as a QoS 1 redelivery or a caller's retry sends it: its own deadline."""
    desk.receive(
        Message(
            TOPICS.command(DEVICE, name),
            request.encode(),
            retain=False,
            qos=1,
            response_topic=REPLY,
            correlation_data=correlation,
        )
    )


def test_a_repeat_gets_the_stored_answer_and_does_not_run() -> None:
    clock = Clock()
    desk, link, ran = make_desk(clock)
    once = send(desk, clock, "a", correlation=b"1")
    resend(desk, once, correlation=b"2")  # while the first waits: one run answers both
    desk.run_pending()
    clock.now += 30  # past the deadline, within the minimum keep: still the stored answer
    resend(desk, once, correlation=b"3")
    assert ran == ["note"]
    assert [(topic, cd) for topic, _, cd in link.sent] == [
        (REPLY, b"1"),
        (REPLY, b"2"),
        (REPLY, b"3"),
    ]
    first, *others = link.answers()
    assert first.status == "ok"
    assert first.result == {"count": 1}
    assert others == [first, first]
    assert desk.repeats == 2
    clock.now += desk_module.ANSWER_MIN_KEEP  # forgotten now, and expired: still not run
    resend(desk, once)
    desk.run_pending()
    assert ran == ["note"]
    assert link.answers()[-1].reason == "expired"


def test_a_loop_pass_runs_a_few_and_a_full_queue_is_busy() -> None:
    clock = Clock()
    desk, link, ran = make_desk(clock)
    for i in range(MAX_QUEUED + 1):
        send(desk, clock, f"q{i}")
    assert [a.id for a in link.answers()] == [f"q{MAX_QUEUED}"]
    assert link.answers()[0].reason == f"busy: {MAX_QUEUED} commands are waiting"
    assert desk.next_wait() == 0.0
    desk.run_pending()
    assert len(ran) == COMMANDS_PER_PASS
    while desk.pending:
        desk.run_pending()
    assert len(ran) == MAX_QUEUED
    assert desk.next_wait() == float("inf")


def test_kept_answers_are_bounded_and_only_expired_ones_make_room(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(desk_module, "ANSWERS_KEPT", 3)
    clock = Clock()
    desk, link, ran = make_desk(clock)
    kept = [send(desk, clock, f"k{i}", deadline_in=5) for i in range(3)]
    desk.run_pending()
    send(desk, clock, "k3")
    assert link.answers()[-1].reason == "busy: 3 recent commands await their deadlines"
    # Every deadline passed, the answers are kept for their minimum: when full, the oldest
    # may go, since its repeat would be expired.
    clock.now += 10
    send(desk, clock, "k3")
    desk.run_pending()
    assert ran == ["note"] * 4
    resend(desk, kept[0])
    resend(desk, kept[1])  # still kept: the stored answer
    desk.run_pending()
    assert [(a.id, a.status, a.reason) for a in link.answers()[-2:]] == [
        ("k0", "rejected", "expired"),
        ("k1", "ok", None),
    ]
    assert len(ran) == 4


def test_unusable_requests_are_rejected_or_dropped() -> None:
    clock = Clock()
    desk, link, ran = make_desk(clock)
    send(desk, clock, "u1", name="nothing")
    send(desk, clock, "u2", args={"x": 1})
    send(desk, clock, "u3", deadline_in=desk_module.MAX_DEADLINE_AHEAD + 60)
    other = CommandRequest(device="pi-other", id="u4", deadline=clock.now + 5)
    for payload in (other.encode(), b"{not json", b'{"id": "u5"}', b"x" * 20_000):
        desk.receive(Message(TOPICS.command(DEVICE, "note"), payload, False, 1, (), REPLY, b"c"))
    desk.receive(Message(TOPICS.command(DEVICE, "note"), b"{}", False, 1, (), None, None))
    elsewhere = TOPICS.response("pi-other", "tester")
    desk.receive(Message(TOPICS.command(DEVICE, "note"), b"{}", False, 1, (), elsewhere, None))
    desk.run_pending()
    assert ran == []
    assert [(a.id, a.status) for a in link.answers()] == [
        ("u1", "rejected"),
        ("u2", "rejected"),
        ("u3", "rejected"),
        ("u4", "rejected"),
        ("unknown", "rejected"),
        ("u5", "rejected"),
        ("unknown", "rejected"),
    ]
    reasons = [str(a.reason) for a in link.answers()]
    assert "unknown command 'nothing'; this agent runs ['note']" in reasons[0]
    assert "bad arguments for 'note'" in reasons[1]
    assert "more than 600 s" in reasons[2]
    assert "addressed to 'pi-other'" in reasons[3]
    assert "above 16384" in reasons[6]
    assert desk.unanswerable == 2


# -- pulse_output ---------------------------------------------------------------------------------


class Outputs:
    def __init__(self, outputs: Mapping[str, Output], resting: float = 0.0) -> None:
        self.outputs = dict(outputs)
        self.resting = resting

    def running_outputs(self) -> Mapping[str, Output]:
        return self.outputs

    def resting_value(self, name: str) -> float:
        return self.resting


@pytest.fixture
def backend() -> Iterator[EmulatedBackend]:
    backend = EmulatedBackend()
    yield backend
    backend.close()


def test_pulse_drives_an_output_then_returns_it(backend: EmulatedBackend) -> None:
    relay = open_output("digital_output", backend=backend, pin=17)
    load = emulator_for(backend, relay)
    clock = Clock()
    desk, link, _ = make_desk(clock)
    desk.register(pulse_output_command(lambda: Outputs({"relay": relay}), desk))

    send(
        desk, clock, "p1", name="pulse_output", args={"output": "relay", "value": 1, "seconds": 0.1}
    )
    started = time.monotonic()
    desk.run_pending()
    answer = link.answers()[-1]
    assert (answer.status, answer.result) == (
        "ok",
        {"output": "relay", "applied": 1.0, "seconds": 0.1},
    )
    assert load.level == 1.0
    assert 0 < desk.next_wait() <= 0.1

    def ended() -> bool:
        desk.run_pending()  # the agent's loop does this at every turn
        return load.level == 0.0

    poll(ended, 5, interval=0.01, what="pulse end")
    assert time.monotonic() - started >= 0.1
    assert desk.next_wait() == float("inf")


def test_a_later_pulse_owns_the_output_and_out_of_range_is_refused(
    backend: EmulatedBackend,
) -> None:
    fan = open_output("pwm_output", backend=backend, pin=18)
    load = emulator_for(backend, fan)
    clock = Clock()
    desk, link, _ = make_desk(clock)
    host = Outputs({"fan": fan}, resting=0.25)
    desk.register(pulse_output_command(lambda: host, desk))

    send(
        desk,
        clock,
        "p1",
        name="pulse_output",
        args={"output": "fan", "value": 0.5, "seconds": 0.05},
    )
    send(desk, clock, "p2", name="pulse_output", args={"output": "fan", "value": 1, "seconds": 60})
    send(desk, clock, "p3", name="pulse_output", args={"output": "fan", "value": 1.5, "seconds": 1})
    send(desk, clock, "p4", name="pulse_output", args={"output": "pump", "value": 1, "seconds": 1})
    desk.run_pending()
    statuses = [(a.id, a.status) for a in link.answers()]
    assert statuses == [("p1", "ok"), ("p2", "ok"), ("p3", "rejected"), ("p4", "rejected")]
    assert "refused, not clamped" in str(link.answers()[2].reason)
    assert "no output 'pump' here; outputs: ['fan']" in str(link.answers()[3].reason)
    assert load.level == 1.0  # p3 wrote nothing
    first_end = time.monotonic() + 0.05
    poll(lambda: time.monotonic() > first_end, 5, interval=0.01, what="first pulse's end")
    desk.run_pending()
    assert load.level == 1.0, "the first pulse's end must not cut the second short"
    assert desk.next_wait() > 50
