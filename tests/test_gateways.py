"""Several gateways on one prefix play each missing device once, and hand devices between them
without a gap or a second writer (gateway/ownership.py; docs/design.md, "Several gateways").

The first tests decide by hand; the last runs three real gateways on a real Mosquitto, one of
them a process of its own that the test kills with SIGKILL and starts again, while a separate
subscriber counts every reading.
"""

from __future__ import annotations

import itertools
import signal
import time
from collections import defaultdict
from typing import Any

import pytest

from edgetwin.agent.contract import Server, StreamServing, Topics, TwinSummary
from edgetwin.gateway.membership import rendezvous_owner
from edgetwin.gateway.ownership import Decision, Ownership
from edgetwin.testing.broker import Broker
from edgetwin.testing.capture import Capture, Message, SequenceReport
from edgetwin.testing.gateway import GatewayError, RunningGateway
from edgetwin.testing.waiting import poll

TOPICS = Topics()
KEEPALIVE = 2  # seconds: a lost gateway's devices must be played again within 1.5 x this
INTERVAL = 0.2
DEVICES = [f"dev-{i:02d}" for i in range(24)]
GATEWAYS = ("gw-a", "gw-b", "gw-c")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def document(device: str, gateway: str | None, seq: int = 7) -> TwinSummary:
    return TwinSummary(
        device=device,
        ts=1.0,
        presence="offline",
        sensors={"env": StreamServing(served_by=Server.SIMULATION, seq=seq)},
        gateway=gateway,
    )


def owned_by(gateway: str, live: tuple[str, ...]) -> str:
    return next(d for d in DEVICES if rendezvous_owner(d, live) == gateway)


# -- deciding ---------------------------------------------------------------------------------


def test_the_owner_waits_for_a_live_claimant_to_release_and_continues_its_seq() -> None:
    clock = Clock()
    ownership = Ownership("gw-b", handoff_timeout=5.0, monotonic=clock)
    live = ("gw-a", "gw-b")
    ownership.settle(live)
    mine, theirs = owned_by("gw-b", live), owned_by("gw-a", live)
    assert ownership.decide(theirs) is Decision.OTHER
    # Unclaimed (a new device, or a document of a gateway that predates claims): at once.
    assert ownership.decide(mine) is Decision.SERVE
    # Claimed by gw-a, which is alive: it plays the device until it lets go.
    ownership.note_document(document(mine, "gw-a"))
    assert ownership.decide(mine) is Decision.WAIT
    assert ownership.waiting() == [mine]
    assert ownership.simulated_elsewhere(mine) == {"env": 7}
    released = ownership.note_document(document(mine, None, seq=41))
    assert released
    assert ownership.decide(mine) is Decision.SERVE
    assert ownership.floor(mine) == {"env": 41}  # where its streams continue
    assert ownership.waiting() == []
    # Its own claim coming back changes nothing; another gateway writing over it ends it.
    ownership.note_published(mine, claim=True)
    ownership.note_document(document(mine, "gw-b"))
    assert ownership.claimed(mine)
    ownership.note_document(document(mine, "gw-a"))
    assert not ownership.claimed(mine)


def test_a_claim_of_a_gateway_gone_is_void_and_a_silent_claimant_is_waited_for_only_so_long() -> (
    None
):
    clock = Clock()
    ownership = Ownership("gw-b", handoff_timeout=5.0, monotonic=clock)
    ownership.settle(("gw-a", "gw-b"))
    device = owned_by("gw-b", ("gw-a", "gw-b"))
    ownership.note_document(document(device, "gw-a"))
    assert ownership.decide(device) is Decision.WAIT
    assert ownership.next_deadline() == 105.0
    clock.now = 104.9
    assert ownership.decide(device) is Decision.WAIT
    assert ownership.expired_waits() == []
    clock.now = 105.0
    assert ownership.expired_waits() == [device]
    assert ownership.decide(device) is Decision.SERVE  # taken anyway, with a warning
    # A claimant that left the (settled) membership: at once.
    other = next(d for d in DEVICES if rendezvous_owner(d, ("gw-b", "gw-c")) == "gw-b")
    ownership.settle(("gw-b", "gw-c"))
    ownership.note_document(document(other, "gw-a"))
    assert ownership.decide(other) is Decision.SERVE
    assert ownership.simulated_elsewhere(other) == {}


