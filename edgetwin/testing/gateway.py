"""A running edgetwin gateway, started from code, and a small client for its HTTP API.

`RunningGateway` starts the gateway of `edgetwin gateway` (the same FastAPI app from
`edgetwin.gateway.app.create_app`, the same config model) on a free port, either on a thread of
the caller (uvicorn in-process) or as its own process, connected through an `MqttEndpoint`,
with a manifest of devices and an API token. `GatewayClient` talks to it.

The client is built on the standard library's urllib rather than httpx: httpx is only a test
dependency of edgetwin, and code that imports `edgetwin.testing` must not need more than
edgetwin itself installs. It covers what a test asks a gateway; for anything else use
`client.request(...)` or any HTTP client on `url`.

Example::

    from edgetwin.testing.gateway import RunningGateway
    from edgetwin.testing.endpoint import MqttEndpoint

    devices = [{"id": "pi-01", "sensors": {"env": {"driver": "bme280", "interval": 1}}}]
    with RunningGateway(MqttEndpoint("127.0.0.1", 1883), devices) as gateway:
        print(gateway.client.device("pi-01")["presence"])
        version = gateway.client.desired("pi-01")[1]
        gateway.client.put_desired("pi-01", {"env": {"driver": "bme280"}}, if_match=version)
"""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import uvicorn
from fastapi import FastAPI

from edgetwin.gateway.app import create_app
from edgetwin.gateway.broker import free_port
from edgetwin.gateway.cli import GatewayServer
from edgetwin.gateway.config import GatewayConfig
from edgetwin.testing._toml import toml_document
from edgetwin.testing.endpoint import MqttEndpoint
from edgetwin.testing.process import start_edgetwin, stop_process
from edgetwin.testing.waiting import poll

__all__ = [
    "TEST_DEFAULTS",
    "GatewayClient",
    "GatewayError",
    "Response",
    "RunningGateway",
    "serving",
]

Mode = Literal["thread", "process"]

TEST_DEFAULTS: Mapping[str, Mapping[str, Any]] = {
    # A lost broker is noticed and reconnected to in about a second, and the gateway decides
    # who is online 0.3 s after connecting instead of 1 s.
    "mqtt": {"keepalive": 2, "reconnect_min_delay": 0.1, "reconnect_max_delay": 0.5},
    "presence": {"startup_grace": 0.3},
}
"""Settings a `RunningGateway` uses where its config gives none; any key given overrides them."""


@contextmanager
def serving(app: FastAPI, attempts: int = 3, port: int | None = None) -> Iterator[str]:
    """Run the ASGI `app` on uvicorn on a thread, on a free port of 127.0.0.1 (or `port`: a
    gateway restarted where a page expects it), with its lifespan; yield its base URL
    (``http://127.0.0.1:PORT``) once it accepts connections, and stop it on exit. Another port
    is tried if the chosen one was taken in between."""
    chosen = port
    for _ in range(attempts):
        port = chosen or free_port()
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_config=None,
            lifespan="on",
            timeout_graceful_shutdown=5,
        )
        server = GatewayServer(config)
        thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
        thread.start()
        deadline = time.monotonic() + 15
        while not server.started and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        if server.started:
            break
        server.should_exit = True
        thread.join(timeout=15)
    else:
        raise RuntimeError(f"uvicorn did not start in {attempts} attempts")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        if thread.is_alive():
            raise RuntimeError("uvicorn did not stop")


# -- the HTTP client --------------------------------------------------------------------------


