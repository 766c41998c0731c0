"""Private MQTT brokers for integration tests, behind one small face (`BrokerUnderTest`).

Back ends, in order of preference (docs/design.md, 'Testing'):

- ``mosquitto``: the mosquitto binary as a child process (`gateway.broker.MosquittoBroker`);
- ``docker``: mosquitto in a container through testcontainers (`DockerMosquittoBroker`);
- ``inprocess``: amqtt in this process (`gateway.broker.InProcessBroker`), MQTT 3.1.1 only,
  never chosen on its own: set ``EDGETWIN_TEST_BROKER=inprocess`` to use it.

``EDGETWIN_TEST_BROKER=mosquitto|docker|inprocess`` forces one back end; when it is missing,
the test is skipped with the reason rather than silently run against another broker.
"""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import shutil
import socket
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Literal, Protocol, Self

import pytest

from edgetwin.gateway.broker import BrokerError, InProcessBroker, MosquittoBroker, free_port

if TYPE_CHECKING:
    from testcontainers.community.mqtt import MosquittoContainer

ENV_VAR = "EDGETWIN_TEST_BROKER"
BACKENDS = ("mosquitto", "docker", "inprocess")
DOCKER_IMAGE = "eclipse-mosquitto:2"


class BrokerUnderTest(Protocol):
    """The face every test broker shows; the `broker` fixture yields one, started.

    `protocol` is "5" or "3.1.1" (amqtt): pass the broker to `edgetwin.testing.capture`'s
    helpers, or `as_endpoint(broker)` to anything that takes an `MqttEndpoint`. `port` stays
    the same across `restart()`, `stop()` + `start()` and `kill()` + `start()`, so clients
    can reconnect to the same address.
    """

    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int: ...

    @property
    def url(self) -> str: ...

    @property
    def protocol(self) -> str: ...

    @property
    def is_running(self) -> bool: ...

    def start(self) -> Self: ...

    def stop(self) -> None: ...

    def kill(self) -> None: ...

    def restart(self) -> Self: ...

    def close(self) -> None: ...


def mqtt_handshake(host: str, port: int, timeout: float = 1.0) -> bool:
    """Whether an MQTT broker answers a CONNECT with a successful CONNACK on host:port.

    Stronger than a TCP connect: Docker's port proxy accepts connections before the broker in
    the container listens, so only an MQTT answer proves the broker is there.
    """
    client_id = b"edgetwin-probe-" + secrets.token_hex(4).encode()
    # MQTT 3.1.1 CONNECT: protocol name, level 4, clean session, keep-alive 5 s, client id.
    variable_and_payload = (
        b"\x00\x04MQTT\x04\x02\x00\x05" + len(client_id).to_bytes(2, "big") + client_id
    )
    connect = bytes([0x10, len(variable_and_payload)]) + variable_and_payload
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(connect)
            connack = b""
            while len(connack) < 4:
                chunk = sock.recv(4 - len(connack))
                if not chunk:
                    return False
                connack += chunk
            ok = connack[0] == 0x20 and connack[3] == 0x00
            if ok:
                sock.sendall(b"\xe0\x00")  # DISCONNECT, so the broker logs a clean goodbye
            return ok
    except OSError:
        return False


