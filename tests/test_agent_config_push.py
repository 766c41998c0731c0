"""Desired configuration pushed by the gateway: applied live, refused with a reason, kept on disk.

The agent listens on its own `edgetwin/{device}/config/desired` only (retained, written by the
gateway) and answers on `edgetwin/{device}/config/reported` (retained). A good document replaces
the sensor set between two readings; a bad one is reported and the last good one keeps running.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgetwin.agent.config import AgentConfig, AgentSection, OutboxSettings
from edgetwin.agent.contract import (
    DesiredConfig,
    DeviceState,
    ReportedConfig,
    SensorSettings,
    Telemetry,
)
from edgetwin.agent.desired import (
    MAX_DESIRED_BYTES,
    AlreadyApplied,
    DesiredStore,
    Rejection,
    validate_desired,
)
from edgetwin.agent.runtime import Agent
from edgetwin.testing import agent as testing_agent
from edgetwin.testing.broker import Broker
from edgetwin.testing.capture import Capture, Message, publish
from edgetwin.testing.waiting import poll
from tests.conftest import BrokerFactory
from tests.fleet_helpers import agent_mqtt_settings, bme280, payload

pytestmark = pytest.mark.integration

DEVICE = "pi-config"
OTHER = "pi-other"
DESIRED = f"edgetwin/{DEVICE}/config/desired"
REPORTED = f"edgetwin/{DEVICE}/config/reported"
STATE = f"edgetwin/{DEVICE}/state"


def telemetry(sensor: str) -> str:
    return f"edgetwin/{DEVICE}/telemetry/{sensor}"


class RecordingMetrics:
    """An `AgentMetrics` that keeps what it is told: how each desired document fared."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._configs: list[str] = []

    @property
    def configs(self) -> list[str]:
        with self._lock:
            return list(self._configs)

    def config(self, outcome: str) -> None:
        with self._lock:
            self._configs.append(outcome)

    def reading(self, sensor: str, seconds: float) -> None:
        pass

    def sensor_error(self, sensor: str) -> None:
        pass

    def published(self, count: int = 1) -> None:
        pass

    def publish_failed(self, count: int = 1) -> None:
        pass

    def reconnected(self) -> None:
        pass

    def committed(self, seconds: float) -> None:
        pass

    def close(self) -> None:
        pass


def agent_config(broker: Broker, state_dir: Path) -> AgentConfig:
    return AgentConfig(
        # No gateway in these tests: no twin document to wait for at start.
        agent=AgentSection(device_id=DEVICE, state_dir=state_dir, shutdown_timeout=2, twin_wait=0),
        # The agent's own default session expiry (fleet_helpers' settings reset it to 0): the
        # broker keeps the subscription and queues documents while the agent is away.
        mqtt=agent_mqtt_settings(
            broker,
            keepalive=2,
            reconnect_min_delay=0.05,
            reconnect_max_delay=0.3,
            session_expiry=86_400,
        ),
        outbox=OutboxSettings(commit_interval=0.02),
        sensors={"env": bme280(0.05)},
    )


@contextmanager
def agent_thread(config: AgentConfig) -> Iterator[tuple[Agent, RecordingMetrics]]:
    metrics = RecordingMetrics()
    with testing_agent.agent_thread(config, metrics=metrics) as agent:
        yield agent, metrics


def desired(version: int, sensors: dict[str, SensorSettings], device: str = DEVICE) -> bytes:
    return DesiredConfig(device=device, version=version, sensors=sensors).encode()


def document(version: int, **sensors: dict[str, Any]) -> dict[str, Any]:
    """A desired document as plain JSON data, for the ones a model would refuse to build."""
    return {"v": 1, "device": DEVICE, "version": version, "sensors": sensors}


V1_SENSORS = {"env": bme280(0.1), "extra": bme280(0.05, address=0x77)}
V2_SENSORS = {"env": bme280(0.05), "extra": bme280(0.1, address=0x77)}
BME = {"driver": "bme280", "address": 0x76, "backend": "emulated"}


def reports(sub: Capture) -> list[ReportedConfig]:
    return [ReportedConfig.decode(m.payload) for m in sub.messages(REPORTED)]


def wait_report(sub: Capture, timeout: float = 5) -> ReportedConfig:
    return ReportedConfig.decode(sub.wait_for(REPORTED, timeout=timeout)[-1].payload)


