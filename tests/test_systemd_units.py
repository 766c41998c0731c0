"""The systemd units in systemd/: valid, hardened as intended, and livable for the programs.

- `systemd-analyze verify` on copies of both units whose ExecStart runs this checkout (verify
  needs the binary to exist); a deliberately broken copy must be reported, so the check can fail.
- The hardening directives, parsed from the files, with their intended values: an edit that
  weakens one fails here, naming the directive.
- `systemd-analyze security --offline=true`: the exposure score, printed (`pytest -s`) and
  recorded as a test property; asserted only against a generous bound.
- The agent and the gateway run under the system call filter the units ask for
  (SystemCallFilter=, SystemCallErrorNumber=, MemoryDenyWriteExecute=, RestrictAddressFamilies=,
  built from the unit file with libseccomp and loaded before exec), talking sd_notify to a
  socket of the test the way they would to systemd. This needs a Python with the `seccomp`
  module (Debian: apt-get install python3-seccomp); the rest of the sandbox (mounts, users,
  device cgroup) needs systemd as PID 1 and is not emulated here.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import re
import shlex
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edgetwin.agent.config import EXIT_CONFIG, AgentSection, field_default, load_agent_config
from edgetwin.agent.runtime import IDLE_WAIT
from edgetwin.agent.systemd import Notifier
from edgetwin.gateway.broker import free_port
from edgetwin.testing.broker import Broker

ROOT = Path(__file__).resolve().parent.parent
UNITS = ROOT / "systemd"
AGENT_UNIT = UNITS / "edgetwin-agent.service"
GATEWAY_UNIT = UNITS / "edgetwin-gateway.service"
SYSUSERS = UNITS / "edgetwin.sysusers.conf"
GUIDE = ROOT / "docs" / "raspberry-pi.md"

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None,
    reason="systemd-analyze not installed (Debian/Ubuntu: apt-get install systemd)",
)

Unit = dict[str, dict[str, list[str]]]


# -- a tiny unit file parser -----------------------------------------------------------------


def parse_unit(text: str) -> Unit:
    """Sections of `key=value` lines; repeated keys keep every assignment, in order.

    configparser cannot hold repeated keys (DeviceAllow=, SystemCallFilter=), and systemd's
    syntax is simple: comments start with # or ;, a trailing backslash continues a line.
    """
    sections: Unit = {}
    current: dict[str, list[str]] | None = None
    pending = ""
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped[0] in "#;"):
            continue
        line = pending + stripped
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        if current is None or not sep:
            raise ValueError(f"line {number}: not a key=value line in a section: {raw!r}")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


@functools.cache
def load_unit(path: Path) -> Unit:
    return parse_unit(path.read_text(encoding="utf-8"))


def assignments(unit: Unit, section: str, key: str) -> list[str]:
    return list(unit.get(section, {}).get(key, []))


def effective(unit: Unit, section: str, key: str) -> str | None:
    """The value systemd uses for a single-valued setting: the last assignment."""
    values = assignments(unit, section, key)
    return values[-1] if values else None


def list_setting(unit: Unit, key: str) -> list[str]:
    """A list-valued [Service] setting as systemd folds it: an empty assignment resets it."""
    result: list[str] = []
    for value in assignments(unit, "Service", key):
        if not value:
            result = []
        else:
            result.append(value)
    return result


_TRUE = {"1", "yes", "y", "true", "t", "on"}
_FALSE = {"0", "no", "n", "false", "f", "off"}


def boolean(value: str | None) -> bool | None:
    if value is None:
        return None
    lowered = value.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"not a boolean: {value!r}")


_SPAN_UNITS = {
    "us": 1e-6,
    "ms": 1e-3,
    "": 1.0,
    "s": 1.0,
    "sec": 1.0,
    "m": 60.0,
    "min": 60.0,
    "h": 3600.0,
    "hr": 3600.0,
}


def timespan(value: str | None) -> float:
    """systemd.time(7) spans as used here: '30s', '10min', '1min 30s', a bare number = seconds."""
    if value is None:
        raise ValueError("no time span set")
    total = 0.0
    matched = ""
    for match in re.finditer(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)", value):
        total += float(match.group(1)) * _SPAN_UNITS[match.group(2)]
        matched += match.group(0)
    if matched.strip() != value.strip():
        raise ValueError(f"not a time span: {value!r}")
    return total


# -- hardening directives, as intended -------------------------------------------------------

YES = "yes"

COMMON_SERVICE: dict[str, str] = {
    "NoNewPrivileges": YES,
    "ProtectSystem": "strict",
    "ProtectHome": YES,
    "PrivateTmp": YES,
    "ProtectKernelTunables": YES,
    "ProtectKernelModules": YES,
    "ProtectKernelLogs": YES,
    "ProtectControlGroups": YES,
    "ProtectClock": YES,
    "ProtectHostname": YES,
    "RestrictNamespaces": YES,
    "RestrictRealtime": YES,
    "RestrictSUIDSGID": YES,
    "LockPersonality": YES,
    "MemoryDenyWriteExecute": YES,
    "RemoveIPC": YES,
    "SystemCallArchitectures": "native",
    "Restart": "on-failure",
    "RestartPreventExitStatus": str(EXIT_CONFIG),
}

AGENT_SERVICE: dict[str, str] = {
    **COMMON_SERVICE,
    "Type": "notify",
    "NotifyAccess": "main",
    "ExecStart": "/opt/edgetwin/.venv/bin/edgetwin agent --config /etc/edgetwin/agent.toml",
    "EnvironmentFile": "-/etc/edgetwin/agent.env",
    "User": "edgetwin",
    "Group": "edgetwin",
    "StateDirectory": "edgetwin-agent",
    "DevicePolicy": "closed",
}

GATEWAY_SERVICE: dict[str, str] = {
    **COMMON_SERVICE,
    "Type": "exec",
    "ExecStart": "/opt/edgetwin/.venv/bin/edgetwin gateway --config /etc/edgetwin/gateway.toml",
    "EnvironmentFile": "-/etc/edgetwin/gateway.env",
    "DynamicUser": YES,
    "PrivateDevices": YES,
}

BOOLEAN_KEYS = {key for key, value in AGENT_SERVICE.items() if value == YES} | {
    "DynamicUser",
    "PrivateDevices",
}

EXPECTED = [
    *((AGENT_UNIT, key, value) for key, value in AGENT_SERVICE.items()),
    *((GATEWAY_UNIT, key, value) for key, value in GATEWAY_SERVICE.items()),
]


@pytest.mark.parametrize(
    ("path", "key", "expected"),
    EXPECTED,
    ids=[f"{path.stem}:{key}" for path, key, _ in EXPECTED],
)
def test_directive_has_its_intended_value(path: Path, key: str, expected: str) -> None:
    actual = effective(load_unit(path), "Service", key)
    if key in BOOLEAN_KEYS:
        assert boolean(actual) is boolean(expected), f"{path.name}: {key}={actual}"
    else:
        assert actual == expected, f"{path.name}: {key}={actual}, intended {expected}"


@pytest.mark.parametrize("path", [AGENT_UNIT, GATEWAY_UNIT], ids=lambda p: p.stem)
def test_no_capabilities_and_a_narrow_system_call_filter(path: Path) -> None:
    unit = load_unit(path)
    # One empty assignment: no capability at all; any later line would add some back.
    assert assignments(unit, "Service", "CapabilityBoundingSet") == [""]
    assert list_setting(unit, "AmbientCapabilities") == []
    assert assignments(unit, "Service", "SystemCallFilter") == [
        "@system-service",
        "~@privileged @resources",
    ]
    families = " ".join(list_setting(unit, "RestrictAddressFamilies")).split()
    assert sorted(families) == ["AF_INET", "AF_INET6", "AF_UNIX"]
    # Never root, in whatever way: an explicit User=root or no user at all.
    user = effective(unit, "Service", "User")
    assert user not in ("root", "0")
    assert user is not None or boolean(effective(unit, "Service", "DynamicUser"))


@pytest.mark.parametrize("path", [AGENT_UNIT, GATEWAY_UNIT], ids=lambda p: p.stem)
def test_restart_is_limited(path: Path) -> None:
    unit = load_unit(path)
    # In [Unit]: systemd ignores (with a warning) the StartLimit* settings in [Service].
    assert not {"StartLimitIntervalSec", "StartLimitBurst"} & set(unit["Service"])
    interval = timespan(effective(unit, "Unit", "StartLimitIntervalSec"))
    burst = int(effective(unit, "Unit", "StartLimitBurst") or 0)
    restart_delay = timespan(effective(unit, "Service", "RestartSec"))
    assert 1 <= burst <= 10
    assert restart_delay >= 1
    # The limit must be reachable: `burst` restarts, each after RestartSec, fit in the interval.
    assert burst * restart_delay < interval


def test_agent_devices_are_the_i2c_and_gpio_ones_only() -> None:
    unit = load_unit(AGENT_UNIT)
    assert boolean(effective(unit, "Service", "PrivateDevices")) is not True, (
        "PrivateDevices=yes would hide /dev/i2c-* and /dev/gpiochip*"
    )
    assert sorted(list_setting(unit, "DeviceAllow")) == [
        "/dev/gpiomem rw",
        "char-gpiochip rw",
        "char-i2c rw",
    ]
    groups = " ".join(list_setting(unit, "SupplementaryGroups")).split()
    assert sorted(groups) == ["gpio", "i2c"]


def test_agent_watchdog_matches_the_agents_ping_interval() -> None:
    unit = load_unit(AGENT_UNIT)
    watchdog = timespan(effective(unit, "Service", "WatchdogSec"))
    assert 10 <= watchdog <= 120
    # What the agent makes of the WATCHDOG_USEC systemd will pass: a ping every half period,
    # from a loop that wakes at least every IDLE_WAIT seconds.
    notifier = Notifier({"WATCHDOG_USEC": str(int(watchdog * 1_000_000))})
    assert notifier.watchdog_interval is not None
    assert notifier.watchdog_interval == pytest.approx(watchdog / 2)
    assert notifier.watchdog_interval > IDLE_WAIT


def test_agent_stop_timeout_leaves_room_for_the_agents_own_shutdown() -> None:
    unit = load_unit(AGENT_UNIT)
    stop_timeout = timespan(effective(unit, "Service", "TimeoutStopSec"))
    example = load_agent_config(ROOT / "config" / "agent.toml", environ={})
    default = field_default(AgentSection, "shutdown_timeout")
    for shutdown_timeout in (default, example.agent.shutdown_timeout):
        # shutdown_timeout for the outbox, then the offline status, sockets, the database.
        assert stop_timeout >= shutdown_timeout + 5


def test_agent_state_directory_is_where_the_example_config_points() -> None:
    unit = load_unit(AGENT_UNIT)
    state_directory = effective(unit, "Service", "StateDirectory")
    example = load_agent_config(ROOT / "config" / "agent.toml", environ={})
    assert example.agent.state_dir in (None, Path("/var/lib") / str(state_directory))
    # lgpio writes its notification FIFOs into the working directory: the writable state dir.
    assert effective(unit, "Service", "WorkingDirectory") == f"%S/{state_directory}"


def test_install_guide_uses_the_units_paths() -> None:
    guide = GUIDE.read_text(encoding="utf-8")
    for path in (AGENT_UNIT, GATEWAY_UNIT):
        unit = load_unit(path)
        command = shlex.split(str(effective(unit, "Service", "ExecStart")))
        for word in (command[0], command[-1]):
            assert word in guide, f"{word} (from {path.name}) is not in {GUIDE.name}"
    environment_file = str(effective(load_unit(AGENT_UNIT), "Service", "EnvironmentFile"))
    assert environment_file.lstrip("-") in guide
    assert "edgetwin.sysusers.conf" in guide


# -- systemd-analyze verify ------------------------------------------------------------------


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    assert SYSTEMD_ANALYZE is not None
    return subprocess.run(
        [SYSTEMD_ANALYZE, *args], capture_output=True, text=True, timeout=60, check=False
    )


@functools.cache
def analyze_help() -> str:
    return analyze("--help").stdout


def runnable_copy(unit: Path, directory: Path, edit: Callable[[str], str] = str) -> Path:
    """The unit with ExecStart running this checkout's interpreter, written into `directory`."""
    command = shlex.split(str(effective(load_unit(unit), "Service", "ExecStart")))
    program = command[1]  # agent or gateway
    config = directory / f"{program}.toml"
    exec_start = shlex.join([sys.executable, "-m", "edgetwin", program, "--config", str(config)])
    text = re.sub(
        r"^ExecStart=.*$", lambda _: f"ExecStart={exec_start}", unit.read_text(), flags=re.M
    )
    copy = directory / unit.name
    copy.write_text(edit(text), encoding="utf-8")
    return copy


