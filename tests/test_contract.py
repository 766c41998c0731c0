"""The wire contract: topics round-trip through their parser, payloads are strictly validated."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgetwin.agent.contract import (
    MAX_INT,
    SCHEMA_VERSION,
    AppliedOutput,
    CommandRequest,
    CommandResponse,
    ContractError,
    DesiredConfig,
    DeviceState,
    FlatReading,
    OutputSettings,
    ParsedTopic,
    Presence,
    ReportedConfig,
    Source,
    Status,
    Telemetry,
    Topics,
    TwinSummary,
    Value,
)

ids = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,63}", fullmatch=True)


def telemetry(**overrides: object) -> dict[str, object]:
    base: dict[str, object] = {
        "v": 1,
        "device": "pi-01",
        "sensor": "env",
        "ts": 1_790_000_000.25,
        "seq": 7,
        "source": "emulated",
        "values": {"temperature": {"value": 21.5, "unit": "°C"}},
    }
    base.update(overrides)
    return base


@given(device=ids, sensor=ids)
def test_every_topic_parses_back_to_its_device_and_kind(device: str, sensor: str) -> None:
    topics = Topics()
    assert topics.parse(topics.status(device)) == ParsedTopic("status", device)
    assert topics.parse(topics.twin(device)) == ParsedTopic("twin", device)
    assert topics.parse(topics.state(device)) == ParsedTopic("state", device)
    assert topics.parse(topics.desired(device)) == ParsedTopic("desired", device)
    assert topics.parse(topics.reported(device)) == ParsedTopic("reported", device)
    assert topics.parse(topics.telemetry(device, sensor)) == ParsedTopic(
        "telemetry", device, sensor
    )
    assert topics.parse(topics.command(device, sensor)) == ParsedTopic(
        "command", device, name=sensor
    )
    assert topics.parse(topics.response(device, sensor)) == ParsedTopic(
        "response", device, name=sensor
    )


def test_labels_topic_is_part_of_the_contract() -> None:
    topics = Topics(prefix="plant")
    assert topics.labels() == "plant/labels"
    assert topics.parse("plant/labels") == ParsedTopic("labels", None)


def test_seed_template_moves_telemetry_only() -> None:
    topics = Topics(telemetry_template="sensors/{device_id}")
    assert topics.telemetry("device_003", "env") == "sensors/device_003"
    assert topics.parse("sensors/device_003") == ParsedTopic("telemetry", "device_003", None)
    assert topics.status("device_003") == "edgetwin/device_003/status"
    assert topics.all_telemetry() == "sensors/+"


def test_template_with_sensor_and_prefix() -> None:
    topics = Topics(prefix="plant", telemetry_template="{prefix}/data/{device_id}/{sensor}")
    assert topics.telemetry("a", "b") == "plant/data/a/b"
    assert topics.parse("plant/data/a/b") == ParsedTopic("telemetry", "a", "b")


def test_fixed_template_shares_one_topic_and_leaves_the_device_to_the_payload() -> None:
    """The original simulator's code publishes every device on `sensors/data`."""
    topics = Topics(telemetry_template="sensors/data")
    assert topics.telemetry("device_000", "env") == "sensors/data"
    assert topics.telemetry("device_001", "env") == "sensors/data"
    assert topics.all_telemetry() == "sensors/data"
    assert topics.parse("sensors/data") == ParsedTopic("telemetry", None, None)
    assert topics.parse("edgetwin/device_000/status") == ParsedTopic("status", "device_000")
    with pytest.raises(ContractError):
        topics.parse("sensors/other")
    by_sensor = Topics(telemetry_template="{prefix}/all/{sensor}")
    assert by_sensor.parse("edgetwin/all/env") == ParsedTopic("telemetry", None, "env")


