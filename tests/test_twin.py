"""The gateway twin against a real broker and real agents: config push, failover, restart."""

from __future__ import annotations

import errno
import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from edgetwin.agent.config import AgentConfig, AgentSection
from edgetwin.agent.contract import (
    DesiredConfig,
    Presence,
    RebirthRequest,
    ReportedConfig,
    SensorSettings,
    Status,
    Telemetry,
    TwinSummary,
    twin_index_shard,
)
from edgetwin.agent.runtime import Agent
from edgetwin.gateway.app import create_app
from edgetwin.gateway.broker import MosquittoBroker
from edgetwin.gateway.config import ApiSection, GatewayConfig, ManifestDevice
from edgetwin.hardware import EmulatedBackend
from edgetwin.testing import agent as testing_agent
from edgetwin.testing.agent import EmulatedAgent
from edgetwin.testing.broker import Broker
from edgetwin.testing.capture import (
    BrokerAddress,
    Capture,
    Message,
    as_endpoint,
    connect_client,
    disconnect_client,
    publish,
)
from edgetwin.testing.waiting import poll
from tests.fleet_helpers import agent_mqtt_settings, bme280, mqtt_settings, one_bme280, payload

pytestmark = pytest.mark.integration

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
DEVICE = "greenhouse-01"
INTERVAL = 0.2


def gateway_config(broker: BrokerAddress, *devices: ManifestDevice) -> GatewayConfig:
    return GatewayConfig.from_builtins(
        {
            "mqtt": mqtt_settings(
                broker, keepalive=2, reconnect_min_delay=0.1, reconnect_max_delay=0.5
            ),
            "presence": {"startup_grace": 0.3},
            "api": {"token": TOKEN},
            "devices": list(devices),
        }
    )


def two_sensors() -> dict[str, SensorSettings]:
    return {"env": bme280(INTERVAL), "outdoor": bme280(INTERVAL, address=0x77)}


@contextmanager
def gateway(config: GatewayConfig) -> Iterator[TestClient]:
    with TestClient(create_app(config)) as client:
        yield client


@contextmanager
def agent_thread(
    broker: BrokerAddress,
    state_dir: Path,
    sensors: dict[str, SensorSettings],
    backend: EmulatedBackend | None = None,
) -> Iterator[Agent]:
    config = AgentConfig(
        agent=AgentSection(device_id=DEVICE, state_dir=state_dir, state_interval=0.5),
        mqtt=agent_mqtt_settings(
            broker, keepalive=2, reconnect_min_delay=0.1, reconnect_max_delay=0.5
        ),
        sensors=sensors,
    )
    with testing_agent.agent_thread(config, emulated_backend=backend) as agent:
        yield agent


def twin(client: TestClient, device: str = DEVICE) -> dict[str, Any]:
    response = client.get(f"/devices/{device}")
    assert response.status_code == 200, response.text
    view: dict[str, Any] = response.json()
    return view


def seq_of(message: Message) -> int:
    return Telemetry.decode(message.payload).seq


def telemetry_from(source: str, sensor: str | None = None) -> Callable[[Message], bool]:
    def match(message: Message) -> bool:
        if "/telemetry/" not in message.topic:
            return False
        body = payload(message)
        return body["source"] == source and (sensor is None or body["sensor"] == sensor)

    return match