def report_is(
    status: Literal["applied", "rejected"], version: int | None
) -> Callable[[Message], bool]:
    """Matches a report of `status` for `version` (applied_version, or rejected_version)."""

    def match(m: Message) -> bool:
        if m.topic != REPORTED:
            return False
        report = ReportedConfig.decode(m.payload)
        if report.status != status:
            return False
        return (report.applied_version if status == "applied" else report.rejected_version) == (
            version
        )

    return match


def seqs(sub: Capture, sensor: str) -> list[int]:
    return [Telemetry.decode(m.payload).seq for m in sub.messages(telemetry(sensor))]


def push_and_wait_applied(
    broker: Broker, sub: Capture, version: int, sensors: dict[str, SensorSettings]
) -> None:
    publish(broker, DESIRED, desired(version, sensors), retain=True)
    sub.wait_for(report_is("applied", version), timeout=5)


# -- a good document -------------------------------------------------------------------------


def test_valid_document_is_applied_without_restart(broker: Broker, tmp_path: Path) -> None:
    with (
        Capture(broker, f"edgetwin/{DEVICE}/#") as sub,
        agent_thread(agent_config(broker, tmp_path)) as (agent, _),
    ):
        sub.wait_for(telemetry("env"), count=3)
        publish(broker, DESIRED, desired(1, V1_SENSORS), retain=True)
        report = ReportedConfig.decode(sub.wait_for(report_is("applied", 1))[0].payload)
        extra = sub.wait_for(telemetry("extra"), count=3)
        states = sub.wait_for(
            lambda m: m.topic == STATE and "extra" in DeviceState.decode(m.payload).sensors
        )
        env_before = len(seqs(sub, "env"))
        sub.wait_for(telemetry("env"), count=env_before + 3)
        assert set(agent.slots) == {"env", "extra"}
        assert agent.slots["env"].settings.interval == 0.1

    assert report.device == DEVICE
    assert (report.status, report.applied_version) == ("applied", 1)
    assert report.reason is None
    assert report.rejected_version is None
    assert Telemetry.decode(extra[0].payload).values["temperature"].unit == "°C"
    state = DeviceState.decode(states[-1].payload)
    assert set(state.sensors) == {"env", "extra"}
    assert state.sensors["extra"].health == "ok"
    # The changed sensor was reopened, but its stream goes on: seq has no gap, no restart.
    # (Sorted: a reading stored before the first CONNACK is backlog, sent after the first
    # live one, as the outbox sends fresh readings first.)
    env = sorted(seqs(sub, "env"))
    assert env == list(range(1, len(env) + 1))
    births = [
        m for m in sub.messages(f"edgetwin/{DEVICE}/status") if payload(m)["state"] == "online"
    ]
    assert len(births) == 1
    # Persisted for the next boot, and retained for the gateway.
    assert DesiredStore(tmp_path / "desired.json").load(DEVICE) == DesiredConfig.decode(
        desired(1, V1_SENSORS)
    )
    with Capture(broker, REPORTED) as late:
        retained = late.wait_for(lambda m: m.retain)
    assert ReportedConfig.decode(retained[0].payload).applied_version == 1


# -- bad documents -----------------------------------------------------------------------------


def raw(data: dict[str, Any]) -> bytes:
    return json.dumps(data).encode()


# (label, payload, rejected_version, a fragment of the reason)
BAD_DOCUMENTS: list[tuple[str, bytes, int | None, str]] = [
    ("not JSON", b"{this is not json", None, "JSON is malformed"),
    ("not UTF-8", b"\xff\xfe\x00garbage", None, "invalid DesiredConfig payload"),
    ("a JSON array", b"[1, 2, 3]", None, "Expected `object`, got `array`"),
    (
        "oversized",
        raw(document(5, env={**BME, "options": {"note": "x" * MAX_DESIRED_BYTES}})),
        None,
        f"exceeds {MAX_DESIRED_BYTES}",
    ),
    ("deeply nested", b"[" * 50_000, None, "invalid DesiredConfig payload"),
    ("another device", desired(5, V1_SENSORS, device=OTHER), 5, f"for device {OTHER!r}"),
    ("equal version, other content", desired(2, V1_SENSORS), 2, "already applied"),
    ("older version", desired(1, V1_SENSORS), 1, "applied version 2"),
    ("unknown field", raw({**document(6, env=BME), "colour": "red"}), 6, "colour"),
    ("unknown sensor field", raw(document(7, env={**BME, "gain_typo": 2})), 7, "gain_typo"),
    (
        "zero interval",
        raw(document(8, env={**BME, "interval": 0})),
        8,
        "sensor 'env': invalid SensorSettings: Expected `float` > 0.0",
    ),
    ("negative interval", raw(document(8, env={**BME, "interval": -5})), 8, "> 0.0"),
    ("bad driver name", raw(document(9, env={**BME, "driver": "BME-280"})), 9, "driver"),
    ("bad sensor name", raw(document(9, **{"Env/1": BME})), 9, "sensor 'Env/1'"),
    ("version as text", raw({**document(1, env=BME), "version": "10"}), None, "version"),
    ("version zero", raw(document(0, env=BME)), 0, "Expected `int` >= 1 - at `$.version`"),
]


