"""sd_notify as systemd sees it: READY, WATCHDOG and STOPPING datagrams on NOTIFY_SOCKET.

The agent process runs exactly as a `Type=notify` unit starts it, with NOTIFY_SOCKET pointing
at a datagram socket this test binds in place of systemd's.
"""

from __future__ import annotations

import itertools
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edgetwin.agent.systemd import Notifier
from edgetwin.gateway.broker import free_port
from edgetwin.testing.broker import Broker
from edgetwin.testing.capture import BrokerAddress, Capture
from edgetwin.testing.process import start_edgetwin, stop_process
from tests.fleet_helpers import agent_toml

pytestmark = pytest.mark.integration

DEVICE = "pi-notify"
WATCHDOG_USEC = 200_000  # the agent pings at half of it: every 0.1 s
UNIX_PATH_MAX = 108  # sun_path, including the terminating NUL


class NotifyListener:
    """Stands in for systemd: receives the datagrams sent to NOTIFY_SOCKET, in order, on a
    thread of its own, so that each arrival time is when the datagram came."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._datagrams: list[tuple[float, str]] = []  # (time.monotonic() at arrival, text)
        self._cond = threading.Condition()
        self._closed = threading.Event()
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(address)
        self._socket.settimeout(0.05)  # how soon the receiver notices close()
        self._thread = threading.Thread(target=self._receive, name="notify-listener")
        self._thread.start()

    def _receive(self) -> None:
        while not self._closed.is_set():
            try:
                data = self._socket.recv(4096)
            except TimeoutError:
                continue
            with self._cond:
                self._datagrams.append((time.monotonic(), data.decode()))
                self._cond.notify_all()

    @property
    def env_value(self) -> str:
        """NOTIFY_SOCKET as systemd spells it: a path, or '@name' for an abstract socket."""
        return "@" + self.address[1:] if self.address.startswith("\0") else self.address

    @property
    def datagrams(self) -> list[str]:
        with self._cond:
            return [text for _, text in self._datagrams]

    def fields(self) -> list[str]:
        """Every `KEY=VALUE` line received so far."""
        return [line for datagram in self.datagrams for line in datagram.split("\n")]

    def count(self, field: str) -> int:
        return self.fields().count(field)

    def gaps(self, *fields: str) -> list[float]:
        """Seconds between consecutive datagrams carrying one of `fields`."""
        with self._cond:
            times = [at for at, text in self._datagrams if set(text.split("\n")) & set(fields)]
        return [b - a for a, b in itertools.pairwise(times)]

    def wait_for(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        with self._cond:
            if not self._cond.wait_for(ready, timeout):
                raise TimeoutError(f"no {what} within {timeout} s; received {self.datagrams}")

    def close(self) -> None:
        self._closed.set()
        self._thread.join()
        self._socket.close()


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[NotifyListener]:
    path = str(tmp_path / "notify")
    if len(path) >= UNIX_PATH_MAX:
        pytest.skip(f"tmp_path too long for an AF_UNIX socket path: {path}")
    notify = NotifyListener(path)
    yield notify
    notify.close()


@pytest.fixture
def abstract_listener() -> Iterator[NotifyListener]:
    notify = NotifyListener(f"\0edgetwin-test-notify-{uuid.uuid4().hex}")
    yield notify
    notify.close()


class NoBroker:
    """An endpoint where nothing listens: the broker is down for the whole test."""

    host = "127.0.0.1"
    protocol = "5"

    def __init__(self) -> None:
        self.port = free_port()


def run_agent_and_stop(
    endpoint: BrokerAddress,
    listener: NotifyListener,
    tmp_path: Path,
    while_running: Callable[[], object] = lambda: None,
) -> str:
    """Start the agent process under `listener`, see READY and watchdog pings, call
    `while_running`, SIGTERM it, see STOPPING and exit code 0. Returns the agent's stderr."""
    config = tmp_path / "agent.toml"
    config.write_text(agent_toml(endpoint, DEVICE, tmp_path / "state", interval=0.1))
    process = start_edgetwin(
        ["agent", "--config", str(config)],
        env={"NOTIFY_SOCKET": listener.env_value, "WATCHDOG_USEC": str(WATCHDOG_USEC)},
    )
    try:
        listener.wait_for(lambda: listener.count("READY=1") == 1, 15, "READY=1")
        ready = next(d for d in listener.datagrams if "READY=1" in d.split("\n"))
        assert ready.startswith("READY=1\nSTATUS=2 sensors"), ready
        listener.wait_for(lambda: listener.count("WATCHDOG=1") >= 6, 5, "watchdog pings")
        while_running()
        listener.wait_for(lambda: listener.count("WATCHDOG=1") >= 6, 5, "watchdog pings")
        assert listener.count("STOPPING=1") == 0
        # systemd's clock starts at READY=1: from then on no silence may last a whole timeout,
        # whatever the agent is doing (waiting for the broker, for the twin, reading sensors).
        gaps = listener.gaps("READY=1", "WATCHDOG=1")
        assert max(gaps) < WATCHDOG_USEC / 1e6, f"watchdog gaps {gaps}"
    finally:
        code, stderr = stop_process(process, signal.SIGTERM)
    assert code == 0, stderr
    listener.wait_for(lambda: listener.count("STOPPING=1") == 1, 5, "STOPPING=1")
    fields = listener.fields()
    assert fields.index("READY=1") < fields.index("STOPPING=1")
    assert fields.index("READY=1") < fields.index("WATCHDOG=1")
    assert listener.count("READY=1") == 1
    return stderr


