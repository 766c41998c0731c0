"""A private MQTT broker for your tests and notebooks, started from code and thrown away after.

    from edgetwin.testing.broker import start_broker

    with start_broker(auth=True, tls=True) as broker:
        client = broker.endpoint.paho_client()      # TLS and the password already set up
        client.connect(broker.host, broker.port)

`start_broker()` returns a started `Broker` on a free port of 127.0.0.1 that nobody else uses.
The port is chosen once and kept by `stop()`, `kill()`, `restart()` and `start()`, so clients
reconnect to the same address, as they would to a production broker that went away and came
back. Where the broker comes from, in order:

- ``mosquitto``: the mosquitto binary, as a child process, when it is installed;
- ``docker``: the eclipse-mosquitto image through testcontainers, when a Docker engine answers;
- ``inprocess``: amqtt inside this process (MQTT 3.1.1 only, no auth, TLS nor persistence),
  only when asked for by name.

``EDGETWIN_TEST_BROKER=mosquitto|docker|inprocess`` forces a back end for every broker that
does not name one. When the back end cannot run here, `BrokerUnavailable` says why; the pytest
fixtures turn it into a skip, a notebook shows it.

Variants, each on mosquitto and in Docker (the files are copied into the container):

- ``auth=True`` or ``users={...}``: no anonymous clients, a password file;
- ``tls=True``: a TLS-only listener with certificates made for the broker (`edgetwin.testing.
  certs`); ``client_certificates=[...]`` also asks every client for a certificate from its CA;
- ``acl_devices=[...]``: the ACL and password files of `edgetwin broker-acl` (one identity per
  device plus the gateway, engine and reader identities), so a device can only write its own
  topics, as in production.

Each identity's way in is an `MqttEndpoint` (`broker.endpoint`, `broker.endpoint_for(name)`,
`broker.device_endpoint(device_id)`, ...), which every `edgetwin.testing` helper accepts.
"""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import shutil
import signal
import socket
import ssl
import tempfile
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Final, Literal, Self

from edgetwin.agent.contract import Topics
from edgetwin.gateway.acl import (
    ENGINE_USER,
    GATEWAY_USER,
    READER_USER,
    SIMULATE_USER,
    password_line,
    read_identities,
    write_broker_files,
)
from edgetwin.gateway.broker import BrokerError, InProcessBroker, MosquittoBroker, free_port
from edgetwin.testing.certs import OPENSSL_MISSING, KeyPair, OpensslError, Pki, make_pki
from edgetwin.testing.endpoint import MqttEndpoint

if TYPE_CHECKING:
    from testcontainers.core.container import DockerContainer

__all__ = [
    "BACKENDS",
    "DEFAULT_USER",
    "DOCKER_IMAGE",
    "ENV_VAR",
    "Backend",
    "BackendServer",
    "Broker",
    "BrokerUnavailable",
    "DockerMosquitto",
    "docker_engine_error",
    "mqtt_handshake",
    "requested_backend",
    "start_broker",
]

Backend = Literal["mosquitto", "docker", "inprocess"]
BACKENDS: Final[tuple[Backend, ...]] = ("mosquitto", "docker", "inprocess")
ENV_VAR: Final = "EDGETWIN_TEST_BROKER"
"""The environment variable that forces a back end: mosquitto, docker, inprocess (or auto)."""
DOCKER_IMAGE: Final = "eclipse-mosquitto:2"
DEFAULT_USER: Final = "edgetwin-test"
"""The identity `Broker.endpoint` uses on a broker with passwords or client certificates."""

# Where the Docker path puts the variants' files; /mosquitto/config exists in the image, so no
# directory has to be created inside the container.
_CONTAINER_DIR: Final = "/mosquitto/config"
_POLL_INTERVAL: Final = 0.05