def test_with_no_gateway_known_a_gateway_owns_everything() -> None:
    ownership = Ownership("gw-a", handoff_timeout=5.0)
    assert all(ownership.decide(d) is Decision.SERVE for d in DEVICES)
    # Its own earlier life's claim (a restart under the same id) is its own.
    ownership.note_document(document(DEVICES[0], "gw-a"))
    assert ownership.decide(DEVICES[0]) is Decision.SERVE


# -- three gateways on one broker -------------------------------------------------------------


def _config(gateway: str) -> dict[str, Any]:
    # gw-c moves first when the membership changes, the others a second later: a new owner
    # that did not wait for the old one's release would play beside it for that second.
    return {
        "gateway": {
            "id": gateway,
            "rebalance_delay": 0.2 if gateway == "gw-c" else 1.0,
            "handoff_timeout": 2.5,
        },
        "mqtt": {"keepalive": KEEPALIVE},
    }


def _manifest() -> list[dict[str, Any]]:
    return [
        {"id": d, "sensors": {"env": {"driver": "bme280", "interval": INTERVAL}}} for d in DEVICES
    ]


def _claims(twins: Capture) -> dict[str, str | None]:
    """The gateway each device's latest twin document names."""
    latest: dict[str, str | None] = {}
    for message in twins.messages():
        if message.payload:
            summary = TwinSummary.decode(message.payload)
            latest[summary.device] = summary.gateway
    return latest


def _claimed_by_owners(twins: Capture, live: tuple[str, ...], timeout: float = 15) -> None:
    owners = {d: rendezvous_owner(d, live) for d in DEVICES}
    poll(
        lambda: _claims(twins) == owners,
        timeout,
        what=f"every device claimed by its owner among {live}",
    )


def _readings(capture: Capture) -> dict[str, list[tuple[float, int]]]:
    streams: dict[str, list[tuple[float, int]]] = defaultdict(list)
    message: Message
    for message in capture.messages():
        reading = message.telemetry()
        streams[reading.device].append((message.received_at, reading.seq))
    return streams


def _longest_silence(readings: list[tuple[float, int]], start: float, end: float) -> float:
    times = [start] + [t for t, _ in readings if start < t < end] + [end]
    return max(b - a for a, b in itertools.pairwise(times))