def verify_problems(unit_file: Path) -> list[str]:
    """What `systemd-analyze verify` reports about the unit: [] when it is clean."""
    # --recursive-errors=no (systemd 250+): only this unit's own errors, not its dependencies'.
    recursive = ["--recursive-errors=no"] if "--recursive-errors" in analyze_help() else []
    result = analyze("verify", "--man=no", "--generators=no", *recursive, str(unit_file))
    output = (result.stdout + result.stderr).strip()
    # Warnings ("Unknown key", "Failed to parse") keep exit status 0: any line about our unit
    # is a problem. Lines about other units (a distribution's own) are not ours to fix.
    problems = [line for line in output.splitlines() if unit_file.name in line]
    if result.returncode != 0 and not problems:
        problems = [f"exit status {result.returncode}: {output}"]
    return problems


@needs_analyze
@pytest.mark.parametrize("path", [AGENT_UNIT, GATEWAY_UNIT], ids=lambda p: p.stem)
def test_systemd_analyze_verify_is_clean(path: Path, tmp_path: Path) -> None:
    assert verify_problems(runnable_copy(path, tmp_path)) == []


BREAKAGES: dict[str, Callable[[str], str]] = {
    "misspelt key": lambda text: text.replace("[Service]\n", "[Service]\nProtectSystm=strict\n"),
    "bad value": lambda text: re.sub(r"^Type=.*$", "Type=notfiy", text, flags=re.M),
    "missing binary": lambda text: re.sub(
        r"^ExecStart=\S+", "ExecStart=/nonexistent/edgetwin", text, flags=re.M
    ),
}


