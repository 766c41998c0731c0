"""fridge-watch against a real broker, a simulated fleet and a real agent on an emulated chip,
with nothing but edgetwin's pytest fixtures."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

FRIDGES = Path(__file__).with_name("fridges.toml")  # four fridges at 4 °C, a reading per 0.2 s


def test_a_drifting_fridge_raises_one_alert_and_only_for_itself(
    edgetwin_broker, edgetwin_fleet, edgetwin_capture, start_watch
):
    watch = start_watch(edgetwin_broker, low=2.0, high=8.0, hold=3)
    edgetwin_capture.subscribe("alerts/#", "edgetwin/+/telemetry/+")
    fleet = edgetwin_fleet(scenario=FRIDGES)
    edgetwin_capture.wait_for("edgetwin/fridge-3/telemetry/cabinet", count=3)

    # +10 °C a second: past 8 °C within the first second of the fault.
    fault = fleet.inject("fridge-2", "drift", per_hour=36_000, duration=30)
    (alert,) = edgetwin_capture.wait_for("alerts/fridge/fridge-2", timeout=10)

    raised = json.loads(alert.payload)
    assert raised["temperature"] > 8.0
    assert raised["anomaly"] == "drift"  # the simulation's ground truth rode on the reading
    assert raised["simulated"] is True
    assert fleet.wait_for_label(fault.id)[0].device == "fridge-2"
    assert [a.device for a in watch.alerts] == ["fridge-2"]


@pytest.mark.edgetwin_broker(persistence=True)  # a broker that keeps sessions, as in production
def test_no_reading_is_lost_across_a_broker_restart(edgetwin_broker, edgetwin_agent, start_watch):
    watch = start_watch(edgetwin_broker)
    agent = edgetwin_agent(
        {"sensors": {"cabinet": {"driver": "bme280", "interval": 0.1}}}, device_id="kitchen"
    )
    agent.wait_for_state(lambda state: state.sensors["cabinet"].health == "ok")
    wait_until(lambda: len(watch.seqs("kitchen", "cabinet")) >= 5)

    edgetwin_broker.kill()  # a crash: no goodbye to anyone
    # The agent reads on into its outbox while the broker is away.
    wait_until(lambda: agent.outbox.pending() >= 5)
    edgetwin_broker.start()  # same port: agent and service reconnect by themselves

    held = agent.outbox.last_seq("cabinet")
    wait_until(lambda: max(watch.seqs("kitchen", "cabinet"), default=0) >= held + 5)
    seqs = sorted(set(watch.seqs("kitchen", "cabinet")))  # QoS 1 may deliver one twice
    assert seqs == list(range(1, seqs[-1] + 1))


def test_a_simulated_fridge_is_told_from_a_real_one(
    edgetwin_broker, edgetwin_fleet, edgetwin_agent, edgetwin_capture, start_watch
):
    # The agent's emulated BME280 reads a room, about 21 °C: too warm for a fridge.
    watch = start_watch(edgetwin_broker, hold=2)
    edgetwin_capture.subscribe("alerts/#")
    edgetwin_agent(device_id="garage", config={"sensors": {"cabinet": {"driver": "bme280"}}})
    fleet = edgetwin_fleet(scenario=FRIDGES)
    fleet.inject("fridge-0", "spike", magnitude=20.0, duration=30)

    alerts = edgetwin_capture.wait_for("alerts/#", count=2, timeout=15)
    by_device = {json.loads(a.payload)["device"]: json.loads(a.payload) for a in alerts}
    assert by_device["garage"]["simulated"] is False  # a real agent: send someone
    assert by_device["fridge-0"]["simulated"] is True  # played by the simulation
    assert watch.source("garage") == "emulated"
    assert watch.source("fridge-0") == "simulated"


def wait_until(condition, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s: {condition}")
        time.sleep(0.05)