def test_config_push_round_trip_and_conflicts(broker: Broker, tmp_path: Path) -> None:
    manifest = ManifestDevice(id=DEVICE, sensors={"env": bme280(INTERVAL)})
    with (
        gateway(gateway_config(broker, manifest)) as client,
        agent_thread(broker, tmp_path, {"env": bme280(INTERVAL)}),
    ):
        poll(lambda: twin(client)["presence"] == "online", 10, what="agent online")
        first = client.patch(
            f"/devices/{DEVICE}/desired",
            json={
                "sensors": {"outdoor": {"driver": "bme280", "address": 0x77, "interval": INTERVAL}}
            },
            headers={**AUTH, "If-Match": '"0"'},
        )
        assert first.status_code == 200, first.text
        assert first.headers["ETag"] == '"1"'
        assert sorted(first.json()["sensors"]) == ["env", "outdoor"]
        poll(lambda: twin(client)["config"] == "in_sync", 10, what="agent applied version 1")
        view = twin(client)
        assert view["applied_version"] == 1
        assert view["delta"] == {}
        poll(
            lambda: "outdoor" in (twin(client)["state"] or {}).get("sensors", {}),
            10,
            what="new sensor running",
        )

        stale = client.patch(
            f"/devices/{DEVICE}/desired",
            json={"sensors": {"env": {"interval": 1}}},
            headers={**AUTH, "If-Match": '"0"'},
        )
        assert stale.status_code == 409
        assert "version 1" in stale.json()["detail"]
        stale_body = client.put(
            f"/devices/{DEVICE}/desired", json={"sensors": {}, "version": 0}, headers=AUTH
        )
        assert stale_body.status_code == 409
        removed = client.patch(
            f"/devices/{DEVICE}/desired",
            json={"sensors": {"outdoor": None}},
            headers={**AUTH, "If-Match": '"1"'},
        )
        assert removed.status_code == 200
        assert list(removed.json()["sensors"]) == ["env"]
        poll(lambda: twin(client)["applied_version"] == 2, 10, what="agent applied version 2")
        invalid = client.patch(
            f"/devices/{DEVICE}/desired", json={"sensors": {"env": {"interval": -1}}}, headers=AUTH
        )
        assert invalid.status_code == 422


def test_desired_pushed_while_offline_is_applied_once_on_start(
    broker: Broker, tmp_path: Path
) -> None:
    manifest = ManifestDevice(id=DEVICE, sensors={"env": bme280(INTERVAL)})
    with gateway(gateway_config(broker, manifest)) as client:
        for interval in (0.5, 0.3):
            response = client.put(
                f"/devices/{DEVICE}/desired",
                json={"sensors": {"env": {"driver": "bme280", "interval": interval}}},
                headers=AUTH,
            )
            assert response.status_code == 200
        assert twin(client)["config"] == "pending"
        # The agent is offline only if version 2 is on the broker before it connects.
        with Capture(broker, f"edgetwin/{DEVICE}/config/desired") as desired:
            desired.wait_for(lambda m: payload(m)["version"] == 2, timeout=5)
        with Capture(broker, f"edgetwin/{DEVICE}/config/reported") as reports:
            with agent_thread(broker, tmp_path, {"env": bme280(1.0)}) as agent:
                poll(lambda: twin(client)["config"] == "in_sync", 10, what="in sync")
                assert agent.applied_version == 2
                assert agent.slots["env"].settings.interval == 0.3
                reports.wait_for(lambda m: bool(m.payload), timeout=5)
            applied = [ReportedConfig.decode(m.payload) for m in reports.messages() if m.payload]
    assert [r.applied_version for r in applied if r.status == "applied"] == [2]
    assert not [r for r in applied if r.status == "rejected"]


def test_failover_on_kill_and_failback_keep_one_numbering(broker: Broker, tmp_path: Path) -> None:
    manifest = ManifestDevice(id=DEVICE, sensors={"env": bme280(INTERVAL)})
    config = {**one_bme280(DEVICE, INTERVAL), "mqtt": {"keepalive": 1}}
    with (
        Capture(broker, f"edgetwin/{DEVICE}/telemetry/env") as sub,
        gateway(gateway_config(broker, manifest)) as client,
        EmulatedAgent(as_endpoint(broker), config, mode="process") as agent,
    ):
        sub.wait_for(telemetry_from("emulated"), count=5, timeout=15)
        agent.kill()
        killed = time.monotonic()
        taken_over = sub.wait_for(
            lambda m: telemetry_from("simulated")(m) and m.received_at > killed,
            count=5,
            timeout=10,
        )
        failover_s = taken_over[0].received_at - killed
        agent.start(wait=False)
        restarted_at = time.monotonic()
        try:
            simulated_last = max(
                seq_of(m) for m in sub.messages() if telemetry_from("simulated")(m)
            )
            # New readings of the second run, not the first run's unacknowledged ones again.
            back = sub.wait_for(
                lambda m: telemetry_from("emulated")(m) and seq_of(m) > simulated_last,
                count=5,
                timeout=15,
            )
            poll(
                lambda: twin(client)["sensors"]["env"]["served_by"] == "agent",
                5,
                what="twin shows the agent",
            )
        finally:
            stopped = time.monotonic()  # from here the agent says goodbye and simulation resumes
            agent.stop()
        assert agent.exit_code == 0, agent.log_text()
    messages = sub.messages()
    seqs = [seq_of(m) for m in messages]
    assert sorted(set(seqs)) == list(range(min(seqs), max(seqs) + 1)), "a gap in the numbering"
    # Failback: once the agent's first new reading is out, the simulation is silent within an
    # interval (a reading may already be on its way).
    agent_back = back[0].received_at
    late_simulated = [
        m
        for m in messages
        if telemetry_from("simulated")(m) and agent_back + INTERVAL < m.received_at < stopped
    ]
    assert late_simulated == []
    # The simulation carried on the agent's numbering, and the agent carried on the simulation's.
    simulated_seqs = [
        seq_of(m) for m in messages if telemetry_from("simulated")(m) and m.received_at < stopped
    ]
    first_of_second_run = min(
        seq_of(m)
        for m in messages
        if telemetry_from("emulated")(m)
        and m.received_at > restarted_at
        and seq_of(m) > max(simulated_seqs) - 5
    )
    assert first_of_second_run == max(simulated_seqs) + 1, (
        "the agent did not carry on the numbering"
    )
    print(f"failover {failover_s:.2f} s after SIGKILL (keepalive 1 s)")
    assert failover_s < 5