def test_flat_reading_is_the_original_simulators_payload() -> None:
    body = {"device_id": "pi-01", "timestamp": 1_790_000_000.25, "temperature": 21.23}
    flat = FlatReading.decode(json.dumps({**body, "humidity": 48.0}))
    assert (flat.device_id, flat.temperature, flat.humidity) == ("pi-01", 21.23, 48.0)
    assert json.loads(flat.encode()) == {**body, "humidity": 48.0}
    with pytest.raises(ContractError):
        FlatReading.decode(json.dumps(body))  # humidity missing
    with pytest.raises(ContractError):
        FlatReading.decode(Telemetry.from_builtins(telemetry()).encode())


@pytest.mark.parametrize(
    "template", ["sensors/{device}", "sensors/#/{device_id}", "{device_id}/{what}", "", "$SYS/x"]
)
def test_bad_templates_are_refused(template: str) -> None:
    with pytest.raises(ContractError):
        Topics(telemetry_template=template)


@pytest.mark.parametrize(
    "topic",
    [
        "edgetwin/Pi/status",
        "edgetwin/pi/unknown",
        "other/pi/status",
        "edgetwin/pi/telemetry",
        "edgetwin/+/status",
    ],
)
def test_topics_outside_the_contract_are_refused(topic: str) -> None:
    with pytest.raises(ContractError):
        Topics().parse(topic)


def test_telemetry_round_trip() -> None:
    message = Telemetry.from_builtins(telemetry())
    assert Telemetry.decode(message.encode()) == message
    assert message.source is Source.EMULATED
    assert "anomaly" not in json.loads(message.encode())


@pytest.mark.parametrize(
    "change",
    [
        {"device": "Pi-01"},
        {"device": "a" * 65},
        {"seq": -1},
        {"seq": "7"},
        {"ts": 0},
        {"source": "made-up"},
        {"values": {}},
        {"values": {"temperature": {"value": "hot", "unit": "°C"}}},
        {"values": {"temperature": {"value": float("nan"), "unit": "°C"}}},
        {"v": 2},
        {"extra": 1},
    ],
)
def test_telemetry_rejects(change: dict[str, object]) -> None:
    raw = json.dumps(telemetry(**change)).encode()
    with pytest.raises(ContractError):
        Telemetry.decode(raw)


def test_decode_rejects_non_json() -> None:
    with pytest.raises(ContractError, match="invalid Status payload"):
        Status.decode(b"\xff not json")


@pytest.mark.parametrize(
    "document",
    [
        {"status": "rejected", "applied_version": 3, "rejected_version": 4},
        {"status": "applied", "applied_version": 3, "reason": "but why"},
        {"status": "applied", "applied_version": 3, "rejected_version": 2},
        {"status": "pending", "applied_version": 3},
    ],
)
def test_reported_documents_are_consistent(document: dict[str, object]) -> None:
    with pytest.raises(ContractError):
        ReportedConfig.decode(json.dumps({"device": "pi", "ts": 1.0, **document}).encode())


def test_reported_round_trip() -> None:
    rejected = ReportedConfig(
        device="pi", ts=1.0, status="rejected", applied_version=3, rejected_version=4, reason="old"
    )
    unversioned = ReportedConfig(
        device="pi", ts=1.0, status="rejected", applied_version=3, reason="not JSON"
    )
    applied = ReportedConfig(device="pi", ts=1.0, status="applied", applied_version=4)
    for document in (rejected, unversioned, applied):
        assert ReportedConfig.decode(document.encode()) == document


def test_other_documents_round_trip() -> None:
    documents = [
        Status(
            device="pi", state=Presence.ONLINE, ts=1.0, boot=3, agent_version="1.0", reason="birth"
        ),
        DesiredConfig.from_builtins(
            {"device": "pi", "version": 2, "sensors": {"env": {"driver": "bme280", "interval": 5}}}
        ),
        DeviceState.from_builtins(
            {
                "device": "pi",
                "ts": 1.0,
                "agent_version": "1",
                "uptime_s": 5,
                "sensors": {"env": {"health": "faulted", "backend": "real", "reason": "EIO"}},
            }
        ),
        TwinSummary.from_builtins(
            {
                "device": "pi",
                "ts": 1.0,
                "presence": "offline",
                "sensors": {"env": {"served_by": "simulation", "seq": 41}},
                "site": "greenhouse",
                "labels": {"room": "north"},
            }
        ),
    ]
    for document in documents:
        assert type(document).decode(document.encode()) == document