def wait_mqtt_ready(host: str, port: int, timeout: float) -> bool:
    """Poll `mqtt_handshake` until it succeeds or `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        if mqtt_handshake(host, port, timeout=min(1.0, max(deadline - time.monotonic(), 0.05))):
            return True
        if time.monotonic() >= deadline:
            return False
        # A refused connection returns at once; pace the retries instead of spinning.
        time.sleep(0.05)


@functools.cache
def docker_engine_error() -> str | None:
    """None when a Docker engine answers a ping, else why not (cached for the session)."""
    try:
        import docker  # type: ignore[import-untyped]

        client = docker.from_env(timeout=3)
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:  # the SDK raises DockerException, requests or socket errors
        return f"{type(exc).__name__}: {exc}"
    return None


def _mosquitto_container(image: str, host_port: int) -> MosquittoContainer:
    from testcontainers.community.mqtt import MosquittoContainer

    class PinnedMosquittoContainer(MosquittoContainer):
        """MosquittoContainer on a fixed host port.

        MosquittoContainer.start() publishes 1883 on a random host port, and Docker picks a
        new one at every container start, which would move the broker under the clients of a
        restart test. `_configure` runs after that call and before the container is created,
        so the pin set here wins.
        """

        def _configure(self) -> None:
            self.ports[str(self.MQTT_PORT)] = host_port

    return PinnedMosquittoContainer(image)


class DockerMosquittoBroker:
    """mosquitto in a Docker container (testcontainers), with the face of `MosquittoBroker`.

    The container is created by the first `start()` and removed by `close()`; `stop()`,
    `kill()` and `restart()` stop and start the same container (``docker stop``/``kill``/
    ``start``), so its host port, pinned at construction, does not change. The pin assumes a
    local engine: the port is checked free on this machine. With ``persistence=True`` the
    database lives in the container's own layer, which survives a stop but not `close()`.
    """

    protocol: Literal["5"] = "5"

    def __init__(
        self,
        *,
        persistence: bool = False,
        image: str = DOCKER_IMAGE,
        start_timeout: float = 60.0,
        stop_timeout: int = 5,
    ) -> None:
        self._persistence = persistence
        self._image = image
        # 0.0.0.0: Docker publishes on every interface, so the port must be free on all.
        self._port = free_port("0.0.0.0")
        self._host = "127.0.0.1"
        self._start_timeout = start_timeout
        self._stop_timeout = stop_timeout
        self._container: MosquittoContainer | None = None
        self._workdir: Path | None = None

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"mqtt://{self._host}:{self._port}"

    @property
    def is_running(self) -> bool:
        if self._container is None:
            return False
        wrapped = self._container.get_wrapped_container()
        wrapped.reload()
        return bool(wrapped.status == "running")

    def _config_file(self) -> Path:
        self._workdir = Path(tempfile.mkdtemp(prefix="edgetwin-docker-mosquitto-"))
        lines = [
            "listener 1883",
            "allow_anonymous true",
            "log_dest stdout",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
        ]
        if self._persistence:
            # Not /data, which MosquittoContainer mounts as tmpfs and Docker empties on stop.
            lines += [
                "persistence true",
                "persistence_location /mosquitto/data/",
                "autosave_on_changes true",
                "autosave_interval 1",
            ]
        else:
            lines.append("persistence false")
        config = self._workdir / "mosquitto.conf"
        config.write_text("\n".join(lines) + "\n")
        config.chmod(0o644)  # read by the container's mosquitto user, not by us
        return config

    def log_text(self) -> str:
        if self._container is None:
            return ""
        stdout, stderr = self._container.get_logs()
        return (stdout + stderr).decode(errors="replace")

    def start(self) -> Self:
        if self._container is None:
            container = _mosquitto_container(self._image, self._port)
            try:
                container.start(configfile=str(self._config_file()))
            except Exception:
                # A container that was created but never became ready must not outlive us.
                with contextlib.suppress(Exception):
                    container.stop()
                self.close()
                raise
            self._container = container
            self._host = container.get_container_host_ip()
        elif not self.is_running:
            self._container.get_wrapped_container().start()
        if not wait_mqtt_ready(self._host, self._port, self._start_timeout):
            tail = "\n".join(self.log_text().splitlines()[-20:])
            raise BrokerError(
                f"mosquitto container did not answer MQTT on {self.url} within "
                f"{self._start_timeout:.0f} s; log tail:\n{tail}"
            )
        return self

    def stop(self) -> None:
        if self._container is not None:
            # docker stop: SIGTERM, then SIGKILL after the timeout, like MosquittoBroker.stop.
            self._container.get_wrapped_container().stop(timeout=self._stop_timeout)

    def kill(self) -> None:
        if self._container is not None:
            self._container.get_wrapped_container().kill()

    def restart(self) -> Self:
        self.stop()
        return self.start()

    def close(self) -> None:
        container, self._container = self._container, None
        try:
            if container is not None:
                container.stop()  # removes the container and its volumes
        finally:
            if self._workdir is not None:
                shutil.rmtree(self._workdir, ignore_errors=True)
                self._workdir = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<DockerMosquittoBroker {self.url} image={self._image}>"


Backend = Literal["mosquitto", "docker", "inprocess"]


def requested_backend() -> Backend | None:
    """The back end forced through EDGETWIN_TEST_BROKER, or None to choose automatically."""
    value = os.environ.get(ENV_VAR, "").strip().lower()
    if value in {"", "auto"}:
        return None
    if value == "mosquitto":
        return "mosquitto"
    if value == "docker":
        return "docker"
    if value == "inprocess":
        return "inprocess"
    raise pytest.UsageError(f"{ENV_VAR}={value!r}: expected one of {', '.join(BACKENDS)}")


def start_docker_broker(*, persistence: bool = False) -> DockerMosquittoBroker:
    """Start mosquitto in a container, or skip the test when Docker cannot provide it."""
    error = docker_engine_error()
    if error is not None:
        pytest.skip(f"no Docker engine for the testcontainers mosquitto broker: {error}")
    try:
        return DockerMosquittoBroker(persistence=persistence).start()
    except BrokerError:
        raise  # the container ran but mosquitto in it did not answer: a real failure
    except Exception as exc:  # pulling the image needs a registry, which may be unreachable
        pytest.skip(f"Docker engine answers but the {DOCKER_IMAGE} container failed: {exc}")


def start_test_broker(
    backend: Backend | None = None, *, persistence: bool = False
) -> BrokerUnderTest:
    """Start a private broker from `backend`, EDGETWIN_TEST_BROKER, or the best available.

    Calls `pytest.skip` with the reason when the chosen back end cannot run here.
    """
    backend = backend or requested_backend()
    if backend == "mosquitto" or (backend is None and MosquittoBroker.available()):
        if not MosquittoBroker.available():
            pytest.skip(f"{ENV_VAR}=mosquitto but no mosquitto binary on PATH or in /usr/sbin")
        return MosquittoBroker(persistence=persistence).start()
    if backend == "inprocess":
        if persistence:
            pytest.skip("the in-process amqtt broker keeps no state across restarts")
        if not InProcessBroker.available():
            pytest.skip(f"{ENV_VAR}=inprocess but amqtt is missing: install edgetwin[demo]")
        return InProcessBroker().start()
    # Docker, forced or as the fallback.
    error = docker_engine_error()
    if error is not None:
        if backend == "docker":
            pytest.skip(f"{ENV_VAR}=docker but no Docker engine answers: {error}")
        pytest.skip(
            "no mosquitto binary and no Docker engine: install mosquitto (apt install "
            f"mosquitto) or start Docker, or set {ENV_VAR}=inprocess for amqtt "
            f"(MQTT 3.1.1 only). Docker: {error}"
        )
    return start_docker_broker(persistence=persistence)