def test_bad_documents_are_rejected_and_the_last_good_one_keeps_running(
    broker: Broker, tmp_path: Path
) -> None:
    with (
        Capture(broker, f"edgetwin/{DEVICE}/#") as sub,
        agent_thread(agent_config(broker, tmp_path)) as (agent, _),
    ):
        push_and_wait_applied(broker, sub, 1, V1_SENSORS)
        push_and_wait_applied(broker, sub, 2, V2_SENSORS)
        for label, bad, rejected_version, reason in BAD_DOCUMENTS:
            sub.clear()
            publish(broker, DESIRED, bad, retain=True)
            report = wait_report(sub)
            assert report.status == "rejected", label
            assert report.applied_version == 2, label
            assert report.rejected_version == rejected_version, label
            assert report.reason is not None
            assert reason in report.reason, f"{label}: {report.reason}"
            assert len(report.reason) <= 1024, label
            assert len(reports(sub)) == 1, f"{label}: one report per document"
        # A cleared retained document (empty payload) asks for nothing and gets no report: the
        # next document's report is the first to arrive.
        sub.clear()
        publish(broker, DESIRED, b"", retain=True)
        publish(broker, DESIRED, desired(1, V1_SENSORS), retain=True)
        wait_report(sub)
        assert [(r.status, r.rejected_version) for r in reports(sub)] == [("rejected", 1)]
        # Still running version 2, still publishing every sensor of it.
        sub.clear()
        sub.wait_for(telemetry("env"), count=5)
        sub.wait_for(telemetry("extra"), count=3)
        assert agent.applied_version == 2
        assert {name: slot.settings for name, slot in agent.slots.items()} == V2_SENSORS
    assert DesiredStore(tmp_path / "desired.json").load(DEVICE) == DesiredConfig.decode(
        desired(2, V2_SENSORS)
    )
    with Capture(broker, REPORTED) as late:
        last = ReportedConfig.decode(late.wait_for(lambda m: m.retain)[0].payload)
    assert (last.status, last.applied_version, last.rejected_version) == ("rejected", 2, 1)


@pytest.mark.parametrize(
    ("ghost", "reason"),
    [
        ({"driver": "nosuch", "interval": 0.05}, "no driver named 'nosuch'"),
        ({"driver": "bme280", "address": 0x40, "interval": 0.05}, "bme280 cannot be at 0x40"),
        ({"driver": "ds18b20", "address": 0x40, "interval": 0.05}, "takes no I2C address"),
    ],
)
def test_sensor_settings_that_can_never_work_are_rejected(
    broker: Broker, tmp_path: Path, ghost: dict[str, object], reason: str
) -> None:
    """A well-formed document naming an unknown driver or an impossible address is refused,
    not applied as a sensor that would stay missing for ever; the last good config runs on."""
    settings = SensorSettings.from_builtins({**ghost, "backend": "emulated"})
    with (
        Capture(broker, f"edgetwin/{DEVICE}/#") as sub,
        agent_thread(agent_config(broker, tmp_path)) as (agent, _),
    ):
        sub.wait_for(telemetry("env"), count=2)
        publish(broker, DESIRED, desired(1, {"env": bme280(0.05), "ghost": settings}), retain=True)
        report = ReportedConfig.decode(sub.wait_for(report_is("rejected", 1))[0].payload)
        sub.clear()
        sub.wait_for(telemetry("env"), count=5)
        assert agent.applied_version == 0
        assert "ghost" not in agent.slots
    assert report.rejected_version == 1
    assert report.reason is not None
    assert reason in report.reason


# -- offline pushes and boots without a broker ---------------------------------------------------