def test_three_gateways_play_each_device_once_through_a_kill_and_a_return(
    broker: Broker,
) -> None:
    endpoint = broker.endpoint
    with (
        Capture(endpoint, TOPICS.all_telemetry()) as readings,
        Capture(endpoint, TOPICS.all_twin()) as twins,
        RunningGateway(endpoint, _manifest(), config=_config("gw-a")) as a,
        RunningGateway(endpoint, _manifest(), config=_config("gw-b")) as b,
    ):
        _claimed_by_owners(twins, ("gw-a", "gw-b"))
        # A third joins: it takes about a third of the devices, each handed over by the
        # gateway that played it.
        c = RunningGateway(endpoint, _manifest(), config=_config("gw-c"), mode="process").start()
        try:
            _claimed_by_owners(twins, GATEWAYS)
            c_devices = [d for d in DEVICES if rendezvous_owner(d, GATEWAYS) == "gw-c"]
            assert c_devices
            # Among others, a gateway's stand-ins play only as long as the broker keeps its
            # connection alive since it last acknowledged one of its messages.
            assert a.app is not None
            engine = a.app.state.service.standins.engine
            poll(
                lambda: time.monotonic() < engine.held_after <= time.monotonic() + 1.5 * KEEPALIVE,
                5,
                what="gw-a's stand-ins held to its lease",
            )
            # Any gateway answers for the whole fleet.
            poll(
                lambda: a.client.fleet()["simulated_devices"] == len(DEVICES),
                10,
                what="gw-a counting every simulated device",
            )
            assert {d["id"]: d["simulated"] for d in b.client.devices()} == dict.fromkeys(
                DEVICES, True
            )
            time.sleep(4 * INTERVAL)  # a few readings from every stream before the kill
            killed = time.monotonic()
            c.kill()
            _claimed_by_owners(twins, ("gw-a", "gw-b"), timeout=1.5 * KEEPALIVE)
            poll(
                lambda: all(
                    any(t > killed + 1.5 * KEEPALIVE / 2 for t, _ in _readings(readings)[d])
                    for d in c_devices
                ),
                3 * KEEPALIVE,
                what="gw-c's devices played again",
            )
            after_kill = time.monotonic()
        finally:
            c.stop()
        silences = {
            d: _longest_silence(_readings(readings)[d], killed, after_kill) for d in c_devices
        }
        worst = max(silences.values())
        print(
            f"gw-c killed: its {len(c_devices)} devices silent at most {worst:.2f} s "
            f"(keepalive {KEEPALIVE} s)"
        )
        assert worst < 1.5 * KEEPALIVE, silences

        # Back: it gets its devices again, each released by the gateway that took it.
        returned = time.monotonic()
        c = RunningGateway(endpoint, _manifest(), config=_config("gw-c"), mode="process").start()
        try:
            _claimed_by_owners(twins, GATEWAYS)
            time.sleep(4 * INTERVAL)
            settled = time.monotonic()
        finally:
            c.stop()
        handed_back = {
            d: _longest_silence(_readings(readings)[d], returned, settled) for d in c_devices
        }
        print(f"gw-c back: its devices silent at most {max(handed_back.values()):.2f} s")
        assert max(handed_back.values()) < 1.5 * KEEPALIVE, handed_back

    # One writer per stream, one numbering throughout: no seq twice, none missing.
    streams = _readings(readings)
    for device in DEVICES:
        report = SequenceReport.of(device, "env", [seq for _, seq in streams[device]])
        assert not report.duplicates, report.describe()
        assert report.complete, report.describe()


def test_a_frozen_gateway_woken_after_the_others_took_its_devices_plays_beside_none(
    broker: Broker,
) -> None:
    """Frozen (SIGSTOP, as behind a cut network) past its keepalive, a gateway's will goes out
    and the other takes its devices. Woken, it finds its connection gone: it stops its
    stand-ins before playing anything, and gets its devices back only by release."""
    endpoint = broker.endpoint
    live = ("gw-a", "gw-c")
    with (
        Capture(endpoint, TOPICS.all_telemetry()) as readings,
        Capture(endpoint, TOPICS.all_twin()) as twins,
        Capture(endpoint, TOPICS.all_gateways()) as leases,
        RunningGateway(endpoint, _manifest(), config=_config("gw-a")),
    ):
        c = RunningGateway(endpoint, _manifest(), config=_config("gw-c"), mode="process").start()
        try:
            _claimed_by_owners(twins, live)
            leases.clear()
            c.send_signal(signal.SIGSTOP)
            try:
                leases.wait_for(
                    TOPICS.gateway("gw-c"), lambda m: b'"offline"' in m.payload, timeout=15
                )
                _claimed_by_owners(twins, ("gw-a",), timeout=5)
            finally:
                c.send_signal(signal.SIGCONT)
            _claimed_by_owners(twins, live)
            time.sleep(4 * INTERVAL)
        finally:
            c.stop()
        # Stopped cleanly, it released its devices to the one left.
        _claimed_by_owners(twins, ("gw-a",), timeout=5)
    streams = _readings(readings)
    for device in DEVICES:
        report = SequenceReport.of(device, "env", [seq for _, seq in streams[device]])
        assert not report.duplicates, report.describe()
        assert report.complete, report.describe()


