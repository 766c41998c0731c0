"""edgetwin.testing.capture: waiting for messages, its failure message, readings decoded to the
wire contract, and the seq gap and duplicate report, against a real mosquitto."""

from __future__ import annotations

import threading

import pytest

from edgetwin.agent.contract import ContractError, FaultLabel, Source, Telemetry, Value
from edgetwin.testing.broker import Broker
from edgetwin.testing.capture import (
    Capture,
    SequenceReport,
    WaitTimeout,
    connect_client,
    disconnect_client,
    publish,
)
from edgetwin.testing.endpoint import MqttEndpoint

pytestmark = pytest.mark.integration


@pytest.fixture
def endpoint(broker: Broker) -> MqttEndpoint:
    return MqttEndpoint(broker.host, broker.port)


def reading(seq: int, device: str = "pi-1", sensor: str = "env") -> Telemetry:
    return Telemetry(
        device=device,
        sensor=sensor,
        ts=1_800_000_000.0 + seq,
        seq=seq,
        source=Source.EMULATED,
        values={"temperature": Value(value=20.0 + seq / 10, unit="°C")},
    )


def publish_stream(endpoint: MqttEndpoint, readings: list[Telemetry]) -> None:
    """Publish in order from one client at QoS 1: the broker keeps one client's order."""
    client = connect_client(endpoint)
    try:
        infos = [
            client.publish(f"edgetwin/{r.device}/telemetry/{r.sensor}", r.encode(), qos=1)
            for r in readings
        ]
        for info in infos:
            info.wait_for_publish(5)
    finally:
        disconnect_client(client)


def test_wait_for_returns_the_matching_messages(endpoint: MqttEndpoint) -> None:
    with Capture(endpoint, "t/#") as capture:
        for i in range(3):
            publish(endpoint, f"t/a/{i}", f"payload {i}")
        publish(endpoint, "t/b", "other", retain=False)
        got = capture.wait_for("t/a/+", count=3)
        assert [m.payload for m in got] == [b"payload 0", b"payload 1", b"payload 2"]
        # Filter and predicate together; a predicate alone; what came before the call counts.
        (two,) = capture.wait_for("t/a/+", lambda m: m.text.endswith("2"))
        assert two.topic == "t/a/2"
        assert capture.wait_for(lambda m: m.payload == b"other")[0].topic == "t/b"
        assert len(capture.messages()) == 4
        assert [m.topic for m in capture.messages("t/b")] == ["t/b"]
        capture.clear()
        assert capture.messages() == []
    assert capture.filters == ["t/#"]


def test_a_waiter_wakes_when_another_thread_publishes(endpoint: MqttEndpoint) -> None:
    with Capture(endpoint, "w/#") as capture:
        publisher = threading.Thread(target=publish, args=(endpoint, "w/late", b"x"))
        publisher.start()
        try:
            assert capture.wait_for("w/late", timeout=10)[0].payload == b"x"
        finally:
            publisher.join()


def test_a_failed_wait_lists_what_did_arrive(endpoint: MqttEndpoint) -> None:
    with Capture(endpoint, ["edgetwin/#"]) as capture:
        with pytest.raises(AssertionError, match="nothing arrived"):
            capture.wait_for("edgetwin/+/status", timeout=0.2)
        publish(endpoint, "edgetwin/pi-1/telemetry/env", reading(1).encode())
        publish(endpoint, "edgetwin/pi-2/state", b"x" * 200, retain=True)
        capture.wait_for(count=2)
        with pytest.raises(WaitTimeout) as failed:
            capture.wait_for("edgetwin/+/status", count=2, timeout=0.2)
    text = str(failed.value)
    assert "expected 2 message(s) on 'edgetwin/+/status' within 0.2 s, 0 matched" in text
    assert "2 arrived" in text
    assert 'edgetwin/pi-1/telemetry/env b\'{"v":1,"device":"pi-1"' in text
    # Long payloads are cut to their head, with the size of the rest.
    assert "edgetwin/pi-2/state b'xxxx" in text
    assert "(+140 B)" in text
    # An AssertionError for pytest, a TimeoutError for retry loops.
    assert isinstance(failed.value, AssertionError)
    assert isinstance(failed.value, TimeoutError)
    # A message the broker delivered from its retained store is marked so.
    retained = r"edgetwin/pi-2/state b'x+'\.\.\.\(\+140 B\) \(retained\)"
    with (
        Capture(endpoint, "edgetwin/pi-2/state") as late,
        pytest.raises(AssertionError, match=retained),
    ):
        late.wait_for("edgetwin/+/status", timeout=0.5)


def test_a_failed_wait_names_its_predicate_and_counts_the_matches(endpoint: MqttEndpoint) -> None:
    def is_online(message: object) -> bool:
        return False

    with Capture(endpoint, "p/#") as capture:
        publish(endpoint, "p/1", b"a")
        with pytest.raises(AssertionError, match=r"on 'p/#' matching .*is_online within"):
            capture.wait_for("p/#", is_online, timeout=0.2)
        with pytest.raises(AssertionError, match=r"expected 2 message\(s\) on 'p/#'.* 1 matched"):
            capture.wait_for("p/#", count=2, timeout=0.2)