def test_document_pushed_while_offline_is_applied_once_at_start(
    broker: Broker, tmp_path: Path
) -> None:
    config = agent_config(broker, tmp_path)
    # A rejected document after the one under test is a barrier: documents are handled in
    # order, so every report caused by the earlier one has arrived once the barrier's has.
    barrier = desired(99, V1_SENSORS, device=OTHER)
    publish(broker, DESIRED, desired(1, V1_SENSORS), retain=True)
    with Capture(broker, f"edgetwin/{DEVICE}/#") as sub:
        with agent_thread(config) as (agent, metrics):
            sub.wait_for(report_is("applied", 1))
            sub.wait_for(telemetry("extra"), count=3)
            publish(broker, DESIRED, barrier, retain=True)
            sub.wait_for(report_is("rejected", 99))
            first_run = reports(sub)
            assert metrics.configs == ["applied", "rejected"]
            assert set(agent.slots) == {"env", "extra"}

        # Offline again: the gateway writes version 2. The agent's session is persistent, so
        # the broker both queues the message for it and replays the retained one on subscribe.
        publish(broker, DESIRED, desired(2, V2_SENSORS), retain=True)
        sub.clear()
        with agent_thread(config) as (agent, metrics):
            sub.wait_for(report_is("applied", 2))
            publish(broker, DESIRED, barrier, retain=True)
            sub.wait_for(report_is("rejected", 99))
            second_run = reports(sub)
            assert metrics.configs == ["applied", "rejected"], "version 2 applied exactly once"
            assert {name: slot.settings for name, slot in agent.slots.items()} == V2_SENSORS

    assert [(r.status, r.applied_version) for r in first_run] == [
        ("applied", 1),
        ("rejected", 1),
    ]
    # The boot restates what runs (version 1 from disk), then version 2 is applied once; no
    # duplicate delivery of the same document turns into a rejection.
    assert [(r.status, r.applied_version) for r in second_run] == [
        ("applied", 1),
        ("applied", 2),
        ("rejected", 2),
    ]


def test_redelivered_document_is_not_rejected(
    broker_factory: BrokerFactory, tmp_path: Path
) -> None:
    """A retained document comes again at every (re)subscription, here after a broker restart.
    What already runs is no news, and must not be reported as a rejection."""
    broker = broker_factory(persistence=True)  # keeps the retained document across the restart
    with (
        Capture(broker, f"edgetwin/{DEVICE}/#") as sub,
        agent_thread(agent_config(broker, tmp_path)) as (agent, metrics),
    ):
        push_and_wait_applied(broker, sub, 1, V1_SENSORS)
        broker.restart()
        poll(lambda: agent.link.connect_count >= 2 and agent.link.connected, 10, what="reconnect")
        publish(broker, DESIRED, desired(99, V1_SENSORS, device=OTHER), retain=True)
        with Capture(broker, REPORTED) as after:
            after.wait_for(report_is("rejected", 99))
        assert metrics.configs == ["applied", "rejected"], "the redelivery was handled as news"
        assert agent.applied_version == 1


def test_last_applied_document_runs_at_boot_without_broker(broker: Broker, tmp_path: Path) -> None:
    config = agent_config(broker, tmp_path)
    with Capture(broker, f"edgetwin/{DEVICE}/#") as sub, agent_thread(config):
        push_and_wait_applied(broker, sub, 1, V1_SENSORS)
    broker.stop()
    with agent_thread(config) as (agent, _):
        poll(lambda: agent.readings >= 10, 10, what="readings without a broker")
        assert not agent.link.connected
        assert agent.applied_version == 1
        assert {name: slot.settings for name, slot in agent.slots.items()} == V1_SENSORS
        assert all(slot.sensor is not None for slot in agent.slots.values())


def test_documents_for_other_devices_are_never_seen(broker: Broker, tmp_path: Path) -> None:
    other_topic = f"edgetwin/{OTHER}/config/desired"
    publish(broker, other_topic, desired(1, V1_SENSORS, device=OTHER), retain=True)
    with (
        Capture(broker, ["edgetwin/+/config/reported", telemetry("#")]) as sub,
        agent_thread(agent_config(broker, tmp_path)) as (agent, metrics),
    ):
        sub.wait_for(telemetry("env"))
        # Live too, and one with this device's own id inside: the topic alone decides.
        publish(broker, other_topic, desired(2, V1_SENSORS, device=OTHER), retain=True)
        publish(broker, other_topic, desired(3, V1_SENSORS), retain=True)
        push_and_wait_applied(broker, sub, 1, {"env": bme280(0.05)})
        assert metrics.configs == ["applied"], "only this device's own document was handled"
        assert agent.link.unsolicited == 0, "the broker sent nothing outside the subscription"
        assert agent.applied_version == 1
    assert [m.topic for m in sub.messages("edgetwin/+/config/reported")] == [REPORTED]


