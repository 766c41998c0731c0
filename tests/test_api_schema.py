"""The API against its own OpenAPI document (schemathesis), and the bearer token on writes.

Schemathesis generates requests for every operation from the document, valid ones and broken
ones, and sends them in process to a gateway whose lifespan runs against a private broker and
which has an API token, sent with every request, so that writes reach their handlers. The
check is that nothing answers with a server error: a 500 is a bug, whatever the input.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi

from edgetwin.gateway.app import create_app
from edgetwin.gateway.config import GatewayConfig, ManifestDevice
from edgetwin.testing.broker import Broker
from edgetwin.testing.waiting import poll
from tests.fleet_helpers import bme280, mqtt_settings

pytestmark = pytest.mark.integration

TOKEN = "schema-test-token"
DEVICE = "greenhouse-01"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
Case = schemathesis.Case[Any]

# The OpenAPI document depends on the code only, not on the configuration: an app that is never
# started gives it at collection time, and each test item then runs against its own gateway.
schema = schemathesis.openapi.from_dict(create_app(GatewayConfig()).openapi())

# Bounded and reproducible: about 15 s for the whole file on a CI machine.
fuzz = settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


# An empty scenarios directory: fuzzed scenario names reach the file name checks.
SCENARIOS = Path(tempfile.mkdtemp(prefix="edgetwin-scenarios-"))


def config(broker: Broker, **api: Any) -> GatewayConfig:
    return GatewayConfig.from_builtins(
        {
            "mqtt": mqtt_settings(
                broker, keepalive=2, reconnect_min_delay=0.2, reconnect_max_delay=1
            ),
            "presence": {"startup_grace": 0.3},
            "api": api,
            # Fuzzed /engine/start bodies really start workers: keep any such fleet small.
            "engine": {
                "workers": 1,
                "max_workers": 1,
                "max_devices": 20,
                "scenarios_dir": str(SCENARIOS),
            },
            "devices": [ManifestDevice(id=DEVICE, sensors={"env": bme280(1.0)})],
        }
    )


@pytest.fixture
def app(broker: Broker) -> Iterator[FastAPI]:
    """A gateway with a token whose lifespan schemathesis's ASGI client has entered."""
    app = create_app(config(broker, token=TOKEN))
    # Entering the client starts the lifespan; it stays up until shut down.
    with asgi.get_client(cast(asgi.ASGIApp, app)) as client:
        # /health answers 503 until the broker connection is up: fuzzing starts after that.
        poll(lambda: client.get("/health").status_code == 200, 10, what="broker connection")
    try:
        yield app
    finally:
        asgi.shutdown_lifespans()


# A command's 504 (the device is offline, or did not answer in time) is the answer the route
# documents, with its reason, not a failure of the gateway; any other 5xx is a bug.
DOCUMENTED_5XX = {("/devices/{device_id}/commands/{name}", 504)}


def call_and_check(case: Case, app: FastAPI) -> None:
    response = case.call(app=app, headers=BEARER)
    if (case.path, response.status_code) in DOCUMENTED_5XX:
        assert response.json()["reason"] in ("offline", "timed out"), response.text
        return
    case.validate_response(response, checks=[not_a_server_error])


# GET /events never ends for valid input, and schemathesis's client reads whole answers: its
# refusals and streams are tested in tests/test_live.py.
@schema.exclude(path="/events").parametrize()
@fuzz
def test_no_operation_answers_with_a_server_error(case: Case, app: FastAPI) -> None:
    call_and_check(case, app)


@schema.include(path_regex=r"\{device_id\}").parametrize()
@fuzz
def test_no_server_error_on_a_device_in_the_manifest(case: Case, app: FastAPI) -> None:
    """Random ids almost never name a device: here every request names the manifest's one."""
    case.path_parameters = {**(case.path_parameters or {}), "device_id": DEVICE}
    call_and_check(case, app)


# --- values JSON has not got ----------------------------------------------------------------

NOT_JSON_NUMBERS = ("NaN", "Infinity", "-Infinity", "1e999")


