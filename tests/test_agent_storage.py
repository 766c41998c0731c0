"""The agent and its state directory: a disk that fills up while the agent
runs is ridden out and recovered from by itself; a state directory that cannot be used at
start-up is one line and an exit status systemd does not restart on.

A full disk is faked without root by a file-size limit on the agent process (RLIMIT_FSIZE,
set from outside with prlimit; Python ignores SIGXFSZ, so writes fail with EFBIG as they fail
with ENOSPC on a full disk); a real full tmpfs is used as well when running as root.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edgetwin.agent.config import EXIT_CONFIG
from edgetwin.agent.contract import DeviceState, Telemetry
from edgetwin.gateway.broker import free_port
from edgetwin.testing.broker import Broker
from edgetwin.testing.capture import Capture, Message
from edgetwin.testing.process import start_edgetwin, stop_process
from edgetwin.testing.waiting import poll
from tests.conftest import BrokerFactory
from tests.fleet_helpers import REPO
from tests.session_subscriber import SessionSubscriber

DEVICE = "pi-full-disk"
AS_ROOT = os.geteuid() == 0


def agent_toml(broker: Broker, state_dir: Path, interval: float = 0.05) -> str:
    return f"""
[agent]
device_id = "{DEVICE}"
state_dir = "{state_dir}"
state_interval = 0.3
twin_wait = 0

[mqtt]
host = "{broker.host}"
port = {broker.port}
protocol = "{broker.protocol}"
keepalive = 2
reconnect_min_delay = 0.1
reconnect_max_delay = 0.5

[outbox]
commit_interval = 0.05