def test_only_the_faulted_sensor_is_simulated(broker: Broker, tmp_path: Path) -> None:
    manifest = ManifestDevice(id=DEVICE, sensors=two_sensors())
    backend = EmulatedBackend()
    with (
        Capture(broker, f"edgetwin/{DEVICE}/telemetry/+") as sub,
        gateway(gateway_config(broker, manifest)) as client,
        agent_thread(broker, tmp_path, two_sensors(), backend=backend),
    ):
        poll(
            lambda: twin(client)["presence"] == "online" and not twin(client)["simulated"],
            10,
            what="agent serves all",
        )
        backend.i2c_bus(1).unplug(0x77)
        poll(
            lambda: twin(client)["sensors"]["outdoor"]["served_by"] == "simulation",
            10,
            what="outdoor simulated",
        )
        unplugged = time.monotonic()
        sub.wait_for(
            lambda m: telemetry_from("simulated", "outdoor")(m) and m.received_at > unplugged,
            count=3,
            timeout=10,
        )
        view = twin(client)
        assert view["sensors"]["env"]["served_by"] == "agent"
        assert view["sensors"]["env"]["source"] == "agent-emulation"
        assert not [m for m in sub.messages() if telemetry_from("simulated", "env")(m)]
        assert sub.wait_for(
            lambda m: telemetry_from("emulated", "env")(m) and m.received_at > unplugged, count=3
        )
        backend.i2c_bus(1).replug(0x77)
        poll(
            lambda: twin(client)["sensors"]["outdoor"]["served_by"] == "agent",
            10,
            what="outdoor back with the agent",
        )
        replugged = time.monotonic()
        sub.wait_for(
            lambda m: telemetry_from("emulated", "outdoor")(m) and m.received_at > replugged,
            count=2,
            timeout=10,
        )


def test_restarted_gateway_rebuilds_the_twin_from_the_broker(broker: Broker) -> None:
    added = {
        "id": "added-later",
        "site": "lab",
        "labels": {"rack": "3"},
        "sensors": {"env": {"driver": "bme280", "interval": 1}},
    }
    with gateway(gateway_config(broker)) as first:
        response = first.post("/devices", json=added, headers=AUTH)
        assert response.status_code == 201, response.text
        assert first.post("/devices", json=added, headers=AUTH).status_code == 409
        poll(lambda: twin(first, "added-later")["simulated"], 5, what="simulated")
    with gateway(gateway_config(broker)) as second:
        poll(
            lambda: second.get("/devices/added-later").status_code == 200,
            5,
            what="device known again",
        )
        poll(lambda: twin(second, "added-later")["desired_version"] == 1, 5, what="desired rebuilt")
        view = twin(second, "added-later")
        assert view["in_manifest"] is True
        assert (view["site"], view["labels"]) == ("lab", {"rack": "3"})
        poll(lambda: twin(second, "added-later")["simulated"], 5, what="simulated again")
        poll(
            lambda: twin(second, "added-later")["sensors"]["env"]["last"] is not None,
            5,
            what="simulated reading recorded in the twin",
        )
        last = twin(second, "added-later")["sensors"]["env"]["last"]
        assert last["source"] == "simulated"
        assert last["values"]["temperature"][1] == "°C"
        assert second.delete("/devices/added-later", headers=AUTH).status_code == 204
        assert second.delete("/devices/added-later", headers=AUTH).status_code == 404
        assert "added-later" not in [d["id"] for d in second.get("/devices").json()]
    with gateway(gateway_config(broker)) as third:
        poll(lambda: third.get("/health").json()["mqtt_connected"], 5, what="connected")
        assert third.get("/devices/added-later").status_code == 404