def test_documents_built_in_code_refuse_what_the_wire_cannot_carry() -> None:
    """Construction checks only what a decoder would never meet: a NaN would go out as null."""
    with pytest.raises(ValueError, match="finite"):
        Value(value=float("nan"), unit="°C")
    with pytest.raises(ValueError, match="finite"):
        Telemetry.from_builtins(telemetry()).replace(ts=float("inf"))
    with pytest.raises(ValueError, match="carries its reason"):
        ReportedConfig(device="pi", ts=1.0, status="rejected", applied_version=1)


def test_optional_fields_stay_off_the_wire_but_state_counters_do_not() -> None:
    assert "anomaly" not in json.loads(Telemetry.from_builtins(telemetry()).encode())
    state = DeviceState(device="pi", ts=1.0, agent_version="1", uptime_s=0.0, sensors={})
    assert json.loads(state.encode())["dropped"] == 0
    assert json.loads(state.encode())["v"] == SCHEMA_VERSION


# -- outputs -------------------------------------------------------------------------------------

RELAY = {"driver": "digital_output", "pin": 17, "value": 1}
FAN = {"driver": "pca9685", "channel": 3, "value": 0.35, "options": {"frequency": 50}}


def desired_document(**extra: object) -> dict[str, object]:
    return {"v": 1, "device": "pi", "version": 2, "sensors": {}, **extra}


def test_a_document_without_outputs_reads_and_writes_as_before_outputs() -> None:
    """Documents of gateways and agents older than outputs: no `outputs` key either way."""
    old = json.dumps(desired_document(sensors={"env": {"driver": "bme280"}})).encode()
    desired = DesiredConfig.decode(old)
    assert desired.outputs == {}
    assert "outputs" not in json.loads(desired.encode())
    reported = ReportedConfig.decode(
        json.dumps({"v": 1, "device": "pi", "ts": 1.0, "status": "applied", "applied_version": 2})
    )
    assert reported.outputs == {}
    assert "outputs" not in json.loads(reported.encode())


def test_outputs_round_trip_with_every_field_written_out() -> None:
    desired = DesiredConfig.decode(
        json.dumps(desired_document(outputs={"relay": RELAY, "fan": FAN})).encode()
    )
    assert desired.outputs["relay"].value == 1.0
    assert (desired.outputs["fan"].channel, desired.outputs["fan"].address) == (3, None)
    assert DesiredConfig.decode(desired.encode()) == desired
    written = json.loads(desired.encode())["outputs"]["relay"]
    assert written == {
        "driver": "digital_output",
        "value": 1.0,
        "pin": 17,
        "bus": 1,
        "address": None,
        "channel": None,
        "options": {},
        "backend": "auto",
    }
    reported = ReportedConfig(
        device="pi",
        ts=1.0,
        status="applied",
        applied_version=2,
        outputs={
            "relay": AppliedOutput(value=0.0, backend="emulated", reason="safe: crash recovery"),
            "fan": AppliedOutput(value=0.35009765625, backend="real"),
            "valve": AppliedOutput(value=None, reason="unavailable: GPIO4 is in use"),
        },
    )
    assert ReportedConfig.decode(reported.encode()) == reported
    assert "reason" not in json.loads(reported.encode())["outputs"]["fan"]