class BrokerUnavailable(Exception):
    """The broker asked for cannot run on this machine; `reason` says what is missing.

    Raised for a missing mosquitto binary, no Docker engine, no openssl for TLS, or a variant
    the chosen back end cannot provide. pytest fixtures turn it into a skip.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# -- probing ---------------------------------------------------------------------------------


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(data: bytes) -> bytes:
    return len(data).to_bytes(2, "big") + data


def mqtt_handshake(endpoint: MqttEndpoint, timeout: float = 1.0) -> bool:
    """Whether a broker accepts a CONNECT from `endpoint`'s identity (CONNACK 0), over TLS when
    the endpoint has a CA file.

    Stronger than a TCP connect: Docker's port proxy accepts connections before the broker in
    the container listens, so only an MQTT answer proves the broker is there. Speaks MQTT
    3.1.1, which every broker edgetwin starts understands.
    """
    flags = 0x02  # clean session
    payload = _field(b"edgetwin-probe-" + secrets.token_hex(4).encode())
    if endpoint.username is not None:
        flags |= 0x80
        payload += _field(endpoint.username.encode())
        if endpoint.password is not None:
            flags |= 0x40
            payload += _field(endpoint.password.encode())
    # Protocol name, level 4 (3.1.1), flags, keep-alive 5 s.
    body = _field(b"MQTT") + bytes([4, flags, 0, 5]) + payload
    connect = b"\x10" + _remaining_length(len(body)) + body
    try:
        context = endpoint.ssl_context()
        with socket.create_connection((endpoint.host, endpoint.port), timeout=timeout) as raw:
            sock = (
                raw if context is None else context.wrap_socket(raw, server_hostname=endpoint.host)
            )
            with sock:
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
    except (OSError, ssl.SSLError):
        return False


def _wait_mqtt_ready(endpoint: MqttEndpoint, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if mqtt_handshake(endpoint, timeout=min(1.0, max(deadline - time.monotonic(), 0.05))):
            return True
        if time.monotonic() >= deadline:
            return False
        # A refused connection returns at once; pace the retries instead of spinning.
        time.sleep(_POLL_INTERVAL)


@functools.cache
def docker_engine_error() -> str | None:
    """None when a Docker engine answers a ping, else why not (asked once per process)."""
    try:
        import testcontainers  # noqa: F401 - probing an optional dependency
    except ImportError:
        return "testcontainers is not installed (pip install testcontainers)"
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


def requested_backend() -> Backend | None:
    """The back end forced through EDGETWIN_TEST_BROKER, or None to choose automatically.

    Raises ValueError for a value that names no back end.
    """
    value = os.environ.get(ENV_VAR, "").strip().lower()
    if value in {"", "auto"}:
        return None
    for backend in BACKENDS:
        if value == backend:
            return backend
    raise ValueError(f"{ENV_VAR}={value!r}: expected one of {', '.join(BACKENDS)} or auto")


# -- what the variants put on disk ------------------------------------------------------------


@dataclass(frozen=True)
class _Security:
    """The files a variant needs and the mosquitto.conf lines that use them."""

    passwords: Path | None = None
    acl: Path | None = None
    pki: Pki | None = None
    require_certificate: bool = False

    def files(self) -> dict[str, Path]:
        """The files mosquitto reads, by the name they get inside a container."""
        files: dict[str, Path] = {}
        if self.passwords is not None:
            files["passwords"] = self.passwords
        if self.acl is not None:
            files["acl"] = self.acl
        if self.pki is not None:
            files |= {
                "ca.crt": self.pki.ca.cert,
                "server.crt": self.pki.server.cert,
                "server.key": self.pki.server.key,
            }
        return files

    def config_lines(self, place: Callable[[str, Path], str]) -> list[str]:
        """mosquitto.conf lines for the broker's single listener; `place` maps a file to the
        path the broker reads it at."""
        where = {name: place(name, path) for name, path in self.files().items()}
        lines: list[str] = []
        if "passwords" in where:
            # Later than the base config's `allow_anonymous true`: the last setting wins.
            lines += ["allow_anonymous false", f"password_file {where['passwords']}"]
        if "acl" in where:
            lines.append(f"acl_file {where['acl']}")
        if self.pki is not None:
            # Listener options: they apply to the listener defined last, the only one.
            lines += [
                f"cafile {where['ca.crt']}",
                f"certfile {where['server.crt']}",
                f"keyfile {where['server.key']}",
            ]
        if self.require_certificate:
            lines += ["require_certificate true", "use_identity_as_username true"]
        return lines


# -- the Docker back end ----------------------------------------------------------------------


class DockerMosquitto:
    """mosquitto in a Docker container (testcontainers), with the face of `MosquittoBroker`.

    The container is created by the first `start()` and removed by `close()`; `stop()`,
    `kill()` and `restart()` stop and start the same container (``docker stop``/``kill``/
    ``start``), so its host port, pinned at construction, does not change. The pin assumes a
    local engine: the port is checked free on this machine. The config and the variant's
    files (passwords, ACL, certificates) are copied into the container before it starts, not
    bind-mounted, so they reach a remote engine too. With ``persistence=True`` the database
    lives in the container's own layer, which survives a stop but not `close()`.

    Constructing one contacts no Docker engine: `config_text()` and `copies()` show what the
    container will get.
    """

    protocol: Literal["5"] = "5"
    CONTAINER_PORT: Final = 1883

    def __init__(
        self,
        *,
        persistence: bool = False,
        security: _Security | None = None,
        image: str = DOCKER_IMAGE,
        ready: Callable[[str, int], MqttEndpoint] | None = None,
        start_timeout: float = 60.0,
        stop_timeout: int = 5,
    ) -> None:
        self._persistence = persistence
        self._security = security or _Security()
        self._image = image
        # 0.0.0.0: Docker publishes on every interface, so the port must be free on all.
        self._port = free_port("0.0.0.0")  # noqa: S104 - probing a port, not serving on it
        self._host = "127.0.0.1"
        self._ready = ready or MqttEndpoint
        self._start_timeout = start_timeout
        self._stop_timeout = stop_timeout
        self._container: DockerContainer | None = None

    @property
    def host(self) -> str:
        """The Docker host's address, where the port is published."""
        return self._host

    @property
    def port(self) -> int:
        """The host port, the same for the container's whole life."""
        return self._port

    @property
    def url(self) -> str:
        """mqtt://host:port."""
        return f"mqtt://{self._host}:{self._port}"

    @property
    def is_running(self) -> bool:
        """Whether the container exists and runs (it may still be starting mosquitto)."""
        if self._container is None:
            return False
        wrapped = self._container.get_wrapped_container()
        wrapped.reload()
        return bool(wrapped.status == "running")

    @staticmethod
    def container_path(name: str) -> str:
        """Where the variant file called `name` (passwords, acl, ca.crt, ...) is copied."""
        return f"{_CONTAINER_DIR}/edgetwin-{name}"

    def config_text(self) -> str:
        """The mosquitto.conf the container runs with."""
        lines = [
            "# Generated by edgetwin.testing.broker for a private, throw-away broker.",
            f"listener {self.CONTAINER_PORT}",
            "allow_anonymous true",
            "log_dest stdout",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "set_tcp_nodelay true",
        ]
        if self._persistence:
            # The image's data directory, in the container's layer: kept across docker stop.
            lines += [
                "persistence true",
                "persistence_location /mosquitto/data/",
                "autosave_on_changes true",
                "autosave_interval 1",
            ]
        else:
            lines.append("persistence false")
        lines += self._security.config_lines(lambda name, _path: self.container_path(name))
        return "\n".join(lines) + "\n"

    def copies(self) -> list[tuple[bytes, str]]:
        """What is copied into the container before it starts: (content, path inside)."""
        copies = [(self.config_text().encode(), f"{_CONTAINER_DIR}/mosquitto.conf")]
        for name, path in self._security.files().items():
            copies.append((path.read_bytes(), self.container_path(name)))
        return copies

    def log_text(self) -> str:
        """The container's output so far: mosquitto logs to stdout."""
        if self._container is None:
            return ""
        stdout, stderr = self._container.get_logs()
        return (stdout + stderr).decode(errors="replace")

    def start(self) -> Self:
        """Create and start the container, or start it again; return once it answers MQTT.

        Raises `BrokerUnavailable` when no Docker engine answers or the container cannot be
        created (the image pull needs a registry), `BrokerError` when mosquitto in it fails.
        """
        if self._container is None:
            error = docker_engine_error()
            if error is not None:
                raise BrokerUnavailable(f"no Docker engine answers: {error}")
            from testcontainers.core.container import DockerContainer

            container = DockerContainer(self._image).with_bind_ports(
                self.CONTAINER_PORT, self._port
            )
            for content, path in self.copies():
                # World-readable: the image's mosquitto user must read files root copied in.
                # mosquitto 2 warns about a readable password file and loads it.
                container.with_copy_into_container(content, path, 0o644)
            try:
                container.start()
            except Exception as exc:
                # A container that was created but never became ready must not outlive us.
                with contextlib.suppress(Exception):
                    container.stop()
                raise BrokerUnavailable(
                    f"a Docker engine answers but the {self._image} container failed: {exc}"
                ) from exc
            self._container = container
            self._host = container.get_container_host_ip()
        elif not self.is_running:
            self._container.get_wrapped_container().start()
        if not _wait_mqtt_ready(self._ready(self._host, self._port), self._start_timeout):
            tail = "\n".join(self.log_text().splitlines()[-20:])
            raise BrokerError(
                f"mosquitto container did not answer MQTT on {self.url} within "
                f"{self._start_timeout:.0f} s; log tail:\n{tail}"
            )
        return self

    def stop(self) -> None:
        """docker stop: SIGTERM, then SIGKILL after the timeout, like MosquittoBroker.stop."""
        if self._container is not None:
            self._container.get_wrapped_container().stop(timeout=self._stop_timeout)

    def kill(self) -> None:
        """docker kill: SIGKILL, a crash."""
        if self._container is not None:
            self._container.get_wrapped_container().kill()

    def reload(self) -> None:
        """SIGHUP: mosquitto rereads its password and ACL files."""
        if self._container is not None:
            self._container.get_wrapped_container().kill(signal="SIGHUP")

    def freeze(self) -> None:
        """docker pause: the broker keeps its sockets but answers nothing."""
        if self._container is not None:
            self._container.get_wrapped_container().pause()

    def thaw(self) -> None:
        """docker unpause."""
        if self._container is not None:
            self._container.get_wrapped_container().unpause()

    def restart(self) -> Self:
        """Stop, then start the same container again."""
        self.stop()
        return self.start()

    def close(self) -> None:
        """Remove the container. Safe to call twice."""
        container, self._container = self._container, None
        if container is not None:
            container.stop()  # removes the container and its volumes

    def __repr__(self) -> str:
        return f"<DockerMosquitto {self.url} image={self._image}>"