def test_labels_that_do_not_fit_the_twin_document_get_422(broker: Broker) -> None:
    with gateway(gateway_config(broker)) as client:
        bad = client.post("/devices", json={"id": "x1", "labels": {"not a key": "v"}}, headers=AUTH)
        assert bad.status_code == 422
        assert client.get("/devices/x1").status_code == 404


def test_writes_need_the_token(broker: Broker) -> None:
    body = {"id": "x1", "sensors": {}}
    with gateway(gateway_config(broker)) as client:
        missing = client.post("/devices", json=body)
        assert missing.status_code == 401
        assert missing.headers["WWW-Authenticate"] == "Bearer"
        assert (
            client.post("/devices", json=body, headers={"Authorization": "Bearer nope"}).status_code
            == 403
        )
        assert client.get("/devices").status_code == 200  # reads are open
    no_token = gateway_config(broker).replace(api=ApiSection())
    with gateway(no_token) as client:
        refused = client.post("/devices", json=body, headers=AUTH)
        assert refused.status_code == 403
        assert "no API token" in refused.json()["detail"]


def test_unplugged_chip_reason_reaches_the_twin(broker: Broker, tmp_path: Path) -> None:
    backend = EmulatedBackend()
    manifest = ManifestDevice(id=DEVICE, sensors={"env": bme280(INTERVAL)})
    with (
        gateway(gateway_config(broker, manifest)) as client,
        agent_thread(broker, tmp_path, {"env": bme280(INTERVAL)}, backend=backend),
    ):
        poll(lambda: twin(client)["presence"] == "online", 10, what="online")
        backend.i2c_bus(1).inject_error(0x76, errno.EIO, count=1000)
        poll(
            lambda: (
                (twin(client)["state"] or {}).get("sensors", {}).get("env", {}).get("health")
                == "faulted"
            ),
            10,
            what="faulted",
        )
        assert "Input/output error" in twin(client)["state"]["sensors"]["env"]["reason"]


def test_rejection_reaches_the_api_with_its_reason(broker: Broker, tmp_path: Path) -> None:
    manifest = ManifestDevice(id=DEVICE, sensors={"env": bme280(INTERVAL)})
    with (
        gateway(gateway_config(broker, manifest)) as client,
        agent_thread(broker, tmp_path, {"env": bme280(INTERVAL)}),
    ):
        poll(lambda: twin(client)["presence"] == "online", 10, what="agent online")
        response = client.put(
            f"/devices/{DEVICE}/desired",
            json={"sensors": {"env": {"driver": "bme280", "address": 0x40, "interval": 1}}},
            headers=AUTH,
        )
        assert response.status_code == 200
        poll(lambda: twin(client)["config"] == "rejected", 10, what="rejection reported")
        view = twin(client)
    assert view["reported"]["rejected_version"] == 1
    assert "cannot be at 0x40" in view["reported"]["reason"]
    assert view["applied_version"] == 0
    assert view["delta"]["desired_version"] == 1


# -- presence after a broker crash ---------------------------------------------------------------


def test_agents_lost_with_a_broker_crash_are_simulated_after_it(tmp_path: Path) -> None:
    """The broker dies (SIGKILL) and the agent with it: no last will is ever published, and
    the restarted broker replays the agent's retained birth. The gateway asks every agent to
    speak up after it reconnects; this one stays silent, so its sensor is simulated, its
    numbering carried on from the last reading the gateway saw."""
    crashing = MosquittoBroker(persistence=True).start()
    try:
        manifest = ManifestDevice(id=DEVICE, sensors={"env": bme280(INTERVAL)})
        with gateway(gateway_config(crashing, manifest)) as client:
            with agent_thread(crashing, tmp_path, {"env": bme280(INTERVAL)}):
                poll(
                    lambda: (twin(client)["sensors"]["env"]["last"] or {}).get("seq", 0) >= 3,
                    timeout=10,
                    what="the agent's readings in the twin",
                )
                crashing.kill()
            last_seen = twin(client)["sensors"]["env"]["last"]
            assert last_seen["source"] == "emulated"
            assert twin(client)["presence"] == "online"  # nothing has told the gateway yet
            crashing.start()
            with Capture(crashing, f"edgetwin/{DEVICE}/#") as sub:
                # The retained birth is back, and no will ever came.
                [status] = sub.wait_for(f"edgetwin/{DEVICE}/status", timeout=10)
                assert status.retain
                assert payload(status)["state"] == "online"
                [first] = sub.wait_for(telemetry_from("simulated"), timeout=10)[:1]
            view = twin(client)
        assert seq_of(first) == last_seen["seq"] + 1
        assert view["presence"] == "offline"
        assert view["served_by"] == "simulation"
    finally:
        crashing.close()