@needs_analyze
@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
@pytest.mark.parametrize("path", [AGENT_UNIT, GATEWAY_UNIT], ids=lambda p: p.stem)
def test_systemd_analyze_verify_reports_a_broken_unit(
    path: Path, breakage: str, tmp_path: Path
) -> None:
    clean = runnable_copy(path, tmp_path).read_text()
    assert BREAKAGES[breakage](clean) != clean, "the breakage must change the unit"
    broken = runnable_copy(path, tmp_path, BREAKAGES[breakage])
    assert verify_problems(broken) != [], f"verify accepted a unit with a {breakage}"


# -- systemd-analyze security ----------------------------------------------------------------

# Generous: systemd 252 scores the agent 1.5 and the gateway 1.2 (0 = locked down, 10 = none).
# Other systemd versions weigh and add checks differently, which moves the numbers.
EXPOSURE_BOUND = 3.0


def offline_security_supported() -> bool:
    return "--offline" in analyze_help()


@needs_analyze
@pytest.mark.parametrize("path", [AGENT_UNIT, GATEWAY_UNIT], ids=lambda p: p.stem)
def test_security_exposure_is_low(
    path: Path, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    if not offline_security_supported():
        pytest.skip("this systemd-analyze has no 'security --offline' (systemd 250 and later)")
    result = analyze("security", "--offline=true", "--no-pager", str(runnable_copy(path, tmp_path)))
    match = re.search(r"Overall exposure level for (\S+): (\d+(?:\.\d+)?) (\S+)", result.stdout)
    assert match, result.stdout + result.stderr
    score = float(match.group(2))
    version = analyze("--version").stdout.split("\n", 1)[0]
    print(f"\n{version}: {match.group(1)} exposure {score} {match.group(3)}")
    record_property(f"exposure:{path.name}", score)
    assert score < EXPOSURE_BOUND


# -- the system user -------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="systemd-sysusers missing")
def test_sysusers_creates_the_units_user(tmp_path: Path) -> None:
    (tmp_path / "etc" / "sysusers.d").mkdir(parents=True)
    shutil.copy(SYSUSERS, tmp_path / "etc" / "sysusers.d" / "edgetwin.conf")
    sysusers = shutil.which("systemd-sysusers")
    assert sysusers is not None
    result = subprocess.run(
        [sysusers, f"--root={tmp_path}", "edgetwin.conf"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    unit = load_unit(AGENT_UNIT)
    user = effective(unit, "Service", "User")
    passwd = {
        line.split(":")[0]: line.split(":")
        for line in (tmp_path / "etc" / "passwd").read_text().splitlines()
    }
    assert user in passwd
    uid, home, shell = int(passwd[str(user)][2]), passwd[str(user)][5], passwd[str(user)][6]
    assert 0 < uid < 1000, "a system user"
    assert shell.endswith("nologin")
    assert home == f"/var/lib/{effective(unit, 'Service', 'StateDirectory')}"
    groups = {
        line.split(":")[0]: line.split(":")[3].split(",")
        for line in (tmp_path / "etc" / "group").read_text().splitlines()
    }
    for group in " ".join(list_setting(unit, "SupplementaryGroups")).split():
        assert str(user) in groups[group]


# -- the programs inside the units' system call filter ---------------------------------------

# Run by a Python that has libseccomp's bindings (the system one on Debian), before it execs the
# program: the same rules systemd 252 loads for these settings (src/shared/seccomp-util.c).
LAUNCHER = """\
import json, os, sys
import seccomp

spec = json.loads(sys.argv[1])
deny = seccomp.ERRNO(spec["errno"]) if spec["errno"] is not None else seccomp.KILL_PROCESS
# Argument filters first: the allow list below does not allow seccomp() itself.
extra = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
if spec["mdwe"]:
    WRITE, EXEC, SHM_EXEC = 0x2, 0x4, 0o100000
    refuse = seccomp.ERRNO(spec["eperm"])
    both = seccomp.Arg(2, seccomp.MASKED_EQ, WRITE | EXEC, WRITE | EXEC)
    for name in ("mmap", "mmap2"):  # mmap2: 32-bit ARM, Raspberry Pi OS armhf
        try:
            extra.add_rule(refuse, name, both)
        except Exception:
            pass
    for name in ("mprotect", "pkey_mprotect"):
        extra.add_rule(refuse, name, seccomp.Arg(2, seccomp.MASKED_EQ, EXEC, EXEC))
    extra.add_rule(refuse, "shmat", seccomp.Arg(2, seccomp.MASKED_EQ, SHM_EXEC, SHM_EXEC))
if spec["families"] is not None:
    for family in range(64):
        if family not in spec["families"]:
            extra.add_rule(
                seccomp.ERRNO(spec["eafnosupport"]), "socket", seccomp.Arg(0, seccomp.EQ, family)
            )
extra.load()
allow = seccomp.SyscallFilter(defaction=deny)
for name in spec["allow"]:
    try:
        allow.add_rule(seccomp.ALLOW, name)
    except Exception:
        pass  # not a system call of this architecture
allow.load()
os.execve(spec["argv"][0], spec["argv"], os.environ)
"""


@functools.cache
def seccomp_python() -> str | None:
    for candidate in ("/usr/bin/python3", shutil.which("python3")):
        if candidate and os.access(candidate, os.X_OK):
            probe = subprocess.run(
                [candidate, "-c", "import seccomp"], capture_output=True, timeout=30, check=False
            )
            if probe.returncode == 0:
                return candidate
    return None


@functools.cache
def syscall_groups() -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    members: list[str] | None = None
    for line in analyze("syscall-filter", "--no-pager").stdout.splitlines():
        if line.startswith("@"):
            members = groups.setdefault(line.strip(), [])
        elif line.startswith("    ") and members is not None and not line.strip().startswith("#"):
            members.append(line.strip())
    return groups


def expand(name: str) -> set[str]:
    if not name.startswith("@"):
        return {name}
    return set().union(*(expand(member) for member in syscall_groups()[name]))


def allowed_syscalls(unit: Unit) -> list[str]:
    """SystemCallFilter= folded as systemd does, for a unit whose first line is an allow list."""
    filters = list_setting(unit, "SystemCallFilter")
    assert filters
    assert not filters[0].startswith("~"), "an allow list comes first"
    allowed = expand("@default")  # systemd adds it to every allow list
    for line in filters:
        deny = line.startswith("~")
        names = set().union(*(expand(word) for word in line.lstrip("~").split()))
        allowed = allowed - names if deny else allowed | names
    return sorted(allowed)


def sandbox_command(unit_path: Path, argv: list[str], directory: Path) -> list[str]:
    python = seccomp_python()
    if python is None:
        pytest.skip("no Python with the seccomp module (Debian: apt-get install python3-seccomp)")
    if SYSTEMD_ANALYZE is None:
        pytest.skip("systemd-analyze not installed: it names the system call groups")
    unit = load_unit(unit_path)
    error = effective(unit, "Service", "SystemCallErrorNumber")
    families = " ".join(list_setting(unit, "RestrictAddressFamilies")).split()
    spec = {
        "allow": allowed_syscalls(unit),
        "errno": getattr(errno, error) if error else None,
        "mdwe": bool(boolean(effective(unit, "Service", "MemoryDenyWriteExecute"))),
        "families": [int(getattr(socket, name)) for name in families] if families else None,
        "eperm": errno.EPERM,
        "eafnosupport": errno.EAFNOSUPPORT,
        "argv": argv,
    }
    launcher = directory / "launch.py"
    launcher.write_text(LAUNCHER, encoding="utf-8")
    return [python, str(launcher), json.dumps(spec)]


def unit_environment(unit: Unit) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in assignments(unit, "Service", "Environment"):
        for word in shlex.split(line):
            key, _, value = word.partition("=")
            env[key] = value
    return env


class NotifySocket:
    """The receiving end of sd_notify, as systemd holds it for a Type=notify service."""

    def __init__(self) -> None:
        # AF_UNIX paths are limited to 108 bytes; pytest's tmp_path can be longer.
        self._dir = tempfile.mkdtemp(prefix="sd-notify-")
        self.path = os.path.join(self._dir, "notify")
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(self.path)
        self.messages: list[str] = []

    def wait_for(self, predicate: Callable[[list[str]], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not predicate(self.messages):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._sock.settimeout(remaining)
            try:
                data = self._sock.recv(4096)
            except TimeoutError:
                return False
            self.messages.extend(data.decode().splitlines())
        return True

    def close(self) -> None:
        self._sock.close()
        shutil.rmtree(self._dir, ignore_errors=True)


@pytest.fixture
def notify_socket() -> Iterator[NotifySocket]:
    sock = NotifySocket()
    yield sock
    sock.close()


def stop(process: subprocess.Popen[bytes], timeout: float) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise


def log_record(log: Path, message: str) -> dict[str, object]:
    for line in log.read_text().splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("msg") == message:
                return dict(record)
    raise AssertionError(f"no {message!r} in the log:\n{log.read_text()[-3000:]}")


AGENT_SENSORS = """
[sensors.env]
driver = "bme280"
address = 0x76
interval = 0.2
backend = "emulated"
[sensors.air]
driver = "sht3x"
address = 0x44
interval = 0.2
backend = "emulated"
[sensors.soil]
driver = "ds18b20"
interval = 0.2
backend = "emulated"
[sensors.cpu]
driver = "soc_thermal"
interval = 0.2
backend = "emulated"
[sensors.door]
driver = "button"
pins = { pin = 17 }
interval = 0.2
backend = "emulated"
"""


def committed_readings(state_dir: Path) -> int:
    try:
        with contextlib.closing(
            sqlite3.connect(f"file:{state_dir / 'outbox.db'}?mode=ro", uri=True, timeout=1)
        ) as db:
            return int(db.execute("SELECT coalesce(sum(last_seq), 0) FROM streams").fetchone()[0])
    except sqlite3.Error:
        return 0  # not created yet


def run_agent_in_sandbox(
    tmp_path: Path, notify: NotifySocket, host: str, port: int, protocol: str
) -> tuple[int, Path]:
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[agent]\ndevice_id = "sandbox-01"\nstate_dir = "{tmp_path / "state"}"\n'
        "shutdown_timeout = 2\n"
        f'[mqtt]\nhost = "{host}"\nport = {port}\nprotocol = "{protocol}"\n' + AGENT_SENSORS,
        encoding="utf-8",
    )
    unit = load_unit(AGENT_UNIT)
    argv = [sys.executable, "-m", "edgetwin", "agent", "--config", str(config)]
    env = {
        **os.environ,
        **unit_environment(unit),
        "NOTIFY_SOCKET": notify.path,
        "WATCHDOG_USEC": "1000000",  # pings every 0.5 s
    }
    log = tmp_path / "agent.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            sandbox_command(AGENT_UNIT, argv, tmp_path), env=env, stdout=out, stderr=out
        )
    try:
        ready = notify.wait_for(lambda m: "READY=1" in m, 30)
        assert ready, f"no READY=1: {notify.messages}\n{log.read_text()[-3000:]}"
        pings = notify.wait_for(lambda m: m.count("WATCHDOG=1") >= 3, 10)
        assert pings, f"watchdog pings missing: {notify.messages}"
        # The first readings may wait a little (for the gateway's twin document); committed
        # ones show in the outbox's per-stream counters.
        deadline = time.monotonic() + 15
        while committed_readings(tmp_path / "state") == 0 and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        code = stop(process, 20)
    assert notify.wait_for(lambda m: "STOPPING=1" in m, 5), notify.messages
    return code, log


@pytest.mark.integration
def test_agent_runs_inside_the_units_sandbox(
    tmp_path: Path, notify_socket: NotifySocket, broker: Broker
) -> None:
    code, log = run_agent_in_sandbox(
        tmp_path, notify_socket, broker.host, broker.port, broker.protocol
    )
    stopped = log_record(log, "agent stopped")
    assert code == 0, log.read_text()[-3000:]
    assert isinstance(stopped["readings"], int)
    assert stopped["readings"] > 0
    assert isinstance(stopped["delivered"], int)
    assert stopped["delivered"] > 0
    assert "sensor unavailable" not in log.read_text()


def test_agent_is_ready_inside_the_sandbox_without_a_broker(
    tmp_path: Path, notify_socket: NotifySocket
) -> None:
    # Nothing listens on the port: READY and watchdog pings must not wait for the broker.
    code, log = run_agent_in_sandbox(tmp_path, notify_socket, "127.0.0.1", free_port(), "5")
    assert code == 0, log.read_text()[-3000:]
    stopped = log_record(log, "agent stopped")
    assert isinstance(stopped["readings"], int)
    assert stopped["readings"] > 0


@pytest.mark.integration
def test_gateway_runs_inside_the_units_sandbox(tmp_path: Path, broker: Broker) -> None:
    port = free_port()
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'[server]\nhost = "127.0.0.1"\nport = {port}\n'
        f'[mqtt]\nhost = "{broker.host}"\nport = {broker.port}\nprotocol = "{broker.protocol}"\n'
        '[simulator]\ndevice_count = 3\npublish_interval = 0.5\ndevice_prefix = "sim-"\n',
        encoding="utf-8",
    )
    argv = [sys.executable, "-m", "edgetwin", "gateway", "--config", str(config)]
    env = {**os.environ, **unit_environment(load_unit(GATEWAY_UNIT))}
    log = tmp_path / "gateway.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            sandbox_command(GATEWAY_UNIT, argv, tmp_path), env=env, stdout=out, stderr=out
        )
    try:
        deadline = time.monotonic() + 30
        health: dict[str, object] | None = None
        while health is None and time.monotonic() < deadline and process.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    health = json.load(r)
            except OSError:
                time.sleep(0.2)
        assert health is not None, log.read_text()[-3000:]
    finally:
        code = stop(process, 30)
    assert code == 0, log.read_text()[-3000:]