# -- the broker -------------------------------------------------------------------------------

BackendServer = MosquittoBroker | DockerMosquitto | InProcessBroker
"""The back end's own object behind a `Broker` (`Broker.server`)."""


class Broker:
    """A private MQTT broker for a test: its address, identities and lifecycle.

    Build one with `start_broker()` (started) or ``Broker(...)`` (not started yet; ``with
    Broker(...) as broker:`` starts it and closes it at the end). The arguments are those of
    `start_broker`. Construction chooses the back end and writes the variant's files, and
    raises `BrokerUnavailable` when this machine cannot provide them; with ``"docker"`` named,
    `start()` is the first to ask the engine.

    `host`, `port` and `url` stay the same across `stop()`, `kill()`, `restart()` and
    `start()`. `close()` stops the broker for good and deletes its files.
    """

    def __init__(
        self,
        backend: Backend | None = None,
        *,
        persistence: bool = False,
        auth: bool = False,
        users: Mapping[str, str] | None = None,
        tls: bool | Pki = False,
        client_certificates: Iterable[str] = (),
        acl_devices: Iterable[str] | None = None,
        topics: Topics | None = None,
        workdir: Path | None = None,
    ) -> None:
        cert_names = tuple(client_certificates)
        users = dict(users or {})
        acl = acl_devices is not None
        if cert_names and (auth or users or acl):
            raise ValueError(
                "client_certificates= names clients by their certificates: it cannot be "
                "combined with auth=, users= or acl_devices="
            )
        if acl and users:
            raise ValueError(
                "acl_devices= makes the identities of `edgetwin broker-acl`; "
                "users= cannot add others"
            )
        tls_wanted = bool(tls) or bool(cert_names)
        self.backend: Backend = _choose_backend(
            backend, tls=tls_wanted, secured=bool(auth or users or acl or cert_names),
            persistence=persistence,
        )  # fmt: skip
        self._owns_workdir = workdir is None
        self._workdir = (
            Path(tempfile.mkdtemp(prefix="edgetwin-broker-")) if workdir is None else workdir
        )
        self._workdir.mkdir(parents=True, exist_ok=True)
        # A broker its owner forgot to close must not leave its secrets in /tmp; the process
        # and the container have finalisers of their own (MosquittoBroker, testcontainers).
        self._cleanup = weakref.finalize(
            self, shutil.rmtree, self._workdir, ignore_errors=True
        ) if self._owns_workdir else None  # fmt: skip
        self._users: dict[str, str] = {}
        self._acl_dir: Path | None = None
        self._default: str | None = None
        try:
            pki = self._make_pki(tls, cert_names) if tls_wanted else None
            passwords: Path | None = None
            acl_file: Path | None = None
            if acl:
                self._acl_dir = self._workdir / "broker-acl"
                write_broker_files(self._acl_dir, topics or Topics(), acl_devices or ())
                passwords, acl_file = self._acl_dir / "passwords", self._acl_dir / "acl"
                self._default = GATEWAY_USER
            elif auth or users:
                self._users = {DEFAULT_USER: secrets.token_urlsafe(18), **users}
                passwords = self._workdir / "passwords"
                lines = [password_line(user, pw) for user, pw in self._users.items()]
                passwords.write_text("\n".join(lines) + "\n")
                passwords.chmod(0o600)
                self._default = DEFAULT_USER
            elif cert_names:
                # A Pki of the caller's has no certificate for DEFAULT_USER: its first name.
                self._default = cert_names[0] if isinstance(tls, Pki) else DEFAULT_USER
            self._pki = pki
            self._security = _Security(passwords, acl_file, pki, bool(cert_names))
            self._server = self._make_server(persistence)
        except BaseException:
            self._remove_workdir()
            raise

    # -- construction ---------------------------------------------------------------------

    def _make_pki(self, tls: bool | Pki, names: tuple[str, ...]) -> Pki:
        if isinstance(tls, Pki):
            missing = [name for name in names if name not in tls.clients]
            if missing:
                raise ValueError(f"the Pki given has no client certificate for {missing}")
            return tls
        try:
            return make_pki(self._workdir / "pki", clients=(DEFAULT_USER, *names) if names else ())
        except OpensslError as exc:
            if str(exc) == OPENSSL_MISSING:
                raise BrokerUnavailable(OPENSSL_MISSING) from None
            raise

    def _make_server(self, persistence: bool) -> BackendServer:
        if self.backend == "mosquitto":
            return MosquittoBroker(
                persistence=persistence,
                extra_config=self._security.config_lines(lambda _name, path: str(path)),
            )
        if self.backend == "docker":
            return DockerMosquitto(
                persistence=persistence,
                security=self._security,
                ready=lambda host, port: replace(self.endpoint, host=host, port=port),
            )
        return InProcessBroker()

    def _remove_workdir(self) -> None:
        if self._cleanup is not None:
            self._cleanup()

    # -- where ----------------------------------------------------------------------------

    @property
    def host(self) -> str:
        """The address clients connect to (127.0.0.1, or the Docker host's)."""
        return self._server.host

    @property
    def port(self) -> int:
        """The TCP port, chosen at construction and kept for the broker's whole life."""
        return self._server.port

    @property
    def protocol(self) -> Literal["5", "3.1.1"]:
        """The MQTT version to speak: "5", or "3.1.1" for the in-process amqtt broker."""
        return self._server.protocol

    @property
    def tls(self) -> bool:
        """Whether the listener speaks TLS only."""
        return self._pki is not None

    @property
    def url(self) -> str:
        """mqtt://host:port, or mqtts://host:port with TLS."""
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    @property
    def pki(self) -> Pki | None:
        """The certificates of a TLS broker (CA, server, clients, a wrong CA), else None."""
        return self._pki

    @property
    def workdir(self) -> Path:
        """The directory of the variant's files: ``passwords``, ``pki/``, ``broker-acl/``
        (the output of `edgetwin broker-acl`: acl, passwords, credentials/)."""
        return self._workdir

    @property
    def acl_files(self) -> Path | None:
        """Where the ACL variant's `edgetwin broker-acl` files are; None without an ACL.

        Rewrite them with `edgetwin.gateway.acl.write_broker_files` and call `reload()`;
        `endpoint_for` reads the credentials from here each time, so it follows rotations.
        """
        return self._acl_dir

    @property
    def server(self) -> BackendServer:
        """The back end's own object (MosquittoBroker, DockerMosquitto or InProcessBroker),
        for what only one back end offers, such as `MosquittoBroker.persistence_path`."""
        return self._server

    # -- as whom --------------------------------------------------------------------------

    def _base(self) -> MqttEndpoint:
        return MqttEndpoint(
            self.host,
            self.port,
            protocol=self.protocol,
            ca_file=self._pki.ca.cert if self._pki is not None else None,
        )

    @property
    def identities(self) -> tuple[str, ...]:
        """The names `endpoint_for` knows; empty for a broker that checks nobody (any name
        goes there)."""
        if self._acl_dir is not None:
            return tuple(read_identities(self._acl_dir))
        if self._users:
            return tuple(self._users)
        if self._pki is not None and self._security.require_certificate:
            return tuple(self._pki.clients)
        return ()

    @property
    def endpoint(self) -> MqttEndpoint:
        """How a client reaches this broker by default: anonymously on a plain broker, as
        `DEFAULT_USER` with auth or client certificates, as the gateway identity
        (edgetwin.gateway: reads everything) with an ACL."""
        if self._default is None:
            return self._base()
        return self.endpoint_for(self._default)

    def endpoint_for(self, identity: str) -> MqttEndpoint:
        """How the client called `identity` reaches this broker: its password, or its client
        certificate. On a broker that checks nobody, `identity` is just sent as the username.

        Raises KeyError for a name the broker does not know (see `identities`).
        """
        base = self._base()
        if self._acl_dir is not None:
            known = read_identities(self._acl_dir)
        elif self._users:
            known = self._users
        elif self._pki is not None and self._security.require_certificate:
            if identity not in self._pki.clients:
                raise KeyError(f"no client certificate for {identity!r}: {self.identities}")
            pair: KeyPair = self._pki.clients[identity]
            return replace(base, cert_file=pair.cert, key_file=pair.key)
        else:
            return base.as_user(identity, None)
        if identity not in known:
            raise KeyError(f"{identity!r} is no identity of this broker: {sorted(known)}")
        return base.as_user(identity, known[identity])

    def device_endpoint(self, device_id: str) -> MqttEndpoint:
        """How the agent of `device_id` connects: its own identity on a broker with an ACL
        (it may write only its own topics), else `endpoint`."""
        return self.endpoint_for(device_id) if self._acl_dir is not None else self.endpoint

    @property
    def gateway_endpoint(self) -> MqttEndpoint:
        """The gateway's identity (edgetwin.gateway) with an ACL, else `endpoint`."""
        return self.endpoint_for(GATEWAY_USER) if self._acl_dir is not None else self.endpoint

    @property
    def engine_endpoint(self) -> MqttEndpoint:
        """The simulation engine's identity (edgetwin.engine: simulated readings, labels)
        with an ACL, else `endpoint`."""
        return self.endpoint_for(ENGINE_USER) if self._acl_dir is not None else self.endpoint

    @property
    def simulate_endpoint(self) -> MqttEndpoint:
        """The identity of simulation replicas (edgetwin.simulate: simulated readings, labels,
        shard leases) with an ACL, else `endpoint`."""
        return self.endpoint_for(SIMULATE_USER) if self._acl_dir is not None else self.endpoint

    @property
    def reader_endpoint(self) -> MqttEndpoint:
        """A read-only identity (edgetwin.reader) with an ACL, else `endpoint`."""
        return self.endpoint_for(READER_USER) if self._acl_dir is not None else self.endpoint

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def is_running(self) -> bool:
        """Whether the broker process (or container, or thread) runs."""
        return self._server.is_running

    def start(self) -> Self:
        """Start the broker, or start it again after `stop()` or `kill()`, on the same port;
        return once it accepts connections. A no-op when it runs."""
        self._server.start()
        return self

    def stop(self) -> None:
        """Stop the broker gracefully (SIGTERM; it saves its database with persistence)."""
        self._server.stop()

    def kill(self) -> None:
        """Kill the broker at once (SIGKILL), as a crash or power loss would. With
        persistence, what it saved survives (mosquitto saves right after each change)."""
        self._server.kill()

    def restart(self) -> Self:
        """`stop()`, then `start()`: same port, clients may reconnect."""
        self._server.restart()
        return self

    def reload(self) -> None:
        """Make mosquitto reread its password and ACL files (SIGHUP), keeping its clients;
        it checks the connected ones against the new files. Takes effect shortly after."""
        if isinstance(self._server, InProcessBroker):
            raise BrokerUnavailable("the in-process amqtt broker has no files to reload")
        self._server.reload()

    def freeze(self) -> None:
        """Stop the broker's process without closing anything (SIGSTOP, docker pause): it
        holds every connection and answers nothing, as a hung broker would. `thaw()` resumes."""
        self._signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """Resume a broker frozen by `freeze()`."""
        self._signal(signal.SIGCONT)

    def _signal(self, signum: signal.Signals) -> None:
        server = self._server
        if isinstance(server, DockerMosquitto):
            (server.freeze if signum == signal.SIGSTOP else server.thaw)()
        elif isinstance(server, MosquittoBroker) and server.pid is not None:
            os.kill(server.pid, signum)
        elif isinstance(server, InProcessBroker):
            raise BrokerUnavailable("the in-process amqtt broker runs in this process")

    def log_text(self) -> str:
        """The broker's log so far ("" for the in-process broker)."""
        if isinstance(self._server, InProcessBroker):
            return ""
        return self._server.log_text()

    def close(self) -> None:
        """Stop the broker for good and delete its files. Safe to call twice."""
        try:
            self._server.close()
        finally:
            self._remove_workdir()

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
        state = "running" if self.is_running else "stopped"
        return f"<Broker {self.backend} {self.url} {state}>"


