"""GET /events: the fleet's changes pushed as Server-Sent Events (gateway/live.py)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi.testclient import TestClient

from edgetwin.agent.contract import Source, Telemetry, Value
from edgetwin.gateway.app import create_app
from edgetwin.gateway.config import GatewayConfig, ManifestDevice
from edgetwin.gateway.views import device_summary, device_view
from edgetwin.testing.broker import Broker
from edgetwin.testing.capture import connect_client, disconnect_client
from edgetwin.testing.gateway import serving
from edgetwin.testing.waiting import poll
from tests.fleet_helpers import bme280, mqtt_settings, sse_events

pytestmark = pytest.mark.integration

T0 = 1_795_000_000.0


def live_config(broker: Broker, devices: list[ManifestDevice], **live: Any) -> GatewayConfig:
    return GatewayConfig.from_builtins(
        {
            "mqtt": mqtt_settings(broker),
            # Long enough that nothing is simulated: the readings are the test's own.
            "presence": {"startup_grace": 60},
            "api": {"local_no_auth": True},
            "live": {"interval": 0.1, **live},
            "devices": devices,
        }
    )


def reading(device: str, seq: int) -> bytes:
    return Telemetry(
        device=device,
        sensor="env",
        ts=T0 + seq,
        seq=seq,
        source=Source.EMULATED,
        values={"temperature": Value(value=20.0 + seq, unit="°C")},
    ).encode()


def next_event(events: Iterator[tuple[str, Any]], kind: str, deadline: float) -> Any:
    for got, data in events:
        if got == kind:
            return data
        if time.monotonic() > deadline:
            break
    raise AssertionError(f"no {kind!r} event in time")


def devices_named(n: int, prefix: str = "dev-", **extra: Any) -> list[ManifestDevice]:
    return [
        ManifestDevice(id=f"{prefix}{i:03d}", sensors={"env": bme280(60)}, **extra)
        for i in range(n)
    ]


def test_a_client_gets_a_snapshot_then_the_changes_of_its_page(broker: Broker) -> None:
    config = live_config(broker, [*devices_named(5), *devices_named(2, prefix="other-")])
    with serving(create_app(config)) as base, httpx.Client(base_url=base, timeout=10) as http:
        publisher = connect_client(broker)
        try:
            params: dict[str, str | int] = {"prefix": "dev-", "offset": 1, "limit": 2}
            with http.stream("GET", "/events", params=params) as response:
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("text/event-stream")
                events = sse_events(response)
                deadline = time.monotonic() + 10
                snapshot = next_event(events, "snapshot", deadline)
                assert snapshot["total"] == 5
                assert [d["id"] for d in snapshot["devices"]] == ["dev-001", "dev-002"]
                assert snapshot["fleet"]["devices"] == 7

                # A reading off the page sends nothing; one on it, its device's summary.
                publisher.publish("edgetwin/dev-004/telemetry/env", reading("dev-004", 1), qos=1)
                publisher.publish("edgetwin/dev-002/telemetry/env", reading("dev-002", 7), qos=1)
                change = next_event(events, "devices", deadline)
                assert [d["id"] for d in change["devices"]] == ["dev-002"]
                last = change["devices"][0]["sensors"]["env"]["last"]
                assert last["seq"] == 7
                assert last["values"] == {"temperature": [27.0, "°C"]}

                # A device added within the filter: the page is sent again.
                added = http.post("/devices", json={"id": "dev-000a"})
                assert added.status_code == 201
                again = next_event(events, "snapshot", time.monotonic() + 10)
                assert again["total"] == 6
                assert [d["id"] for d in again["devices"]] == ["dev-000a", "dev-001"]
        finally:
            disconnect_client(publisher)


def test_a_stream_left_open_does_not_hold_the_gateway_stop(broker: Broker) -> None:
    config = live_config(broker, devices_named(1))
    started = time.monotonic()
    with (
        serving(create_app(config)) as base,
        httpx.Client(base_url=base, timeout=10) as http,
        http.stream("GET", "/events") as response,
    ):
        next_event(sse_events(response), "snapshot", time.monotonic() + 10)
        stopping = time.monotonic()
    # serving() raises if uvicorn has not stopped in 15 s; the stream ends at once instead.
    assert time.monotonic() - stopping < 5, "the open stream held the shutdown"
    assert stopping > started


def test_a_slow_client_neither_blocks_ingestion_nor_other_clients(broker: Broker) -> None:
    # Big summaries (labels: 580 KB an event), a queue of 2 and 20 cycles a second: a client
    # that reads nothing fills the socket's buffers (up to 4 MB on loopback) within eight
    # events, then its queue.
    labels = {f"label{i:02d}": "x" * 256 for i in range(20)}
    devices = devices_named(100, labels=labels)
    config = live_config(broker, devices, interval=0.05, queue=2)
    with serving(create_app(config)) as base, httpx.Client(base_url=base, timeout=10) as http:
        host, port = urlsplit(base).hostname, urlsplit(base).port
        assert host is not None
        assert port is not None
        stuck = socket.socket()
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.connect((host, port))
        stuck.sendall(f"GET /events?limit=1000 HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        publisher = connect_client(broker)
        try:
            with http.stream("GET", "/events", params={"device": "dev-059"}) as response:
                events = sse_events(response)
                next_event(events, "snapshot", time.monotonic() + 10)
                rounds = 16
                for seq in range(1, rounds + 1):
                    for device in devices:
                        publisher.publish(
                            f"edgetwin/{device.id}/telemetry/env", reading(device.id, seq)
                        )
                    # The well-behaved client hears of every round while the other is stuck.
                    deadline = time.monotonic() + 10
                    while True:
                        change = next_event(events, "devices", deadline)
                        if change["devices"][0]["sensors"]["env"]["last"]["seq"] == seq:
                            break

            def ingested() -> bool:
                twins: list[dict[str, Any]] = http.get("/devices").json()
                return all((t["sensors"]["env"]["last"] or {}).get("seq") == rounds for t in twins)

            poll(ingested, 10, what="every reading in the twin")

            def resynced() -> float:
                for line in http.get("/metrics").text.splitlines():
                    if line.startswith("edgetwin_live_resyncs_total "):
                        return float(line.split()[1])
                return 0.0

            poll(lambda: resynced() > 0, 10, what="the stuck client's queue dropped")
            # The stuck client is still connected; the other one has gone.
            assert "edgetwin_live_clients 1.0" in http.get("/metrics").text
        finally:
            disconnect_client(publisher)
            stuck.close()


def test_bad_filters_get_422() -> None:
    config = GatewayConfig.from_builtins({"mqtt": {"host": "127.0.0.1", "port": 1}})
    with TestClient(create_app(config)) as client:
        for params in (
            {"limit": 0},
            {"limit": 5000},
            {"offset": -1},
            {"prefix": "A B"},
            {"device": "no/such"},
            {"q": "x" * 101},
        ):
            answer = client.get("/events", params=params)
            assert answer.status_code == 422, params
            assert answer.json()["detail"], params


def test_the_summary_is_the_device_view(broker: Broker) -> None:
    config = live_config(broker, devices_named(2, site="north", labels={"row": "3"}), interval=0.1)
    with TestClient(create_app(config)) as client:
        service = client.app.state.service  # type: ignore[attr-defined]
        service.fleet.apply_telemetry(Telemetry.decode(reading("dev-001", 3)))
        for twin in service.fleet.snapshot():
            view = device_view(twin, service.standins).model_dump(mode="json")
            summary = json.loads(
                json.dumps(device_summary(twin, service.standins, time.monotonic()))
            )
            assert summary == view
