"""The agent against a real broker: telemetry, birth, last will, clean stop on signals."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from edgetwin.agent.contract import DeviceState, Source, Status, Telemetry
from edgetwin.testing.agent import EmulatedAgent
from edgetwin.testing.broker import Broker
from edgetwin.testing.capture import Capture, as_endpoint
from edgetwin.testing.process import start_edgetwin, stop_process
from tests.fleet_helpers import agent_toml, one_bme280, payload

pytestmark = pytest.mark.integration

DEVICE = "pi-test"


def test_agent_never_imports_the_gateway_stack() -> None:
    """pydantic included: with it the agent misses its memory budget on a Pi (bench/agent_bench)."""
    code = (
        "import sys; import edgetwin.cli, agent.cli, agent.runtime, agent.mqtt, agent.desired;"
        "heavy = ('fastapi', 'uvicorn', 'starlette', 'gateway', 'pydantic', 'tqdm',"
        " 'argcomplete');"
        "loaded = sorted(m for m in heavy if m in sys.modules);"
        "print(loaded); sys.exit(1 if loaded else 0)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, f"the agent imports {result.stdout.strip()}"


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_agent_process_publishes_and_stops_cleanly(
    broker: Broker, tmp_path: Path, stop_signal: int
) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(agent_toml(broker, DEVICE, tmp_path / "state"))
    with Capture(broker, f"edgetwin/{DEVICE}/#") as sub:
        process = start_edgetwin(["agent", "--config", str(config)])
        try:
            births = sub.wait_for(f"edgetwin/{DEVICE}/status", timeout=10)
            birth = Status.decode(births[0].payload)
            assert birth.state == "online"
            assert birth.reason == "birth"
            assert birth.boot == 1
            readings = sub.wait_for(f"edgetwin/{DEVICE}/telemetry/env", count=5, timeout=10)
            sub.wait_for(f"edgetwin/{DEVICE}/telemetry/outdoor", count=5, timeout=10)
        finally:
            code, stderr = stop_process(process, stop_signal)
        assert code == 0, stderr
        offline = sub.wait_for(
            lambda m: m.topic.endswith("/status") and payload(m)["state"] == "offline", timeout=5
        )
    status = Status.decode(offline[-1].payload)
    assert (status.reason, status.boot) == ("shutdown", 1)
    # The broker got the DISCONNECT too: it kept the goodbye and sent no last will over it.
    with Capture(broker, f"edgetwin/{DEVICE}/status") as late:
        kept = late.wait_for(lambda m: m.retain, timeout=5)
    assert Status.decode(kept[-1].payload).reason == "shutdown"
    telemetry = [Telemetry.decode(m.payload) for m in readings]
    # Sorted: readings stored before the first CONNACK go after the first live one.
    assert sorted(t.seq for t in telemetry) == list(range(1, len(telemetry) + 1))
    assert all(t.source is Source.EMULATED and t.device == DEVICE for t in telemetry)
    first = telemetry[0].values
    assert set(first) == {"temperature", "humidity", "pressure"}
    assert -40 <= first["temperature"].value <= 85
    assert first["temperature"].unit == "°C"
    assert 0 <= first["humidity"].value <= 100
    assert 900 <= first["pressure"].value <= 1100
    assert '"msg": "agent stopped"' in stderr  # JSON logs


def test_birth_and_last_will_are_retained(broker: Broker, tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(agent_toml(broker, DEVICE, tmp_path / "state", keepalive=1))
    process = start_edgetwin(["agent", "--config", str(config)])
    try:
        with Capture(broker, f"edgetwin/{DEVICE}/status") as sub:
            sub.wait_for(lambda m: payload(m)["state"] == "online", timeout=10)
        # A late subscriber gets the retained birth.
        with Capture(broker, f"edgetwin/{DEVICE}/status") as late:
            retained = late.wait_for(lambda m: m.retain, timeout=5)
            assert payload(retained[0])["state"] == "online"
            process.kill()  # no goodbye: only the broker's last will can tell
            will = late.wait_for(lambda m: payload(m)["state"] == "offline", timeout=10)
        assert Status.decode(will[-1].payload).reason == "connection_lost"
    finally:
        stop_process(process, signal.SIGKILL)
    with Capture(broker, f"edgetwin/{DEVICE}/status") as after:
        retained_will = after.wait_for(lambda m: m.retain, timeout=5)
    assert payload(retained_will[0])["state"] == "offline"


def test_boot_counter_and_seq_persist_across_restarts(broker: Broker, tmp_path: Path) -> None:
    state = tmp_path / "state"
    with Capture(broker, f"edgetwin/{DEVICE}/#") as sub:
        with EmulatedAgent(as_endpoint(broker), one_bme280(DEVICE), state_dir=state):
            first_run = sub.wait_for(f"edgetwin/{DEVICE}/telemetry/env", count=3, timeout=10)
        last_seq = max(
            Telemetry.decode(m.payload).seq
            for m in sub.messages(f"edgetwin/{DEVICE}/telemetry/env")
        )
        sub.clear()
        with EmulatedAgent(as_endpoint(broker), one_bme280(DEVICE), state_dir=state):
            second_run = sub.wait_for(f"edgetwin/{DEVICE}/telemetry/env", count=2, timeout=10)
            births = sub.wait_for(
                lambda m: m.topic.endswith("/status") and payload(m)["state"] == "online"
            )
    assert Telemetry.decode(first_run[0].payload).seq == 1
    assert Telemetry.decode(second_run[0].payload).seq == last_seq + 1
    assert Status.decode(births[0].payload).boot == 2


def test_bad_config_stops_with_the_key_named(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('[agent]\ndevice_id = "pi"\n[mqtt]\nhots = "x"\n')
    result = subprocess.run(
        [sys.executable, "-m", "edgetwin", "agent", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "unknown key 'mqtt.hots'" in result.stderr
    assert str(config) in result.stderr


def test_state_document_reports_each_sensor(broker: Broker, tmp_path: Path) -> None:
    with (
        Capture(broker, f"edgetwin/{DEVICE}/state") as sub,
        EmulatedAgent(as_endpoint(broker), one_bme280(DEVICE), state_dir=tmp_path),
    ):
        states = sub.wait_for(timeout=10)
    state = DeviceState.decode(states[-1].payload)
    assert state.device == DEVICE
    assert state.sensors["env"].health == "ok"
    assert state.sensors["env"].backend == "emulated"
    assert state.agent_version
