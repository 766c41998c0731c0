"""What a request may cost the gateway (gateway/limits.py): the token is checked before the
body is read, bodies are capped, and a valid token's requests are bounded.

The body tests talk raw HTTP/1.1 to the gateway on uvicorn: the point is when the gateway
answers, and only a socket tells that a 401 came before the body was sent.
"""

from __future__ import annotations

import select
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient

from edgetwin.gateway.app import create_app
from edgetwin.gateway.config import GatewayConfig
from edgetwin.testing.broker import Broker
from edgetwin.testing.gateway import serving
from tests.fleet_helpers import mqtt_settings

pytestmark = pytest.mark.integration

TOKEN = "limits-token"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
LIMIT = 64 * 1024
ANSWER_TIMEOUT = 10.0


def config(broker: Broker, **api: Any) -> GatewayConfig:
    return GatewayConfig.from_builtins(
        {
            "mqtt": mqtt_settings(broker, keepalive=2),
            "presence": {"startup_grace": 0.3},
            "api": {"token": TOKEN, "max_body_bytes": LIMIT, **api},
            "engine": {"workers": 0, "max_devices": 20},
        }
    )


@contextmanager
def connection(broker: Broker) -> Iterator[socket.socket]:
    with serving(create_app(config(broker))) as url:
        address = urlsplit(url)
        assert address.hostname is not None
        assert address.port is not None
        with socket.create_connection((address.hostname, address.port), timeout=5) as sock:
            yield sock


def answered(sock: socket.socket) -> bool:
    return bool(select.select([sock], [], [], 0)[0])


def read_answer(sock: socket.socket) -> tuple[int, bytes]:
    """The status and body of the response, within ANSWER_TIMEOUT."""
    sock.settimeout(ANSWER_TIMEOUT)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed without an answer: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed mid-answer"
        body += chunk
    return int(lines[0].split()[1]), body


def send_head(sock: socket.socket, headers: dict[str, str]) -> None:
    lines = ["POST /devices HTTP/1.1", "Host: gateway", "Content-Type: application/json"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())


def stream_chunks(sock: socket.socket, total: int, chunk: int = 16 * 1024) -> None:
    """Send chunked body bytes until the gateway answers or `total` went out."""
    sent = 0
    try:
        while sent < total and not answered(sock):
            sock.sendall(f"{chunk:x}\r\n".encode() + b" " * chunk + b"\r\n")
            sent += chunk
        if not answered(sock):
            sock.sendall(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass  # the gateway answered and closed: the answer is still to be read


def test_a_write_without_the_token_is_refused_before_its_body_is_read(
    broker: Broker,
) -> None:
    """Before: a 200 MB POST /devices without a token was read whole (95 -> 692 MB) before
    its 401. Here the body is announced and never sent: only a gateway that answers from the
    headers answers at all."""
    with connection(broker) as sock:
        send_head(sock, {"Content-Length": str(200 * 1024 * 1024)})
        sock.sendall(b"{" + b" " * 1024)
        status, body = read_answer(sock)
    assert status == 401, body
    assert b"Authorization: Bearer" in body
    with connection(broker) as sock:
        send_head(sock, {"Authorization": "Bearer wrong", "Transfer-Encoding": "chunked"})
        sock.sendall(b"400\r\n" + b" " * 1024 + b"\r\n")
        status, body = read_answer(sock)
    assert status == 403, body


def test_a_body_above_max_body_bytes_gets_413_unread(broker: Broker) -> None:
    with connection(broker) as sock:
        send_head(sock, {**BEARER, "Content-Length": str(LIMIT + 1)})
        status, body = read_answer(sock)
    assert status == 413, body
    assert b"max_body_bytes" in body
    assert str(LIMIT).encode() in body


def test_a_chunked_body_is_cut_off_at_max_body_bytes(broker: Broker) -> None:
    """No Content-Length to check: the bytes are counted as they stream in."""
    with connection(broker) as sock:
        send_head(sock, {**BEARER, "Transfer-Encoding": "chunked"})
        stream_chunks(sock, 16 * LIMIT)
        status, body = read_answer(sock)
    # A gateway that read it all would answer 422: spaces are no JSON.
    assert status == 413, body
    assert b"max_body_bytes" in body


def test_what_a_valid_token_may_ask_for_is_bounded(broker: Broker) -> None:
    def sensors(count: int, interval: float = 1.0) -> dict[str, Any]:
        return {
            f"s{i}": {"driver": "bme280", "interval": interval, "backend": "emulated"}
            for i in range(count)
        }

    app = create_app(config(broker, max_sensors=3, min_interval=0.5))
    with TestClient(app, headers=BEARER) as client:
        many = client.post("/devices", json={"id": "many", "sensors": sensors(4)})
        assert many.status_code == 422, many.text
        assert "max_sensors (3)" in many.json()["detail"]
        fast = client.post("/devices", json={"id": "fast", "sensors": sensors(1, 0.1)})
        assert fast.status_code == 422, fast.text
        assert "min_interval (0.5 s)" in fast.json()["detail"]
        assert client.get("/devices").json() == []

        ok = client.post("/devices", json={"id": "ok", "sensors": sensors(3)})
        assert ok.status_code == 201, ok.text
        grown = client.put("/devices/ok/desired", json={"sensors": sensors(4)})
        assert grown.status_code == 422, grown.text
        faster = client.patch("/devices/ok/desired", json={"sensors": {"s0": {"interval": 0.1}}})
        assert faster.status_code == 422, faster.text
        assert "min_interval" in faster.json()["detail"]
        engine = client.post("/engine/start", json={"devices": 1, "interval": 0.01})
        assert engine.status_code == 422, engine.text
        assert "min_interval" in engine.json()["detail"]