[sensors.env]
driver = "bme280"
address = 0x76
interval = {interval}
backend = "emulated"
"""


def state_of(message: Message) -> DeviceState:
    return DeviceState.decode(message.payload)


def state_where(check: Callable[[DeviceState], bool]) -> Callable[[Message], bool]:
    return lambda m: m.topic.endswith("/state") and check(state_of(m))


def is_reading(message: Message) -> bool:
    return "/telemetry/" in message.topic


def seq_of(message: Message) -> int:
    return Telemetry.decode(message.payload).seq


def limit_file_size(pid: int, size: int) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (size, hard))


@pytest.mark.integration
def test_a_disk_that_fills_up_is_ridden_out_and_recovered_from(
    broker: Broker, tmp_path: Path
) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(agent_toml(broker, tmp_path / "state"))
    with Capture(broker, [f"edgetwin/{DEVICE}/telemetry/+", f"edgetwin/{DEVICE}/state"]) as sub:
        agent = start_edgetwin(["agent", "--config", str(config)])
        try:
            sub.wait_for(is_reading, count=5, timeout=15)
            # The disk is full: no file of the agent's may grow past 4 KiB, so every commit's
            # WAL frames are refused.
            limit_file_size(agent.pid, 4096)
            full = sub.wait_for(state_where(lambda s: s.storage_error is not None), timeout=15)
            assert full[0].received_at  # reported in the state document, with the cause
            before = len([m for m in sub.messages() if is_reading(m)])
            # Live readings keep flowing, unstored and counted.
            sub.wait_for(is_reading, count=before + 20, timeout=15)
            sub.wait_for(state_where(lambda s: s.unstored >= 10), timeout=15)
            assert agent.poll() is None, "the agent died on a full disk"
            # Space comes back: the agent notices by itself and stores again.
            limit_file_size(agent.pid, resource.RLIM_INFINITY)
            recovered_after = len(sub.messages())
            sub.wait_for(
                lambda m: (
                    sub.messages().index(m) >= recovered_after
                    and state_where(lambda s: s.storage_error is None)(m)
                ),
                timeout=20,
            )
            done = len([m for m in sub.messages() if is_reading(m)])
            sub.wait_for(is_reading, count=done + 10, timeout=15)
        finally:
            code, stderr = stop_process(agent)
        assert code == 0, stderr
        lines = [line for line in stderr.splitlines() if "outbox cannot write" in line]
        assert len(lines) == 1, stderr  # one line for the whole condition, not one per retry
        assert str(tmp_path / "state" / "outbox.db") in lines[0]
        last = max(seq_of(m) for m in sub.messages() if is_reading(m))
        # The numbers handed out while the disk was full were stored once it was not: a
        # restarted agent carries on after them, and no number ever meant two readings.
        again = start_edgetwin(["agent", "--config", str(config)])
        try:
            sub.wait_for(lambda m: is_reading(m) and seq_of(m) > last, count=3, timeout=15)
        finally:
            code, stderr = stop_process(again)
        assert code == 0, stderr
    values: dict[int, bytes] = {}
    for message in sub.messages():
        if is_reading(message):
            reading = Telemetry.decode(message.payload)
            values.setdefault(reading.seq, message.payload)
            assert values[reading.seq] == message.payload, f"seq {reading.seq} sent twice"
    first_of_restart = min(seq_of(m) for m in sub.messages() if is_reading(m) and seq_of(m) > last)
    assert first_of_restart == last + 1


def agent_metric(port: int, name: str) -> float | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return None
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    return float(match[1]) if match else None


@pytest.mark.integration
@pytest.mark.parametrize("fill", ["file_size_limit", "real_tmpfs"])
def test_a_disk_that_fills_while_the_broker_is_away_loses_nothing_it_buffered(
    broker_factory: BrokerFactory, tmp_path: Path, fill: str
) -> None:
    """The tester's case: broker away, disk then full. The agent used to exit 1 and lose what
    it held in memory; now it keeps it, sends it when the broker is back, and stores again
    when space is back, without a gap in the numbering."""
    with contextlib.ExitStack() as stack:
        if fill == "real_tmpfs":
            state_dir = stack.enter_context(tmpfs(tmp_path / "small", "size=2m")) / "state"
        else:
            state_dir = tmp_path / "state"
        broker = broker_factory(persistence=True)
        port = free_port()
        config = tmp_path / "agent.toml"
        config.write_text(
            agent_toml(broker, state_dir)
            + f'\n[observability]\nprometheus_port = {port}\nprometheus_host = "127.0.0.1"\n'
        )
        sub = stack.enter_context(SessionSubscriber(broker, f"edgetwin/{DEVICE}/telemetry/+"))
        agent = start_edgetwin(["agent", "--config", str(config)])
        try:
            sub.wait(lambda: len(sub.payloads) >= 5, 15, "first readings")
            broker.stop()
            filler = state_dir.parent / "filler"
            if fill == "real_tmpfs":
                with contextlib.suppress(OSError), filler.open("wb") as handle:
                    while True:
                        handle.write(b"\0" * 65536)
                        handle.flush()
            else:
                limit_file_size(agent.pid, 4096)
            poll(
                lambda: agent_metric(port, "edgetwin_agent_storage_failing") == 1.0,
                15,
                what="the agent reporting the full disk",
            )
            assert agent.poll() is None, "the agent died on a full disk with no broker"
            broker.start()
            heard = len(sub.payloads)
            sub.wait(lambda: len(sub.payloads) >= heard + 20, 20, "readings after the outage")
            assert (agent_metric(port, "edgetwin_agent_unstored") or 0) > 0
            if fill == "real_tmpfs":
                filler.unlink()
            else:
                limit_file_size(agent.pid, resource.RLIM_INFINITY)
            poll(
                lambda: agent_metric(port, "edgetwin_agent_storage_failing") == 0.0,
                20,
                what="the agent storing again",
            )
            heard = len(sub.payloads)
            sub.wait(lambda: len(sub.payloads) >= heard + 5, 15, "readings after recovery")
        finally:
            code, stderr = stop_process(agent)
        assert code == 0, stderr
        seqs = sub.distinct("env")

    # Nothing the agent held while it could neither store nor send was lost.
    assert seqs == set(range(1, max(seqs) + 1)), sorted(set(range(1, max(seqs) + 1)) - seqs)


def run_agent(config: Path, preexec: Callable[[], None] | None = None) -> tuple[int, str]:
    try:
        result = subprocess.run(
            [sys.executable, "-m", "edgetwin", "agent", "--config", str(config)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            preexec_fn=preexec,
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"the agent ran on: {exc.stderr!r}") from None
    return result.returncode, result.stderr


@contextlib.contextmanager
def tmpfs(path: Path, options: str) -> Iterator[Path]:
    """A real tmpfs at `path`; skips the test where it cannot be mounted (not root)."""
    if not AS_ROOT:
        pytest.skip("mounting a tmpfs needs root")
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def assert_one_line(code: int, stderr: str, state_dir: Path, cause: str) -> None:
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert lines == [f"edgetwin agent: state directory {state_dir}: {cause}"], stderr
    assert code == EXIT_CONFIG


@pytest.mark.parametrize("where", ["under_a_regular_file", "a_regular_file"])
def test_a_state_directory_that_is_no_directory_is_one_line(where: str, tmp_path: Path) -> None:
    regular = tmp_path / "regular"
    regular.write_text("")
    state_dir = regular / "state" if where == "under_a_regular_file" else regular
    config = tmp_path / "agent.toml"
    config.write_text(f'[agent]\ndevice_id = "{DEVICE}"\nstate_dir = "{state_dir}"\n')
    code, stderr = run_agent(config)
    cause = "Not a directory" if where == "under_a_regular_file" else "not a directory"
    assert_one_line(code, stderr, state_dir, cause)


def test_a_read_only_state_directory_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    if AS_ROOT:  # root writes through permissions: only a read-only mount stops it
        context: contextlib.AbstractContextManager[Path] = tmpfs(tmp_path / "ro", "ro,size=64k")
        cause = "Read-only file system"
    else:
        (tmp_path / "ro").mkdir(mode=0o555)
        context = contextlib.nullcontext(tmp_path / "ro")
        cause = "Permission denied"
    with context as read_only:
        state_dir = read_only / "state"
        config.write_text(f'[agent]\ndevice_id = "{DEVICE}"\nstate_dir = "{state_dir}"\n')
        code, stderr = run_agent(config)
    assert_one_line(code, stderr, state_dir, cause)


def test_a_full_disk_at_start_up_is_one_line(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    config = tmp_path / "agent.toml"
    config.write_text(f'[agent]\ndevice_id = "{DEVICE}"\nstate_dir = "{state_dir}"\n')
    code, stderr = run_agent(
        config, lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.RLIM_INFINITY))
    )
    assert_one_line(code, stderr, state_dir, "File too large")


def test_a_full_tmpfs_at_start_up_is_one_line(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "small", "size=64k") as small:
        with contextlib.suppress(OSError), (small / "filler").open("wb") as filler:
            while True:
                filler.write(b"\0" * 4096)
                filler.flush()
        state_dir = small / "state"
        config = tmp_path / "agent.toml"
        config.write_text(f'[agent]\ndevice_id = "{DEVICE}"\nstate_dir = "{state_dir}"\n')
        code, stderr = run_agent(config)
    assert_one_line(code, stderr, state_dir, "No space left on device")
