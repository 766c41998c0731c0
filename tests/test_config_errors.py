"""A configuration the programs cannot use ends them with one line naming the file and the key,
and the exit status the systemd units keep from restarting (EXIT_CONFIG); never a traceback,
never a program that runs on without what it was told to run."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from edgetwin.agent.config import EXIT_CONFIG
from tests.fleet_helpers import REPO

# Each case: the file's text, given a directory for its side files, and what the one line must
# name beyond the file itself (the key, or what is wrong with the file as a whole).
Case = Callable[[Path], tuple[str, str]]


def _log_config_not_toml(directory: Path, section: str) -> tuple[str, str]:
    logs = directory / "logger.toml"
    logs.write_text("version = [1\n")
    return f'{section}\n[observability]\nlog_config = "{logs}"\n', "'observability.log_config'"


def _ca_not_pem(directory: Path) -> tuple[str, str]:
    ca = directory / "ca.pem"
    ca.write_text("this is not a certificate\n")
    return (
        f'[agent]\ndevice_id = "pi-1"\n[mqtt.tls]\nca_file = "{ca}"\n',
        "'mqtt.tls.ca_file'",
    )


AGENT_CASES: dict[str, Case] = {
    "state_dir_not_a_string": lambda d: (
        '[agent]\ndevice_id = "pi-1"\nstate_dir = 5\n',
        "'agent.state_dir'",
    ),
    "log_config_not_toml": lambda d: _log_config_not_toml(d, '[agent]\ndevice_id = "pi-1"'),
    "ca_file_not_pem": _ca_not_pem,
    "unknown_driver": lambda d: (
        f'[agent]\ndevice_id = "pi-1"\nstate_dir = "{d / "state"}"\ntwin_wait = 0\n'
        '[sensors.env]\ndriver = "bme281"\nbackend = "emulated"\n',
        "'sensors.env.driver'",
    ),
    "mqtt_host_not_an_address": lambda d: (
        '[agent]\ndevice_id = "pi-1"\n[mqtt]\nhost = "300.1.1.1"\n',
        "'mqtt.host'",
    ),
}

GATEWAY_CASES: dict[str, Case] = {
    "server_host_not_an_address": lambda d: ('[server]\nhost = "999.1.1.1"\n', "'server.host'"),
    "log_config_not_toml": lambda d: _log_config_not_toml(d, ""),
}


def run(program: str, config: Path) -> tuple[int, str]:
    """Run `edgetwin PROGRAM --config CONFIG` as systemd would; a program that does not end on
    its own fails the test (the unknown driver's agent used to run on)."""
    try:
        result = subprocess.run(
            [sys.executable, "-m", "edgetwin", program, "--config", str(config)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"edgetwin {program} ran on with {config}: {exc.stderr!r}") from None
    return result.returncode, result.stderr


def assert_one_line(code: int, stderr: str, program: str, *names: str) -> None:
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"edgetwin {program}: "), lines[0]
    for name in names:
        assert name in lines[0], (name, lines[0])
    assert code == EXIT_CONFIG, stderr


CASES = [("agent", case) for case in sorted(AGENT_CASES)] + [
    ("gateway", case) for case in sorted(GATEWAY_CASES)
]


@pytest.mark.parametrize(("program", "case"), CASES)
def test_config_errors_name_file_and_key(program: str, case: str, tmp_path: Path) -> None:
    cases = AGENT_CASES if program == "agent" else GATEWAY_CASES
    text, key = cases[case](tmp_path)
    config = tmp_path / f"{program}.toml"
    config.write_text(text)
    code, stderr = run(program, config)
    assert_one_line(code, stderr, program, str(config), key)


@pytest.mark.parametrize("program", ["agent", "gateway"])
def test_a_directory_or_a_binary_file_as_config_is_one_line(program: str, tmp_path: Path) -> None:
    code, stderr = run(program, tmp_path)
    assert_one_line(code, stderr, program, str(tmp_path), "directory")
    binary = tmp_path / "config.toml"
    binary.write_bytes(bytes(range(256)))
    code, stderr = run(program, binary)
    assert_one_line(code, stderr, program, str(binary), "not a text file")