def test_any_gateway_takes_writes_for_the_whole_fleet(broker: Broker) -> None:
    """A device added through a gateway that does not own it is played by its owner; its
    desired config can be written through either; removed through either, both drop it."""
    endpoint = broker.endpoint
    live = ("gw-a", "gw-b")
    device = next(f"new-{i}" for i in range(100) if rendezvous_owner(f"new-{i}", live) == "gw-a")
    config = {"gateway": {"rebalance_delay": 0.2}, "mqtt": {"keepalive": KEEPALIVE}}
    with (
        Capture(endpoint, TOPICS.all_twin()) as twins,
        Capture(endpoint, TOPICS.telemetry(device, "+")) as readings,
        RunningGateway(endpoint, config={**config, "gateway": {"id": "gw-a"}}) as a,
        RunningGateway(endpoint, config={**config, "gateway": {"id": "gw-b"}}) as b,
    ):
        poll(lambda: len(b.client.request("GET", "/gateways").json()["gateways"]) == 2, 10)
        env = {"driver": "bme280", "interval": INTERVAL}
        # Its heater answers in the twin document too: the owner that learns the device from
        # it plays the same response.
        warms = {"sensor": "env", "quantity": "temperature", "time_constant": 0.5}
        b.client.add_device(
            device, {"env": env}, site="lab", responses=[{**warms, "gains": {"relay": 8.0}}]
        )
        poll(lambda: _claims(twins).get(device) == "gw-a", 10, what="the owner claiming it")
        readings.wait_for(timeout=10, count=3)
        assert a.client.device(device)["simulated"]
        assert b.client.device(device)["simulated"]
        assert a.client.device(device)["site"] == "lab"

        # Desired config through the gateway that does not play it, versioned as any other.
        _, version = a.client.desired(device)
        b.client.put_desired(device, {"env": {**env, "interval": 2 * INTERVAL}}, if_match=version)
        poll(
            lambda: a.client.desired(device)[1] == version + 1,
            10,
            what="the new version seen by the owner",
        )
        with pytest.raises(GatewayError) as stale:
            a.client.put_desired(device, {"env": env}, if_match=version)
        assert stale.value.status == 409

        # Outputs and commands through the gateway that does not play it: the owner applies
        # the output, reports it, and alone answers the command (one writer of each).
        def temperature() -> float:
            return readings.messages()[-1].telemetry().values["temperature"].value

        readings.wait_for(timeout=5)
        before = temperature()
        relay = {"driver": "digital_output", "pin": 17, "value": 1}
        b.client.put_desired(device, {"env": env}, outputs={"relay": relay})

        def relay_reported() -> object:
            reported = a.client.device(device)["reported"] or {}
            return reported.get("outputs", {}).get("relay")

        poll(relay_reported, 10, what="the relay applied by the owner")
        assert relay_reported() == {"value": 1.0, "backend": "simulated"}
        poll(lambda: temperature() > before + 4.0, 5, what="the owner's room warmed by the relay")
        with Capture(endpoint, TOPICS.response(device, "+")) as answers:
            answer = b.client.request(
                "POST", f"/devices/{device}/commands/diagnostics", {"timeout": 5}
            )
            assert answer.status == 200, answer.body
            assert answer.json()["result"]["simulated_by"] == "gw-a"
            answers.wait_for(timeout=5)
            time.sleep(1.0)  # a window for a second answer, from a second writer
            assert len(answers.messages()) == 1

        # Removed through the gateway that does not own it: the owner stops playing it.
        b.client.delete_device(device)
        poll(
            lambda: device not in {d["id"] for d in a.client.devices()},
            10,
            what="the owner dropping it",
        )
        readings.clear()
        time.sleep(4 * INTERVAL)  # a window in which four readings were due
        assert readings.messages() == []