@dataclass(frozen=True)
class Response:
    """An HTTP answer: status, headers (names lower-cased) and body."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        """The body decoded as JSON."""
        return json.loads(self.body)


@dataclass
class GatewayError(Exception):
    """The gateway answered a helper of `GatewayClient` with a status other than 2xx."""

    status: int
    detail: Any
    headers: Mapping[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"HTTP {self.status}: {self.detail}"


class GatewayClient:
    """A client for the gateway API at `url`; writes carry `token` as a bearer token.

    `request` returns any answer as it is; the helpers return the decoded JSON of a 2xx answer
    and raise `GatewayError` for any other.
    """

    def __init__(self, url: str, token: str | None = None, timeout: float = 10) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        *,
        auth: bool = True,
    ) -> Response:
        """Send `method path` with `body` as JSON (if not None); with `auth`, the token."""
        sent = {"Accept": "application/json", **(headers or {})}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            sent["Content-Type"] = "application/json"
        if auth and self.token is not None:
            sent["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(  # noqa: S310 - the URL is the gateway's, http only
            self.url + path, data=data, headers=sent, method=method
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as answer:  # noqa: S310
                return Response(answer.status, _lower(answer.headers.items()), answer.read())
        except urllib.error.HTTPError as error:
            with error:
                return Response(error.code, _lower(error.headers.items()), error.read())

    def _json(
        self, method: str, path: str, body: Any = None, headers: Mapping[str, str] | None = None
    ) -> Response:
        answer = self.request(method, path, body, headers)
        if not 200 <= answer.status < 300:
            try:
                detail = answer.json().get("detail", answer.body.decode(errors="replace"))
            except (ValueError, AttributeError):
                detail = answer.body.decode(errors="replace")
            raise GatewayError(answer.status, detail, answer.headers)
        return answer

    def health(self) -> Response:
        """`GET /health`: 200 while the gateway reaches its broker, 503 with the reason if not."""
        return self.request("GET", "/health")

    def devices(self) -> list[dict[str, Any]]:
        """`GET /devices`: every device with its presence and who serves each sensor."""
        found: list[dict[str, Any]] = self._json("GET", "/devices").json()
        return found

    def device(self, device_id: str) -> dict[str, Any]:
        """`GET /devices/{id}`: one device's twin (presence, sensors, desired, reported, state,
        config sync); GatewayError 404 if unknown."""
        found: dict[str, Any] = self._json("GET", f"/devices/{device_id}").json()
        return found

    def fleet(self) -> dict[str, Any]:
        """`GET /fleet`: counts by presence, simulated streams, config sync."""
        found: dict[str, Any] = self._json("GET", "/fleet").json()
        return found

    def add_device(
        self,
        device_id: str,
        sensors: Mapping[str, Mapping[str, Any]] | None = None,
        *,
        site: str | None = None,
        labels: Mapping[str, str] | None = None,
        responses: Sequence[Mapping[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """`POST /devices`: add a manifest device (simulated until its agent comes online);
        GatewayError 409 if it exists. Without `sensors`, the gateway's default sensors.
        `responses`: how its simulated signals answer its outputs, as `[[devices.responses]]`
        (`{"sensor", "quantity", "time_constant", "gains"}`)."""
        body: dict[str, Any] = {"id": device_id}
        if sensors is not None:
            body["sensors"] = sensors
        if site is not None:
            body["site"] = site
        if labels is not None:
            body["labels"] = labels
        if responses is not None:
            body["responses"] = list(responses)
        added: dict[str, Any] = self._json("POST", "/devices", body).json()
        return added

    def delete_device(self, device_id: str) -> None:
        """`DELETE /devices/{id}`: remove it from the manifest and clear its documents."""
        self._json("DELETE", f"/devices/{device_id}")

    def desired(self, device_id: str) -> tuple[dict[str, Any], int]:
        """`GET /devices/{id}/desired`: the desired config and its version (the ETag)."""
        answer = self._json("GET", f"/devices/{device_id}/desired")
        return answer.json(), _version(answer)

    def put_desired(
        self,
        device_id: str,
        sensors: Mapping[str, Mapping[str, Any]],
        if_match: int | None = None,
        outputs: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> tuple[dict[str, Any], int]:
        """`PUT /devices/{id}/desired`: replace the device's sensors, and its outputs when
        given (else they are kept); returns the new desired config and its version. With
        `if_match` (the version you read), GatewayError 409 if it moved on meanwhile; version
        0 means "none yet". An output value out of its range is GatewayError 422."""
        headers = {} if if_match is None else {"If-Match": f'"{if_match}"'}
        body: dict[str, Any] = {"sensors": sensors}
        if outputs is not None:
            body["outputs"] = outputs
        answer = self._json("PUT", f"/devices/{device_id}/desired", body, headers)
        return answer.json(), _version(answer)

    def patch_desired(
        self,
        device_id: str,
        sensors: Mapping[str, Mapping[str, Any] | None],
        if_match: int | None = None,
        outputs: Mapping[str, Mapping[str, Any] | None] | None = None,
    ) -> tuple[dict[str, Any], int]:
        """`PATCH /devices/{id}/desired`: a JSON merge patch of the sensors, and of the outputs
        when given (None removes one; `{"fan": {"value": 0.4}}` sets a value); returns the new
        desired config and its version. `if_match` as in `put_desired`."""
        headers = {} if if_match is None else {"If-Match": f'"{if_match}"'}
        body: dict[str, Any] = {"sensors": sensors}
        if outputs is not None:
            body["outputs"] = outputs
        answer = self._json("PATCH", f"/devices/{device_id}/desired", body, headers)
        return answer.json(), _version(answer)


def _lower(items: Iterator[tuple[str, str]] | Sequence[tuple[str, str]]) -> dict[str, str]:
    return {name.lower(): value for name, value in items}


def _version(answer: Response) -> int:
    return int(answer.headers["etag"].strip('"'))


# -- the gateway ------------------------------------------------------------------------------


class RunningGateway:
    """An edgetwin gateway on a free port of 127.0.0.1, connected through `endpoint`.

    `devices` is its manifest: each a dict as in the gateway's `[[devices]]` (`id`, `sensors`
    {name: {driver, interval, ...}}, `site`, `labels`). `token` is the API token for writes
    (a random one if not given; `client` carries it). `config` adds or overrides sections of
    the gateway TOML's structure (`presence`, `api`, `engine`, `mqtt` keys beyond the
    endpoint's, ...); `TEST_DEFAULTS` fill what it leaves out, and the broker address,
    protocol, credentials and TLS always come from `endpoint`.

    `mode` is "thread" (uvicorn in this process: starts fastest, and `app` is reachable) or
    "process" (`python -m edgetwin gateway --config FILE`, its logs in `log_file`).
    Nothing runs until `start()` (or `with`); the config is checked at construction.
    """

    def __init__(
        self,
        endpoint: MqttEndpoint,
        devices: Sequence[Mapping[str, Any]] = (),
        *,
        token: str | None = None,
        config: Mapping[str, Any] | None = None,
        mode: Mode = "thread",
        env: Mapping[str, str] | None = None,
    ) -> None:
        if mode not in ("thread", "process"):
            raise ValueError(f"mode must be 'thread' or 'process', not {mode!r}")
        self.endpoint = endpoint
        self.mode: Mode = mode
        self.token: str = token if token is not None else secrets.token_urlsafe(16)
        """The bearer token every write must carry."""
        self._env = dict(env or {})
        data: dict[str, Any] = {k: dict(v) for k, v in TEST_DEFAULTS.items()}
        for section, keys in (config or {}).items():
            data[section] = {**data.get(section, {}), **keys} if isinstance(keys, Mapping) else keys
        data["mqtt"] = endpoint.mqtt_settings(**data.get("mqtt", {}))
        data["api"] = {**data.get("api", {}), "token": self.token}
        data["devices"] = [dict(d) for d in devices] + list(data.get("devices", []))
        self._data = data
        self.config = GatewayConfig.from_builtins(data)
        """The validated configuration (the server port is chosen at `start()`)."""
        self._workdir: tempfile.TemporaryDirectory[str] | None = None
        self._serving: AbstractContextManager[str] | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._url: str | None = None
        self.app: FastAPI | None = None
        """The FastAPI application of a thread-mode gateway while it runs."""
        self.exit_code: int | None = None
        """The process's exit status after `stop()` (process mode)."""

    @property
    def url(self) -> str:
        """The API's base URL, e.g. ``http://127.0.0.1:41234``; RuntimeError before `start()`."""
        if self._url is None:
            raise RuntimeError("the gateway is not running")
        return self._url

    @property
    def client(self) -> GatewayClient:
        """A `GatewayClient` on `url` carrying `token`."""
        return GatewayClient(self.url, self.token)

    @property
    def log_file(self) -> Path:
        """Where a process-mode gateway's stdout and stderr (JSON logs) go."""
        if self._workdir is None:
            raise RuntimeError("the gateway has not been started as a process")
        return Path(self._workdir.name) / "gateway.log"

    def start(self, timeout: float = 30) -> Self:
        """Start the gateway; return once its API answers (within `timeout` seconds)."""
        if self._url is not None:
            raise RuntimeError("the gateway is already running")
        if self.mode == "thread":
            self.app = create_app(self.config)
            serving_app = serving(self.app)
            self._url = serving_app.__enter__()
            self._serving = serving_app
            return self
        self._workdir = tempfile.TemporaryDirectory(prefix="edgetwin-gateway-")
        port = free_port()
        data = {**self._data, "server": {**self._data.get("server", {}), "port": port}}
        config_file = Path(self._workdir.name) / "gateway.toml"
        config_file.write_text(toml_document(data), encoding="utf-8")
        self._log = self.log_file.open("ab")
        self._process = start_edgetwin(
            ["gateway", "--config", str(config_file)], env=self._env, log_file=self._log
        )
        self._url = f"http://127.0.0.1:{port}"
        try:
            poll(self._answers, timeout, interval=0.05, what="the gateway's API")
        except TimeoutError:
            tail = self._log_tail()
            self.stop()
            raise RuntimeError(
                f"gateway did not answer within {timeout} s (exit {self.exit_code}): {tail}"
            ) from None
        return self

    def _answers(self) -> bool:
        if self._process is not None and self._process.poll() is not None:
            raise RuntimeError(
                f"gateway exited with {self._process.returncode}: {self._log_tail()}"
            )
        try:
            self.client.health()
        except OSError:
            return False
        return True

    def _log_tail(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def stop(self) -> None:
        """Stop the gateway cleanly (its simulations stop, its connection closes); does
        nothing if it is not running."""
        self._url = None
        if self._serving is not None:
            serving_app, self._serving = self._serving, None
            self.app = None
            serving_app.__exit__(None, None, None)
        if self._process is not None:
            process, self._process = self._process, None
            try:
                self.exit_code, _ = stop_process(process, signal.SIGTERM)
            finally:
                self._log.close()
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None

    def send_signal(self, sig: int) -> None:
        """Send `sig` to a process-mode gateway: SIGSTOP freezes it as a lost network does (its
        connection stays open, silent, until the broker's keepalive gives up on it), SIGCONT
        lets it go on. RuntimeError for a thread-mode gateway or one not running."""
        if self._process is None:
            raise RuntimeError("only a running process-mode gateway can be signalled")
        self._process.send_signal(sig)

    def kill(self) -> None:
        """End a process-mode gateway with SIGKILL, as a crash does: no offline lease, no clean
        disconnect, so the broker publishes its last will. `exit_code` is then -9."""
        if self._process is None:
            raise RuntimeError("only a running process-mode gateway can be killed")
        self._process.kill()
        self._process.wait()
        self.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