def _choose_backend(
    backend: Backend | None, *, tls: bool, secured: bool, persistence: bool
) -> Backend:
    chosen = backend or requested_backend()
    if chosen == "inprocess":
        if tls or secured:
            raise BrokerUnavailable(
                "the in-process amqtt broker offers no TLS, passwords nor ACL: use mosquitto"
            )
        if persistence:
            raise BrokerUnavailable("the in-process amqtt broker keeps no state across restarts")
        if not InProcessBroker.available():
            raise BrokerUnavailable(
                "amqtt is missing for the in-process broker: install edgetwin[demo]"
            )
        return "inprocess"
    if chosen == "mosquitto" or (chosen is None and MosquittoBroker.available()):
        if not MosquittoBroker.available():
            raise BrokerUnavailable("no mosquitto binary on PATH or in /usr/sbin")
        return "mosquitto"
    if chosen == "docker":
        return "docker"  # whether an engine answers is checked by start()
    error = docker_engine_error()
    if error is not None:
        raise BrokerUnavailable(
            "no mosquitto binary and no Docker engine: install mosquitto (apt install "
            f"mosquitto) or start Docker, or set {ENV_VAR}=inprocess for amqtt "
            f"(MQTT 3.1.1 only). Docker: {error}"
        )
    return "docker"