def test_a_live_agent_answers_the_gateways_rebirth_request(broker: Broker, tmp_path: Path) -> None:
    with (
        agent_thread(broker, tmp_path, {"env": bme280(INTERVAL)}) as agent,
        Capture(broker, f"edgetwin/{DEVICE}/status") as sub,
    ):
        sub.wait_for(timeout=10)
        sub.clear()
        publish(broker, "edgetwin/rebirth", RebirthRequest(ts=time.time()).encode())
        [answer] = sub.wait_for(timeout=10)
        assert not answer.retain  # heard live, not replayed
        status = Status.decode(answer.payload)
        assert (status.state, status.boot, status.reason) == ("online", agent.boot, "birth")


def test_a_gateway_started_after_a_crash_does_not_trust_a_replayed_birth(
    broker: Broker, tmp_path: Path
) -> None:
    """A retained "online" status whose agent is gone (a crash took its will with it) and one
    whose agent is live: after start-up only the live one counts as online."""
    ghost = "ghost-01"
    stale = Status(
        device=ghost,
        state=Presence.ONLINE,
        ts=time.time() - 60,
        boot=4,
        agent_version="x",
        reason="birth",
    )
    publish(broker, f"edgetwin/{ghost}/status", stale.encode(), retain=True)
    manifest = [
        ManifestDevice(id=DEVICE, sensors={"env": bme280(INTERVAL)}),
        ManifestDevice(id=ghost, sensors={"env": bme280(INTERVAL)}),
    ]
    try:
        with agent_thread(broker, tmp_path, {"env": bme280(INTERVAL)}) as agent:
            poll(lambda: agent.link.connected, timeout=10, what="the agent connected")
            with (
                Capture(broker, f"edgetwin/{ghost}/telemetry/env") as sub,
                gateway(gateway_config(broker, *manifest)) as client,
            ):
                [first] = sub.wait_for(telemetry_from("simulated"), timeout=10)[:1]
                assert twin(client, ghost)["presence"] == "offline"
                assert twin(client, DEVICE)["presence"] == "online"
                assert twin(client, DEVICE)["served_by"] == "agent"
        assert seq_of(first) == 1
    finally:
        publish(broker, f"edgetwin/{ghost}/status", b"", retain=True)