@pytest.mark.parametrize(
    ("output", "where"),
    [
        ({**RELAY, "value": True}, "Expected `float`, got `bool`"),
        ({**RELAY, "value": "1"}, "Expected `float`, got `str`"),
        ({"driver": "digital_output", "pin": 17}, "missing required field `value`"),
        ({**RELAY, "pin": 54}, "<= 53"),
        ({**RELAY, "colour": "red"}, "unknown field `colour`"),
        ({**FAN, "address": 0x80}, "<= 127"),
        ({**RELAY, "driver": "Relay"}, "driver"),
    ],
)
def test_outputs_that_break_the_schema_are_refused(output: dict[str, object], where: str) -> None:
    with pytest.raises(ContractError, match=where):
        DesiredConfig.decode(json.dumps(desired_document(outputs={"relay": output})).encode())
    with pytest.raises(ContractError, match="outputs"):
        DesiredConfig.decode(json.dumps(desired_document(outputs={"Relay/1": RELAY})).encode())


def test_an_output_value_built_in_code_must_be_finite() -> None:
    with pytest.raises(ValueError, match="finite"):
        OutputSettings(driver="pwm_output", pin=18, value=float("nan"))


def test_command_topics() -> None:
    topics = Topics(prefix="plant")
    assert topics.command("pi-1", "read_sensor") == "plant/pi-1/commands/read_sensor"
    assert topics.commands("pi-1") == "plant/pi-1/commands/+"
    assert topics.commands() == "plant/+/commands/+"
    assert topics.response("pi-1", "gw-a") == "plant/pi-1/responses/gw-a"
    assert topics.all_responses("gw-a") == "plant/+/responses/gw-a"
    for topic in ("plant/pi-1/commands/Read", "plant/pi-1/responses/a/b", "plant/pi-1/commands"):
        with pytest.raises(ContractError):
            topics.parse(topic)


def _request(**overrides: object) -> bytes:
    body = {"v": 1, "device": "pi-1", "id": "c-1", "deadline": 1_790_000_000.5, **overrides}
    return json.dumps(body).encode()


def test_command_requests_are_strictly_validated() -> None:
    request = CommandRequest.decode(_request(args={"sensor": "env", "n": 3, "x": 0.5, "on": True}))
    assert request.args == {"sensor": "env", "n": 3, "x": 0.5, "on": True}
    assert CommandRequest.decode(request.encode()) == request
    assert CommandRequest.decode(_request()).args == {}
    for bad in (
        {"id": "has space"},
        {"id": "x" * 65},
        {"deadline": 0},
        {"deadline": "soon"},
        {"args": {"nested": {"a": 1}}},
        {"args": {"Upper": 1}},
        {"args": {"big": MAX_INT + 1}},
        {"args": {f"a{i}": i for i in range(17)}},
        {"extra": 1},
    ):
        with pytest.raises(ContractError):
            CommandRequest.decode(_request(**bad))


def test_command_answers_carry_a_reason_unless_ok_and_keep_number_bounds() -> None:
    ok = CommandResponse(
        device="pi-1", id="c-1", name="diagnostics", status="ok", ts=1.0, result={"a": [1, None]}
    )
    assert CommandResponse.decode(ok.encode()) == ok
    failed = ok.replace(status="failed", result=None, reason="EIO")
    assert "result" not in json.loads(failed.encode())
    assert CommandResponse.decode(failed.encode()) == failed
    with pytest.raises(ValueError, match="reason"):
        ok.replace(status="rejected")
    with pytest.raises(ValueError, match="reason"):
        failed.replace(status="ok")
    with pytest.raises(ValueError, match="finite"):
        ok.replace(result={"deep": {"x": float("nan")}})
    with pytest.raises(ValueError, match="JSON has not"):
        ok.replace(result={"x": object()})
    too_big = json.loads(ok.encode())
    too_big["result"] = {"n": [MAX_INT + 1]}
    with pytest.raises(ContractError, match="outside"):
        CommandResponse.decode(json.dumps(too_big))
    deep: object = 1
    for _ in range(10):
        deep = [deep]
    too_deep = {**json.loads(ok.encode()), "result": {"d": deep}}
    with pytest.raises(ContractError, match="deeper"):
        CommandResponse.decode(json.dumps(too_deep))
