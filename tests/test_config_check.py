"""`edgetwin config check FILE`: every config format the programs take, validated by the
program's own loader, with a summary of what it would run; a bad file is the program's one
line and exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.fleet_helpers import REPO
from tests.test_config_errors import AGENT_CASES, GATEWAY_CASES, assert_one_line


def check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgetwin", "config", "check", str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize(
    ("example", "expected"),
    [
        (
            "agent.toml",
            ["program    edgetwin agent", "device     greenhouse-01", "sensors    1: env"],
        ),
        ("gateway.toml", ["program    edgetwin gateway", "manifest   2 devices: greenhouse-01"]),
        (
            "simulator.toml",
            [
                "the original simulator's README format ([simulator])",
                "broker     mqtt://mqtt:1883",
                "fleet      10 devices at launch (device_000 ... device_009), every 2 s",
            ],
        ),
        (
            "simulator-code.toml",
            [
                "the original simulator's code format ([simulation])",
                "API        http://0.0.0.0:8000",
                "fleet      none at launch",
            ],
        ),
    ],
)
def test_every_format_is_checked_and_summarised(example: str, expected: list[str]) -> None:
    result = check(REPO / "config" / example)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{REPO / 'config' / example}: valid\n")
    for text in expected:
        assert text in result.stdout, (text, result.stdout)


CASES = [("agent", case) for case in sorted(AGENT_CASES)] + [
    ("gateway", case) for case in sorted(GATEWAY_CASES)
]


@pytest.mark.parametrize(("program", "case"), CASES)
def test_a_bad_file_is_the_programs_one_line_and_exit_2(
    program: str, case: str, tmp_path: Path
) -> None:
    cases = AGENT_CASES if program == "agent" else GATEWAY_CASES
    text, key = cases[case](tmp_path)
    config = tmp_path / f"{program}.toml"
    config.write_text(text)
    result = check(config)
    assert_one_line(result.returncode, result.stderr, "config check", str(config), key)


def test_two_fleet_sections_and_a_missing_file(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text("[simulator]\ndevice_count = 2\n[simulation]\nfrequency_sec = 1\n")
    result = check(config)
    assert_one_line(result.returncode, result.stderr, "config check", "[simulation]")
    result = check(tmp_path / "missing.toml")
    assert_one_line(result.returncode, result.stderr, "config check", "no such file")


def test_a_replicas_shard_is_in_the_summary(tmp_path: Path) -> None:
    path = tmp_path / "replica.toml"
    path.write_text('[engine]\nshard = "1/3"\nstart_devices = 9\n')
    result = check(path)
    assert result.returncode == 0, result.stderr
    assert "plays shard 1/3 of each /engine fleet" in result.stdout