def start_broker(
    backend: Backend | None = None,
    *,
    persistence: bool = False,
    auth: bool = False,
    users: Mapping[str, str] | None = None,
    tls: bool | Pki = False,
    client_certificates: Sequence[str] = (),
    acl_devices: Iterable[str] | None = None,
    topics: Topics | None = None,
    workdir: Path | None = None,
) -> Broker:
    """Start a private broker on a free port and return it; `close()` it when done (or use
    it as a context manager).

    - `backend`: "mosquitto", "docker" or "inprocess"; None takes EDGETWIN_TEST_BROKER, else
      mosquitto when installed, else Docker when an engine answers.
    - `persistence`: keep retained messages and sessions across stop/kill and start.
    - `auth`: refuse anonymous clients; `endpoint` logs in as `DEFAULT_USER` with a random
      password. `users` (username: password) adds identities and implies `auth`.
    - `tls`: a TLS-only listener with certificates made for this broker (`pki`), or pass a
      `Pki` from `edgetwin.testing.certs.make_pki` to use yours. Needs the openssl command.
    - `client_certificates`: names that get a client certificate; the broker then demands one
      and takes its common name as the username (`endpoint_for(name)`). Implies `tls`.
      `endpoint` shows the certificate of `DEFAULT_USER`, or, with your own `Pki`, of the
      first name (which must be among its clients).
    - `acl_devices`: device ids for the ACL and passwords of `edgetwin broker-acl` (under
      `topics`, default prefix edgetwin): each device may write only its own topics;
      `device_endpoint(id)`, `gateway_endpoint`, `engine_endpoint`,
      `simulate_endpoint`, `reader_endpoint`.
    - `workdir`: where the variant's files go (kept); default a temp dir removed by `close()`.

    Raises `BrokerUnavailable` with the reason when this machine cannot run what is asked.
    """
    broker = Broker(
        backend,
        persistence=persistence,
        auth=auth,
        users=users,
        tls=tls,
        client_certificates=client_certificates,
        acl_devices=acl_devices,
        topics=topics,
        workdir=workdir,
    )
    try:
        return broker.start()
    except BaseException:
        broker.close()
        raise