def test_process_notifies_ready_watchdog_and_stopping(
    broker: Broker, listener: NotifyListener, tmp_path: Path
) -> None:
    with Capture(broker, f"edgetwin/{DEVICE}/telemetry/+") as sub:
        stderr = run_agent_and_stop(
            broker, listener, tmp_path, lambda: sub.wait_for(count=3, timeout=10)
        )
    assert '"msg": "agent stopped"' in stderr


def test_ready_does_not_wait_for_the_broker(listener: NotifyListener, tmp_path: Path) -> None:
    stderr = run_agent_and_stop(NoBroker(), listener, tmp_path)
    assert "broker unreachable" in stderr


# -- Notifier on its own ---------------------------------------------------------------------


def test_abstract_namespace_socket(abstract_listener: NotifyListener) -> None:
    assert abstract_listener.env_value.startswith("@")
    notifier = Notifier({"NOTIFY_SOCKET": abstract_listener.env_value})
    assert notifier.enabled
    notifier.ready("2 sensors")
    notifier.watchdog()
    notifier.status("draining")
    notifier.stopping()
    notifier.close()
    abstract_listener.wait_for(lambda: len(abstract_listener.datagrams) == 4, 5, "4 datagrams")
    assert abstract_listener.datagrams == [
        "READY=1\nSTATUS=2 sensors",
        "WATCHDOG=1",
        "STATUS=draining",
        "STOPPING=1",
    ]


def test_path_socket(listener: NotifyListener) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": listener.env_value})
    notifier.ready()
    notifier.close()
    listener.wait_for(lambda: len(listener.datagrams) == 1, 5, "READY=1")
    assert listener.datagrams == ["READY=1"]


def test_without_notify_socket_nothing_happens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    for notifier in (Notifier(), Notifier({})):
        assert not notifier.enabled
        assert notifier.watchdog_interval is None
        notifier.ready("x")
        notifier.watchdog()
        notifier.stopping()
        notifier.close()


def test_a_vanished_notify_socket_is_not_fatal(tmp_path: Path) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    assert notifier.enabled
    notifier.ready()  # logged, not raised: systemd going away must not take the agent with it
    notifier.watchdog()
    notifier.close()


@pytest.mark.parametrize(
    ("watchdog_pid", "interval"),
    [
        (None, 0.1),  # no WATCHDOG_PID: the pings are ours to send
        ("self", 0.1),  # WATCHDOG_PID names this process
        ("other", None),  # WATCHDOG_PID names another process (a parent shell, a wrapper)
        ("1", None),
    ],
)
def test_watchdog_pid_rule(watchdog_pid: str | None, interval: float | None) -> None:
    env = {"NOTIFY_SOCKET": "@unused", "WATCHDOG_USEC": str(WATCHDOG_USEC)}
    if watchdog_pid == "self":
        env["WATCHDOG_PID"] = str(os.getpid())
    elif watchdog_pid == "other":
        env["WATCHDOG_PID"] = str(os.getpid() + 1)
    elif watchdog_pid is not None:
        env["WATCHDOG_PID"] = watchdog_pid
    assert Notifier(env).watchdog_interval == interval


@pytest.mark.parametrize("usec", ["", "abc", "-5", "0", "1.5", "²", "1e6"])
def test_unusable_watchdog_usec_disables_the_watchdog(usec: str) -> None:
    """sd_watchdog_enabled(3) refuses anything but a positive integer; so does the agent,
    rather than crash (int("²")) or ping in a busy loop (an interval of 0)."""
    assert Notifier({"WATCHDOG_USEC": usec}).watchdog_interval is None


def test_watchdog_interval_is_half_the_timeout() -> None:
    assert Notifier({"WATCHDOG_USEC": "30000000"}).watchdog_interval == 15.0
