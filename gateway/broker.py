"""Embedded MQTT brokers for `edgetwin demo` and for the test suite.

Two back ends with one face (`start`, `stop`, `kill`, `restart`, `host`, `port`, `url`,
`protocol`, context manager):

- `MosquittoBroker` runs the real `mosquitto` binary as a child process. It is the reference
  broker of the project (docs/design.md, 'Testing') and speaks MQTT 5.
- `InProcessBroker` runs amqtt inside this process, for machines without mosquitto. amqtt only
  speaks MQTT 3.1.1, so callers must read `protocol` to pick their client protocol.

This module imports neither paho, FastAPI nor uvicorn, and amqtt only inside
`InProcessBroker.start()`, so the agent and the CLI can import it cheaply.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Sequence
from concurrent.futures import Future
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self

if TYPE_CHECKING:
    from amqtt.broker import Broker as AmqttBroker

__all__ = [
    "BrokerError",
    "EmbeddedBroker",
    "InProcessBroker",
    "MosquittoBroker",
    "free_port",
    "start_embedded_broker",
]

logger = logging.getLogger(__name__)

# /usr/sbin is often missing from a non-root PATH although Debian and Ubuntu install mosquitto
# there; Homebrew puts it in an sbin of its own.
_MOSQUITTO_FALLBACK_PATHS = (
    "/usr/sbin/mosquitto",
    "/usr/local/sbin/mosquitto",
    "/opt/homebrew/sbin/mosquitto",
)
# Polling granularity while waiting on a child process or a socket: short enough to keep test
# start-up fast, long enough not to spin a core.
_POLL_INTERVAL = 0.02
_LOG_TAIL_LINES = 20


class BrokerError(Exception):
    """An embedded broker could not be started or stopped."""


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on `host` that nobody listens on right now.

    The port is free only at the time of the call: another process may take it before the
    caller binds it, so starters retry with a new port when binding fails.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _accepts_connections(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _find_mosquitto() -> str | None:
    found = shutil.which("mosquitto")
    if found:
        return found
    for candidate in _MOSQUITTO_FALLBACK_PATHS:
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def _tail(text: str, lines: int = _LOG_TAIL_LINES) -> str:
    return "\n".join(text.splitlines()[-lines:])


class _ProcessResources:
    """What a `MosquittoBroker` must release even if its owner forgets to close it.

    Kept apart from the broker so that `weakref.finalize` can hold it without keeping the
    broker itself alive; the finaliser also runs at interpreter exit, so an aborted test run
    does not leave mosquitto processes listening behind it.
    """

    def __init__(self) -> None:
        self.process: subprocess.Popen[bytes] | None = None
        self.workdir: Path | None = None

    def kill_process(self) -> None:
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def release(self) -> None:
        self.kill_process()
        workdir, self.workdir = self.workdir, None
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)


class MosquittoBroker:
    """A private mosquitto broker in a child process, on its own port and temp directory.

    The port is chosen once, at construction, and kept by `restart()`, so clients configured
    with `host`/`port` can reconnect to the restarted broker. With ``persistence=True`` the
    broker saves its database (retained messages, durable sessions) in the temp directory.
    `stop()` and `restart()` keep everything. `kill()` keeps what was saved: mosquitto saves
    after each change, a few milliseconds after acknowledging it, by writing a new file and
    renaming it to `persistence_path`; a kill inside that window loses the change, as a crash
    would.
    """

    protocol: Literal["5"] = "5"

    def __init__(
        self,
        port: int | None = None,
        *,
        host: str = "127.0.0.1",
        persistence: bool = False,
        binary: str | None = None,
        extra_config: Sequence[str] = (),
        start_timeout: float = 5.0,
        stop_timeout: float = 5.0,
    ) -> None:
        found = binary or _find_mosquitto()
        if found is None:
            raise BrokerError(
                "mosquitto binary not found on PATH nor in "
                f"{', '.join(_MOSQUITTO_FALLBACK_PATHS)}; install mosquitto or use "
                "InProcessBroker (pip install 'edgetwin[demo]')"
            )
        self._binary = found
        self._host = host
        self._port = port if port is not None else free_port(host)
        self._persistence = persistence
        self._extra_config = tuple(extra_config)
        self._start_timeout = start_timeout
        self._stop_timeout = stop_timeout
        self._res = _ProcessResources()
        self._finalizer = weakref.finalize(self, self._res.release)

    @classmethod
    def available(cls) -> bool:
        """Whether a mosquitto binary can be found on this machine."""
        return _find_mosquitto() is not None

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
        proc = self._res.process
        return proc is not None and proc.poll() is None

    @property
    def binary(self) -> str:
        """The mosquitto executable this broker runs."""
        return self._binary

    @property
    def pid(self) -> int | None:
        """The mosquitto process's id while it runs, e.g. to freeze it with SIGSTOP."""
        proc = self._res.process
        return proc.pid if proc is not None and proc.poll() is None else None

    @property
    def workdir(self) -> Path | None:
        """The private temp directory (config, log, persistence file), once started."""
        return self._res.workdir

    @property
    def log_path(self) -> Path | None:
        workdir = self._res.workdir
        return workdir / "mosquitto.log" if workdir is not None else None

    @property
    def persistence_path(self) -> Path | None:
        """mosquitto's database file when persistence is on and the broker was started."""
        workdir = self._res.workdir
        if not self._persistence or workdir is None:
            return None
        return workdir / "mosquitto.db"

    def log_text(self) -> str:
        """The broker's log so far, followed by anything it wrote to stderr."""
        workdir = self._res.workdir
        if workdir is None:
            return ""
        parts = []
        for name in ("mosquitto.log", "stderr.log"):
            with contextlib.suppress(FileNotFoundError):
                parts.append((workdir / name).read_text(errors="replace"))
        return "".join(parts)

    def _config_text(self, workdir: Path) -> str:
        lines = [
            "# Generated by edgetwin.gateway.broker for a private, throw-away broker.",
            f"listener {self._port} {self._host}",
            "allow_anonymous true",
            f"log_dest file {workdir / 'mosquitto.log'}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            # Small MQTT packets must not wait for Nagle's algorithm (40 ms with delayed ACKs).
            "set_tcp_nodelay true",
        ]
        if self._persistence:
            lines += [
                "persistence true",
                f"persistence_location {workdir}/",
                "persistence_file mosquitto.db",  # see persistence_path
                # Save after every change rather than every 30 minutes, so that a fault test
                # which kill()s the broker loses milliseconds of changes, not half an hour.
                "autosave_on_changes true",
                "autosave_interval 1",
            ]
        else:
            lines.append("persistence false")
        if os.geteuid() == 0:
            # Started as root, mosquitto drops to the "mosquitto" user, which cannot write the
            # log into our root-owned 0700 temp directory and would exit at once.
            lines.append("user root")
        lines += self._extra_config
        return "\n".join(lines) + "\n"

    def start(self) -> Self:
        """Launch mosquitto and return once it accepts connections on `port`."""
        if self.is_running:
            return self
        if not self._finalizer.alive:
            # close() already ran the finaliser; re-arm it for this new life of the broker.
            self._finalizer = weakref.finalize(self, self._res.release)
        if self._res.workdir is None:
            self._res.workdir = Path(tempfile.mkdtemp(prefix="edgetwin-mosquitto-"))
        workdir = self._res.workdir
        config = workdir / "mosquitto.conf"
        config.write_text(self._config_text(workdir))
        log_path = workdir / "mosquitto.log"

        deadline = time.monotonic() + self._start_timeout
        while True:
            # Only log lines written by this launch count, since the log outlives restarts.
            offset = log_path.stat().st_size if log_path.exists() else 0
            with open(workdir / "stderr.log", "ab") as stderr:
                proc = subprocess.Popen(  # noqa: S603 - our own binary and config, no shell
                    [self._binary, "-c", str(config)],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=stderr,
                )
            self._res.process = proc
            if self._wait_ready(proc, log_path, offset, deadline):
                logger.debug(
                    "mosquitto %s listening on %s (pid %d)", self._binary, self.url, proc.pid
                )
                return self
            self._res.kill_process()
            log = self.log_text()
            # A restarted broker may briefly find its old port still held by the kernel;
            # anything else (bad config, port taken by another program for good) is final.
            if "Address already in use" in log[offset:] and time.monotonic() < deadline:
                # Back off between launches rather than fork mosquitto in a tight loop.
                time.sleep(_POLL_INTERVAL * 5)
                continue
            raise BrokerError(
                f"mosquitto did not start on {self.url} within {self._start_timeout:.1f} s "
                f"(exit code {proc.returncode}); log tail:\n{_tail(log)}"
            )

    def _wait_ready(
        self, proc: subprocess.Popen[bytes], log_path: Path, offset: int, deadline: float
    ) -> bool:
        # The "running" line is written only after every listener is bound, so a TCP accept
        # that comes with it is ours and not some other program's that holds the same port.
        while time.monotonic() < deadline:
            try:
                proc.wait(timeout=_POLL_INTERVAL)
            except subprocess.TimeoutExpired:
                pass
            else:
                return False
            try:
                with open(log_path, "rb") as log:
                    log.seek(offset)
                    announced = b" running" in log.read()
            except FileNotFoundError:
                announced = False
            if announced and _accepts_connections(self._host, self._port):
                return True
        return False

    def stop(self) -> None:
        """Terminate mosquitto gracefully (SIGTERM), then SIGKILL it after `stop_timeout`."""
        proc = self._res.process
        if proc is None:
            return
        if proc.poll() is None:
            # SIGTERM lets mosquitto write its persistence file and close client sockets.
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=self._stop_timeout)
            except subprocess.TimeoutExpired:
                logger.warning(
                    "mosquitto ignored SIGTERM for %.1f s; killing it", self._stop_timeout
                )
        self._res.kill_process()

    def kill(self) -> None:
        """SIGKILL mosquitto at once, as a crash or power loss would, for fault tests."""
        self._res.kill_process()

    def reload(self) -> None:
        """SIGHUP: mosquitto rereads its password and ACL files, keeping its clients."""
        proc = self._res.process
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGHUP)

    def restart(self) -> Self:
        """Stop, then start again on the same port with the same temp directory."""
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop the broker and delete its temp directory. Safe to call twice."""
        self.stop()
        self._finalizer()

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
        return f"<MosquittoBroker {self.url} {state}>"


class InProcessBroker:
    """amqtt's MQTT 3.1.1 broker on a private event loop in a daemon thread.

    For machines without the mosquitto binary (``pip install 'edgetwin[demo]'``). State lives
    in memory only: `stop()` and `restart()` forget retained messages and sessions. `kill()`
    cannot be a real crash in-process; it drops every connection and the listener at once.
    """

    protocol: Literal["3.1.1"] = "3.1.1"

    def __init__(
        self,
        port: int | None = None,
        *,
        host: str = "127.0.0.1",
        start_timeout: float = 5.0,
        stop_timeout: float = 5.0,
    ) -> None:
        self._host = host
        # An explicit port is a promise to the caller; a chosen one may be swapped on a clash.
        self._port_pinned = port is not None
        self._port = port if port is not None else free_port(host)
        self._start_timeout = start_timeout
        self._stop_timeout = stop_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._broker: AmqttBroker | None = None

    @classmethod
    def available(cls) -> bool:
        """Whether amqtt is installed."""
        try:
            import amqtt.broker  # noqa: F401 - probing an optional dependency
        except ImportError:
            return False
        return True

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
        return self._broker is not None and self._thread is not None and self._thread.is_alive()

    def _config(self) -> dict[str, Any]:
        return {
            "listeners": {"default": {"type": "tcp", "bind": f"{self._host}:{self._port}"}},
            # Only anonymous auth: amqtt's default plugin set also logs every packet and
            # publishes $SYS topics, which is noise in a demo or a test.
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
            },
        }

    def start(self) -> Self:
        """Start the broker thread and return once the listener is bound."""
        if self.is_running:
            return self
        try:
            from amqtt.broker import Broker
        except ImportError as exc:
            raise BrokerError(
                "the in-process MQTT broker needs amqtt: install edgetwin[demo] "
                "(pip install 'edgetwin[demo]'), or install the mosquitto binary"
            ) from exc
        for name in ("amqtt", "transitions"):
            logging.getLogger(name).setLevel(logging.WARNING)

        deadline = time.monotonic() + self._start_timeout
        while True:
            loop = asyncio.new_event_loop()
            thread = threading.Thread(
                target=_run_loop, args=(loop,), name=f"amqtt-broker-{self._port}", daemon=True
            )
            thread.start()

            async def _start() -> AmqttBroker:
                # amqtt binds the broker to the running loop at construction, so build it here.
                broker = Broker(self._config())
                await broker.start()
                return broker

            future: Future[AmqttBroker] = asyncio.run_coroutine_threadsafe(_start(), loop)
            try:
                self._broker = future.result(timeout=max(deadline - time.monotonic(), 0.1))
            except Exception as exc:  # a timeout, amqtt's BrokerError, or anything it raised
                future.cancel()
                _stop_loop(loop, thread, self._stop_timeout)
                if _is_address_in_use(exc) and time.monotonic() < deadline:
                    if not self._port_pinned:
                        self._port = free_port(self._host)
                    continue
                raise BrokerError(f"amqtt broker did not start on {self.url}: {exc}") from exc
            self._loop, self._thread = loop, thread
            logger.debug("amqtt broker listening on %s", self.url)
            return self

    def stop(self) -> None:
        """Shut the broker down and end its thread."""
        broker, loop, thread = self._broker, self._loop, self._thread
        self._broker = self._loop = self._thread = None
        if loop is None or thread is None:
            return
        if broker is not None and thread.is_alive():
            future = asyncio.run_coroutine_threadsafe(broker.shutdown(), loop)
            try:
                future.result(timeout=self._stop_timeout)
            except Exception:
                logger.warning(
                    "amqtt broker on %s did not shut down cleanly", self.url, exc_info=True
                )
        _stop_loop(loop, thread, self._stop_timeout)

    def kill(self) -> None:
        """Drop every connection and the listener at once (no process to SIGKILL here)."""
        self.stop()

    def restart(self) -> Self:
        """Stop, then start again on the same port; in-memory state is lost."""
        self.stop()
        self._port_pinned = True
        return self.start()

    def close(self) -> None:
        self.stop()

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
        return f"<InProcessBroker {self.url} {state}>"


def _is_address_in_use(exc: BaseException) -> bool:
    # amqtt wraps the OSError of the failed bind in its own BrokerError.
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno == errno.EADDRINUSE:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        # Cancel what amqtt left behind (client handlers, keep-alive timers) so nothing is
        # destroyed while pending, which Python reports as an unraisable warning.
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def _stop_loop(loop: asyncio.AbstractEventLoop, thread: threading.Thread, timeout: float) -> None:
    if not loop.is_closed():
        with contextlib.suppress(RuntimeError):  # the loop closed between the check and the call
            loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout)
    if thread.is_alive():
        logger.warning("amqtt broker thread %s did not finish within %.1f s", thread.name, timeout)


EmbeddedBroker = MosquittoBroker | InProcessBroker


def start_embedded_broker(
    prefer: Literal["mosquitto", "inprocess"] = "mosquitto",
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
) -> EmbeddedBroker:
    """Start and return a private broker: mosquitto when installed, else amqtt in-process.

    Read `.protocol` on the result to choose the client's MQTT version ("5" or "3.1.1").
    """
    if prefer == "mosquitto" and MosquittoBroker.available():
        return MosquittoBroker(port, host=host).start()
    return InProcessBroker(port, host=host).start()