def test_readings_decode_telemetry_and_leave_the_rest(endpoint: MqttEndpoint) -> None:
    sent = [reading(1), reading(2, sensor="aux"), reading(1, device="pi-2")]
    with Capture(endpoint, "edgetwin/#") as capture:
        publish_stream(endpoint, sent)
        label = FaultLabel(
            event="start", id="f1", type="drift", device="pi-1", sensor="env", start=1.0
        )
        publish(endpoint, "edgetwin/labels", label.encode())
        publish(endpoint, "edgetwin/pi-1/status", b"not a reading")
        capture.wait_for(count=5)
        assert capture.readings() == sent
        assert capture.readings(device="pi-1") == sent[:2]
        assert capture.readings(sensor="aux") == [sent[1]]
        assert capture.readings("edgetwin/pi-2/#") == [sent[2]]
        assert capture.readings()[0].values["temperature"].unit == "°C"
        assert capture.labels() == [label]
        # A malformed reading on a telemetry topic: skipped, or an error naming its topic.
        publish(endpoint, "edgetwin/pi-1/telemetry/env", b'{"v":1,"seq":"7"}')
        capture.wait_for(count=6)
        assert len(capture.readings("edgetwin/+/telemetry/+")) == 3
        with pytest.raises(ContractError, match="edgetwin/pi-1/telemetry/env: invalid Telemetry"):
            capture.readings("edgetwin/+/telemetry/+", strict=True)


def test_sequence_report_finds_gaps_duplicates_and_late_readings(endpoint: MqttEndpoint) -> None:
    seqs = [1, 2, 3, 5, 5, 6, 9, 8, 10, 14]
    with Capture(endpoint, "edgetwin/+/telemetry/+") as capture:
        others = [reading(s, "pi-2") for s in (3, 4)] + [reading(s, "pi-3") for s in (1, 2, 2)]
        publish_stream(endpoint, [reading(s) for s in seqs] + others)
        capture.wait_for(count=len(seqs) + len(others))
        report = capture.check_sequence("pi-1", "env")
        assert report == SequenceReport(
            device="pi-1",
            sensor="env",
            count=10,
            first=1,
            last=14,
            gaps=[(4, 4), (7, 7), (11, 13)],
            duplicates={5: 2},
            out_of_order=1,
        )
        assert report.missing == 5
        assert not report.complete
        with pytest.raises(AssertionError) as failed:
            capture.assert_sequence_complete("pi-1", "env")
        assert "5 missing [4, 7, 11-13]" in str(failed.value)
        assert "1 duplicated [5x2]" in str(failed.value)

        # pi-2 runs 3, 4: complete as received, but not from its birth at seq 1.
        assert capture.assert_sequence_complete("pi-2", "env").count == 2
        with pytest.raises(AssertionError, match=r"2 missing \[1-2\]"):
            capture.assert_sequence_complete("pi-2", "env", start=1)
        # pi-3 runs 1, 2, 2: complete; a duplicate fails only when refused.
        assert capture.assert_sequence_complete("pi-3", "env", start=1).duplicates == {2: 2}
        with pytest.raises(AssertionError, match=r"1 duplicated \[2x2\]"):
            capture.assert_sequence_complete("pi-3", "env", allow_duplicates=False)
        with pytest.raises(AssertionError, match="no readings"):
            capture.assert_sequence_complete("pi-4", "env")


def test_a_repeated_seq_is_a_duplicate_not_a_gap() -> None:
    report = SequenceReport.of("d", "s", [1, 2, 2, 3])
    assert report.complete
    assert report.duplicates == {2: 2}
    assert "4 readings, seq 1..3, 0 missing [none], 1 duplicated [2x2]" in report.describe()
    empty = SequenceReport.of("d", "s", [], start=1)
    assert (empty.count, empty.first, empty.gaps) == (0, None, [])
    assert empty.describe() == "d/s: no readings"


def test_a_closed_capture_keeps_what_it_recorded(endpoint: MqttEndpoint) -> None:
    capture = Capture(endpoint, "c/#")
    publish(endpoint, "c/1", b"kept")
    capture.wait_for("c/1")
    capture.close()
    capture.close()
    assert [m.payload for m in capture.messages()] == [b"kept"]
    with pytest.raises(RuntimeError, match="closed"):
        capture.subscribe("d/#")


def test_credentials_travel_with_the_endpoint(endpoint: MqttEndpoint) -> None:
    # The test broker takes anonymous clients; a refused identity would need an ACL broker.
    # What matters here: a Capture connects through the endpoint's own paho client settings.
    with Capture(endpoint.as_user("someone", "secret"), "u/#") as capture:
        publish(endpoint, "u/1", b"x")
        assert capture.wait_for("u/1")[0].payload == b"x"