def _number_paths(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(value, bool):
        return
    if isinstance(value, int | float):
        yield path
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _number_paths(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _number_paths(item, (*path, index))


def _with_marker(value: Any, path: tuple[Any, ...], marker: str) -> Any:
    if not path:
        return marker
    copy = dict(value) if isinstance(value, dict) else list(value)
    copy[path[0]] = _with_marker(value[path[0]], path[1:], marker)
    return copy


@schema.include(method=["POST", "PUT", "PATCH"]).parametrize()
@fuzz
def test_nan_and_infinity_in_any_number_of_a_body_get_a_4xx(case: Case, app: FastAPI) -> None:
    """Python's JSON decoder, which FastAPI uses, takes NaN and Infinity; such bodies gave 500
    where they reached a handler. Each number of a generated body is replaced in turn."""
    if not isinstance(case.body, dict | list):
        return
    client = TestClient(app)  # the lifespan is the fixture's
    path = case.formatted_path
    for index, where in enumerate(list(_number_paths(case.body))[:6]):
        marker = f"__not_json_{index}__"
        text = json.dumps(_with_marker(case.body, where, marker))
        raw = text.replace(f'"{marker}"', NOT_JSON_NUMBERS[index % len(NOT_JSON_NUMBERS)])
        response = client.request(
            case.method,
            path,
            content=raw,
            headers={**BEARER, "Content-Type": "application/json"},
        )
        assert 400 <= response.status_code < 500, (case.method, path, raw, response.text)
        assert response.json()["detail"], response.text


def test_the_reported_bad_values_get_a_4xx_with_a_reason(broker: Broker) -> None:
    """Before: each of these answered 500."""
    nan_bodies = [
        (
            "POST",
            "/devices",
            '{"id": "d", "sensors": {"env": {"driver": "bme280", "interval": NaN}}}',
        ),
        ("PUT", "/engine/rate", '{"multiplier": NaN}'),
        ("PUT", "/engine/rate", '{"multiplier": Infinity}'),
        ("POST", "/engine/start", '{"devices": 1, "interval": Infinity}'),
        ("POST", "/engine/start", '{"devices": 1, "interval": 1e999}'),
        ("POST", "/engine/faults", '{"type": "spike", "devices": "*", "magnitude": -Infinity}'),
        (
            "PUT",
            f"/devices/{DEVICE}/desired",
            '{"sensors": {"env": {"driver": "bme280", "interval": NaN}}}',
        ),
        ("PATCH", f"/devices/{DEVICE}/desired", '{"sensors": {"env": {"interval": NaN}}}'),
    ]
    with TestClient(create_app(config(broker, token=TOKEN)), headers=BEARER) as client:
        for method, path, body in nan_bodies:
            response = client.request(
                method, path, content=body, headers={"Content-Type": "application/json"}
            )
            assert response.status_code == 422, (method, path, response.text)
            assert "NaN and Infinity" in response.text, response.text
        for name in ("a\x00b.toml", "\x00", "x\ny.toml", ""):
            response = client.post("/engine/start", json={"scenario": name})
            assert response.status_code == 422, (name, response.text)
            assert "control characters" in response.json()["detail"], response.text
        assert client.get("/engine/status").json()["state"] == "stopped"


# --- the token -----------------------------------------------------------------------------

SENSORS = {"sensors": {"env": {"driver": "bme280", "interval": 2.0, "backend": "emulated"}}}
WRITES: list[tuple[str, str, dict[str, Any] | None]] = [
    ("POST", "/devices", {"id": "new-device"}),
    ("PUT", f"/devices/{DEVICE}/desired", SENSORS),
    ("PATCH", f"/devices/{DEVICE}/desired", {"sensors": {"env": {"interval": 3}}}),
    ("DELETE", f"/devices/{DEVICE}", None),
]


def write(client: TestClient, method: str, path: str, body: Any, **headers: str) -> Any:
    return client.request(method, path, json=body, headers=headers)


def test_writes_need_the_right_token(broker: Broker) -> None:
    with TestClient(create_app(config(broker, token=TOKEN))) as client:
        for method, path, body in WRITES:
            missing = write(client, method, path, body)
            assert missing.status_code == 401, (method, path, missing.text)
            assert missing.headers["WWW-Authenticate"] == "Bearer"
            assert "Authorization: Bearer" in missing.json()["detail"]
            wrong = write(client, method, path, body, Authorization="Bearer not-the-token")
            assert wrong.status_code == 403, (method, path, wrong.text)
            assert wrong.json()["detail"] == "wrong API token"
        # Nothing was written, and reads need no token.
        assert client.get(f"/devices/{DEVICE}/desired").status_code == 404
        assert [d["id"] for d in client.get("/devices").json()] == [DEVICE]

        for method, path, body in WRITES:
            right = write(client, method, path, body, Authorization=f"Bearer {TOKEN}")
            assert right.status_code in {200, 201, 204}, (method, path, right.text)
        assert "new-device" in [d["id"] for d in client.get("/devices").json()]


def test_writes_are_disabled_without_a_configured_token(broker: Broker) -> None:
    with TestClient(create_app(config(broker))) as client:
        for method, path, body in WRITES:
            for headers in ({}, BEARER):
                refused = write(client, method, path, body, **headers)
                assert refused.status_code == 403, (method, path, refused.text)
                assert "writes are disabled" in refused.json()["detail"]
                assert "EDGETWIN_API_TOKEN" in refused.json()["detail"]
        assert client.get("/devices").status_code == 200


def test_local_no_auth_accepts_writes_without_a_token(broker: Broker) -> None:
    with TestClient(create_app(config(broker, local_no_auth=True))) as client:
        created = write(client, "POST", "/devices", {"id": "new-device"})
        assert created.status_code == 201, created.text


def test_device_labels_outside_the_wire_contract_are_refused(broker: Broker) -> None:
    """Found by schemathesis: such a device was added, then its twin document failed (500)."""
    with TestClient(create_app(config(broker, token=TOKEN)), headers=BEARER) as client:
        for extra in ({"labels": {"not a key": "x"}}, {"site": "x" * 65}):
            refused = client.post("/devices", json={"id": "labelled", **extra})
            assert refused.status_code == 422, refused.text
            assert refused.json()["detail"][0]["loc"][:2] == ["body", next(iter(extra))]
        assert client.get("/devices/labelled").status_code == 404
        accepted = client.post("/devices", json={"id": "labelled", "labels": {"row": "3"}})
        assert accepted.status_code == 201, accepted.text