# -- validate_desired on anything ----------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
sensor_fields = st.dictionaries(
    st.sampled_from(
        ["driver", "interval", "bus", "address", "pins", "device", "options", "backend", "x"]
    ),
    st.sampled_from(["bme280", "nosuch", "BME", "", "emulated", "auto"])
    | st.floats(min_value=-10, max_value=100_000)
    | st.integers(min_value=-5, max_value=300)
    | st.dictionaries(st.sampled_from(["pin", "echo", "Bad"]), st.integers(-1, 60), max_size=2)
    | json_values,
    max_size=6,
)
documents = st.dictionaries(
    st.sampled_from(["v", "device", "version", "sensors", "extra"]),
    st.sampled_from([DEVICE, OTHER, "", "PI", 1])
    | st.integers(min_value=-3, max_value=8)
    | st.dictionaries(st.sampled_from(["env", "extra", "Bad/name", ""]), sensor_fields, max_size=3)
    | json_values,
    max_size=5,
)


def check_outcome(payload_bytes: bytes, applied: int) -> None:
    """What the agent relies on: a DesiredConfig for it, newer than what runs, the running
    version again (AlreadyApplied), or a Rejection it can always put in a report."""
    rejection: Rejection | None = None
    try:
        result = validate_desired(payload_bytes, DEVICE, applied)
    except AlreadyApplied:
        assert DesiredConfig.decode(payload_bytes).version == applied
        return
    except Rejection as exc:
        rejection = exc
    if rejection is None:
        assert isinstance(result, DesiredConfig)
        assert result.device == DEVICE
        assert result.version > applied
        return
    assert rejection.reason
    version = rejection.version
    assert version is None or (isinstance(version, int) and version >= 0)
    ReportedConfig(  # what the agent publishes; building it must not fail either
        device=DEVICE,
        ts=1.0,
        status="rejected",
        applied_version=applied,
        rejected_version=version,
        reason=rejection.reason[:1024],
    )


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=512), applied=st.integers(min_value=0, max_value=5))
def test_any_bytes_validate_or_are_rejected(data: bytes, applied: int) -> None:
    check_outcome(data, applied)


@settings(max_examples=200, deadline=None)
@given(doc=documents, applied=st.integers(min_value=0, max_value=5))
def test_any_json_document_validates_or_is_rejected(doc: dict[str, Any], applied: int) -> None:
    check_outcome(json.dumps(doc).encode(), applied)


@settings(max_examples=100, deadline=None)
@given(value=json_values, applied=st.integers(min_value=0, max_value=5))
def test_any_json_value_validates_or_is_rejected(value: object, applied: int) -> None:
    check_outcome(json.dumps(value).encode(), applied)


@given(
    version=st.integers(min_value=1, max_value=10),
    applied=st.integers(min_value=0, max_value=10),
    same_content=st.booleans(),
)
def test_a_valid_document_is_accepted_exactly_when_newer(
    version: int, applied: int, same_content: bool
) -> None:
    data = desired(version, V1_SENSORS)
    running = (
        DesiredConfig(
            device=DEVICE, version=applied, sensors=V1_SENSORS if same_content else V2_SENSORS
        )
        if applied
        else None
    )
    if version > applied:
        assert validate_desired(data, DEVICE, applied, running).version == version
    elif version == applied and same_content:
        with pytest.raises(AlreadyApplied):
            validate_desired(data, DEVICE, applied, running)
    else:
        with pytest.raises(Rejection) as info:
            validate_desired(data, DEVICE, applied, running)
        assert info.value.version == version


@pytest.mark.parametrize("depth", [1_000, 50_000])
def test_deeply_nested_json_is_a_rejection(depth: int) -> None:
    for payload_bytes in (b"[" * depth, b'{"a":' * depth, b"[" * depth + b"]" * depth):
        with pytest.raises(Rejection) as info:
            validate_desired(payload_bytes[:MAX_DESIRED_BYTES], DEVICE, 0)
        assert info.value.version is None