def test_a_restarted_gateway_rebuilds_every_twin_on_a_stock_broker(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """More retained documents than a stock mosquitto queues for one QoS 1 subscriber
    (max_inflight_messages 20 + max_queued_messages 1,000): all of them reach the gateway."""
    devices = [f"rack-{i:04d}" for i in range(600)]
    env = {"env": bme280(1.0)}
    with MosquittoBroker() as stock:
        client = connect_client(stock)
        try:
            deliveries = []
            for device in devices:
                twin_doc = TwinSummary(
                    device=device, ts=time.time(), presence="offline", sensors={}, site="hall"
                )
                desired = DesiredConfig(device=device, version=3, sensors=env)
                for topic, document in (
                    (f"edgetwin/{device}/twin", twin_doc.encode()),
                    (f"edgetwin/{device}/config/desired", desired.encode()),
                ):
                    deliveries.append(client.publish(topic, document, qos=1, retain=True))
            for delivery in deliveries:
                delivery.wait_for_publish(10)
        finally:
            disconnect_client(client)
        with gateway(gateway_config(stock)) as restarted:

            def rebuilt() -> bool:
                views = restarted.get("/devices").json()
                return len(views) == len(devices) and all(
                    v["in_manifest"] and v["desired_version"] == 3 for v in views
                )

            poll(rebuilt, 20, what=f"{len(devices)} twins rebuilt with their desired versions")
            assert restarted.get("/fleet").json()["in_manifest"] == len(devices)

            # The broker held no twin index (as an earlier version leaves it): the gateway read
            # the wildcards once, and now keeps the index the next restart reads in portions.
            with Capture(stock, "edgetwin/_index/+", qos=0) as index:

                def indexed() -> bool:
                    latest = {m.topic: m.payload for m in index.messages()}
                    listed = {d for p in latest.values() if p for d in json.loads(p)["devices"]}
                    return listed == set(devices)

                poll(indexed, 10, what="a twin index listing every device")
        with (
            Capture(stock, "edgetwin/_index/+", qos=1) as index,
            caplog.at_level(logging.INFO, logger="edgetwin.gateway.service"),
            gateway(gateway_config(stock)) as restarted,
        ):
            poll(rebuilt, 20, what="every twin rebuilt again, from the index")
            # One more device, after the rebuild: its shard is the gateway's next index write,
            # so whatever the rebuild itself rewrote has arrived before it.
            added = {"id": "rack-added", "sensors": {"env": {"driver": "bme280"}}}
            assert restarted.post("/devices", json=added, headers=AUTH).status_code == 201
            shard = f"edgetwin/_index/{twin_index_shard('rack-added')}"
            index.wait_for(lambda m: m.topic == shard and not m.retain, timeout=10)
        read = [r for r in caplog.records if r.getMessage() == "twin documents read"]
        assert [r.__dict__["devices"] for r in read] == [len(devices)]
        # The broker kept the index: a restart reads it and rewrites none of it.
        rewritten = [m.topic for m in index.messages() if not m.retain]
        assert rewritten == [shard]


def test_a_device_deleted_and_added_again_gets_versions_its_agent_accepts(
    broker: Broker, tmp_path: Path
) -> None:
    """Before: after DELETE and POST every push was refused ("version 2 is older than applied
    version 4") while the twin showed in_sync."""
    device = {"id": DEVICE, "sensors": {"env": {"driver": "bme280", "interval": INTERVAL}}}
    with (
        gateway(gateway_config(broker)) as client,
        agent_thread(broker, tmp_path, {"env": bme280(INTERVAL)}),
    ):
        assert client.post("/devices", json=device, headers=AUTH).status_code == 201
        for interval in (0.3, 0.4):
            put = client.put(
                f"/devices/{DEVICE}/desired",
                json={"sensors": {"env": {"driver": "bme280", "interval": interval}}},
                headers=AUTH,
            )
            assert put.status_code == 200, put.text
        poll(lambda: twin(client)["applied_version"] == 3, 10, what="agent at version 3")
        assert client.delete(f"/devices/{DEVICE}", headers=AUTH).status_code == 204

        again = client.post("/devices", json=device, headers=AUTH)
        assert again.status_code == 201, again.text
        assert again.json()["desired_version"] == 4
        poll(lambda: twin(client)["applied_version"] == 4, 10, what="agent at version 4")
        assert twin(client)["config"] == "in_sync"


def test_versions_stay_within_json_safe_integers(broker: Broker) -> None:
    top = 2**53 - 1
    publish(
        broker,
        f"edgetwin/{DEVICE}/config/reported",
        ReportedConfig(device=DEVICE, ts=1.0, status="applied", applied_version=top).encode(),
        retain=True,
    )
    with gateway(gateway_config(broker)) as client:
        poll(lambda: client.get(f"/devices/{DEVICE}").status_code == 200, 5, what="report read")
        added = client.post(
            "/devices",
            json={"id": DEVICE, "sensors": {"env": {"driver": "bme280", "interval": 1}}},
            headers=AUTH,
        )
        assert added.status_code == 409, added.text
        assert str(top) in added.json()["detail"]
        assert (
            client.post("/devices", json={"id": DEVICE, "sensors": {}}, headers=AUTH).status_code
            == 201
        )
        for body in ({"sensors": {}, "version": top + 1},):
            refused = client.put(f"/devices/{DEVICE}/desired", json=body, headers=AUTH)
            assert refused.status_code == 422, refused.text
        refused = client.put(
            f"/devices/{DEVICE}/desired",
            json={"sensors": {}},
            headers={**AUTH, "If-Match": f'"{top + 1}"'},
        )
        assert refused.status_code == 400, refused.text
