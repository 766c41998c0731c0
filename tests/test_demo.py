"""`edgetwin demo` end to end, on both embedded brokers, as a user would run it."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from edgetwin.gateway.broker import InProcessBroker, MosquittoBroker
from edgetwin.testing.waiting import poll
from tests.fleet_helpers import REPO

pytestmark = pytest.mark.integration


def banner_line(process: subprocess.Popen[str], pattern: str) -> re.Match[str]:
    assert process.stdout is not None
    for line in process.stdout:
        if match := re.search(pattern, line):
            return match
    raise AssertionError(f"demo ended before printing {pattern!r}")


@pytest.fixture
def demo(request: pytest.FixtureRequest) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgetwin",
            "demo",
            "--broker",
            request.param,
            "--agent-delay",
            "0.5",
            "--duration",
            "60",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.parametrize(
    "demo",
    [
        pytest.param(
            "mosquitto",
            marks=pytest.mark.skipif(not MosquittoBroker.available(), reason="no mosquitto binary"),
        ),
        pytest.param(
            "inprocess",
            marks=pytest.mark.skipif(not InProcessBroker.available(), reason="amqtt not installed"),
        ),
    ],
    indirect=True,
)
def test_demo_runs_a_mixed_fleet_and_stops_on_ctrl_c(demo: subprocess.Popen[str]) -> None:
    broker = banner_line(demo, r"mqtt://127\.0\.0\.1:(\d+)")
    api = banner_line(demo, r"(http://127\.0\.0\.1:\d+)/devices")[1]
    token = banner_line(demo, r"API token\s+(\S+)")[1]
    subscriber_command = banner_line(demo, r"edgetwin watch --broker mqtt://127\.0\.0\.1:(\d+)")
    assert subscriber_command[1] == broker[1]

    def fleet() -> dict[str, dict[str, object]]:
        return {d["id"]: d for d in httpx.get(f"{api}/devices", timeout=5).json()}

    def settled() -> bool:
        devices = fleet()
        return devices["demo-pi"]["served_by"] == "agent" and all(
            d["simulated"] for name, d in devices.items() if name.startswith("sim-")
        )

    poll(settled, timeout=20, what="agent online and the rest simulated")
    assert sorted(fleet()) == ["demo-pi", "sim-000", "sim-001", "sim-002", "sim-003"]
    watch = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgetwin",
            "watch",
            "--broker",
            f"mqtt://127.0.0.1:{broker[1]}",
            "--topic",
            "edgetwin/demo-pi/telemetry/+",
            "--count",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert watch.stdout.count('"source":"emulated"') == 2
    # The page's writes work with the printed token, and only with it.
    change = {"sensors": {"env": {"interval": 3}}}
    assert httpx.patch(f"{api}/devices/demo-pi/desired", json=change).status_code == 401
    changed = httpx.patch(
        f"{api}/devices/demo-pi/desired",
        json=change,
        headers={"Authorization": f"Bearer {token}"},
    )
    assert changed.status_code == 200, changed.text

    # The closed loop the banner offers: its command switches sim-000's simulated heater on,
    # and the gateway that plays sim-000 applies and reports it.
    curl = banner_line(demo, r"curl -X PATCH (\S+) .*-d '(.+)'$")
    heater = httpx.patch(
        curl[1],
        content=curl[2],
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        timeout=5,
    )
    assert heater.status_code == 200, heater.text

    def heater_reported() -> object:
        reported = httpx.get(f"{api}/devices/sim-000", timeout=5).json()["reported"] or {}
        return reported.get("outputs", {}).get("heater")

    poll(heater_reported, timeout=15, what="sim-000's heater reported")
    assert heater_reported() == {"value": 1.0, "backend": "simulated"}

    demo.send_signal(signal.SIGINT)
    stdout, stderr = demo.communicate(timeout=30)
    assert demo.returncode == 0, stderr
    assert "edgetwin demo stopped." in stdout
    assert "Traceback" not in stderr
