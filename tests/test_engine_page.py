"""The scale engine's panel (#/engine): its feed on GET /events?engine=true, and the panel
driven in a real headless Chromium (tests/browser.py) against a gateway on uvicorn and a
private broker. What the panel does is checked from outside: readings and labels with a
separate MQTT subscriber, the engine's state with GET /engine/status.

The engine runs small fleets in the gateway's own process (`[engine] workers = "auto"`), so
these tests start no worker process.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgetwin.agent.contract import FaultLabel
from edgetwin.gateway.app import create_app
from edgetwin.gateway.config import GatewayConfig, ManifestDevice
from edgetwin.gateway.scenario import FAULT_TYPES
from edgetwin.testing.broker import Broker
from edgetwin.testing.capture import Capture
from edgetwin.testing.gateway import serving
from edgetwin.testing.waiting import poll
from tests.browser import Chromium
from tests.browser import chromium_binary as find_chromium
from tests.fleet_helpers import mqtt_settings, sse_events

pytestmark = pytest.mark.integration

TOKEN = "engine-page-token"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
TELEMETRY = "edgetwin/+/telemetry/+"
# The panel's rate chart: the line of messages delivered per second.
DELIVERED = "figure[data-chart=rate] path[data-line=delivered]"
STATIC = Path(__file__).resolve().parent.parent / "gateway" / "static"


def engine_config(broker: Broker, devices: list[ManifestDevice] | None = None) -> GatewayConfig:
    return GatewayConfig.from_builtins(
        {
            "mqtt": mqtt_settings(broker, keepalive=2),
            "presence": {"startup_grace": 0.2},
            "api": {"token": TOKEN},
            "devices": devices or [],
        }
    )


def test_the_panel_script_is_served(broker: Broker) -> None:
    script = (STATIC / "engine.js").read_text()
    with serving(create_app(engine_config(broker))) as base:
        served = httpx.get(f"{base}/static/engine.js", timeout=5)
        assert served.status_code == 200
        assert served.text == script


def status(base: str) -> dict[str, Any]:
    answer: dict[str, Any] = httpx.get(f"{base}/engine/status", timeout=5).json()
    return answer


def test_the_engine_feed_pushes_status_and_points(broker: Broker) -> None:
    """A client of GET /events?engine=true gets no devices: the engine's status and the fault
    types first, then a point a second while it runs, which a client opened later gets too."""
    devices = [ManifestDevice(id="greenhouse-01")]
    with (
        serving(create_app(engine_config(broker, devices))) as base,
        httpx.Client(base_url=base, timeout=10) as client,
    ):
        with client.stream("GET", "/events", params={"engine": "true"}) as response:
            events = sse_events(response)
            kind, first = next(events)
            assert kind == "engine"
            assert first["status"]["state"] == "stopped"
            assert first["fault_types"] == list(FAULT_TYPES)
            assert first["fault_params"]["spike"] == ["magnitude", 10.0]
            started = client.post(
                "/engine/start", json={"devices": 3, "interval": 0.1}, headers=BEARER
            )
            assert started.status_code == 200, started.text
            deadline = time.monotonic() + 15
            times: list[float] = []
            for kind, data in events:
                assert kind == "engine", kind  # never a device snapshot or change
                assert "fault_types" not in data
                assert len(data["points"]) == 1
                t, state, target, _scheduled, delivered, _p50, p99, skipped = data["points"][0]
                assert data["status"]["state"] == state == "running"
                if not times and target == 0:
                    continue  # sampled before the worker's first report, on a busy machine
                assert target == pytest.approx(30, rel=0.01)
                times.append(t)
                if len(times) >= 2 and delivered > 0 and p99 is not None:
                    assert skipped >= 0
                    break
                assert time.monotonic() < deadline, "no point with a delivered rate"
            assert times[-1] - times[-2] == pytest.approx(1, abs=0.5)  # about one a second
        # A panel opened now draws the minutes before it at once.
        with client.stream("GET", "/events", params={"engine": "true"}) as response:
            kind, late = next(sse_events(response))
            assert kind == "engine"
            assert late["status"]["state"] == "running"
            assert len(late["points"]) >= 2
            assert any(point[4] > 0 for point in late["points"])
        client.post("/engine/stop", headers=BEARER)


# --- the panel in a real browser ----------------------------------------------------------------


def browser(tmp_path: Path) -> Chromium:
    binary = find_chromium()
    if binary is None:
        pytest.skip(
            "no chromium binary on PATH (apt-get install chromium, or set EDGETWIN_CHROMIUM); "
            ".ci/run installs it"
        )
    return Chromium(binary, tmp_path / "browser")


def fill(page: Chromium, element: str, value: object) -> None:
    page.evaluate(f"document.getElementById({json.dumps(element)}).value = {json.dumps(value)}")


def click(page: Chromium, element: str) -> None:
    # Not awaited: a click may open the token dialog, which waits for the operator.
    page.evaluate(f"document.getElementById({json.dumps(element)}).click(), true")


def note(page: Chromium, element: str) -> str:
    text: str = page.evaluate(f"document.getElementById({json.dumps(element)}).textContent")
    return text


def open_panel(page: Chromium, base: str) -> None:
    page.navigate(f"{base}/#/engine")
    page.wait_for(
        "!document.getElementById('engine-view').hidden && "
        "document.getElementById('fleet-view').hidden && "
        "document.getElementById('engine-fault-type').options.length > 0",
        what="the engine panel and its first engine event",
    )


def give_token(page: Chromium) -> None:
    """The first write asks for the API token in the page's dialog."""
    page.wait_for("document.getElementById('token-dialog').open", what="the token dialog")
    fill(page, "token-input", TOKEN)
    click(page, "token-ok")


def delivered_rate(page: Chromium) -> float:
    value = page.evaluate(f"document.querySelector('{DELIVERED}')?.dataset.last ?? '0'")
    return float(value)


def devices_heard(sub: Capture) -> set[str]:
    return {r.device for r in sub.readings(TELEMETRY)}


def test_the_panel_starts_steers_pauses_and_stops_a_fleet(broker: Broker, tmp_path: Path) -> None:
    with (
        serving(create_app(engine_config(broker))) as base,
        browser(tmp_path) as page,
        Capture(broker, TELEMETRY) as sub,
    ):
        open_panel(page, base)
        assert note(page, "engine-state") == "stopped"

        fill(page, "engine-devices", 4)
        fill(page, "engine-interval", 0.2)
        click(page, "engine-start")
        give_token(page)
        page.wait_for(
            "document.getElementById('engine-start-note').textContent === 'started 4 devices'",
            what="the start acknowledged",
        )
        sub.wait_for(
            TELEMETRY,
            lambda m: m.topic.startswith("edgetwin/device_003/"),
            count=2,
            timeout=10,
        )
        assert devices_heard(sub) == {f"device_00{i}" for i in range(4)}
        page.wait_for(
            f"Number(document.querySelector('{DELIVERED}')?.dataset.last) > 0",
            what="a delivered rate on the panel's rate chart",
        )
        assert page.evaluate("document.getElementById('engine-state').textContent") == "running"
        assert delivered_rate(page) == pytest.approx(20, rel=0.5)  # 4 devices, 5 a second

        # A second start while it runs: the gateway's 409 and its reason, next to the control.
        click(page, "engine-start")
        page.wait_for(
            "document.getElementById('engine-start-note').dataset.kind === 'error'",
            what="the refused start shown",
        )
        assert note(page, "engine-start-note") == "HTTP 409: the engine is running: stop it"

        fill(page, "engine-size", 6)
        click(page, "engine-resize")
        poll(lambda: status(base)["devices"] == 6, timeout=10, what="the fleet resized")
        sub.wait_for(TELEMETRY, lambda m: m.topic.startswith("edgetwin/device_005/"), timeout=10)
        assert note(page, "engine-steer-note") == "now 6 devices"

        fill(page, "engine-rate", 0)
        click(page, "engine-set-rate")
        page.wait_for(
            "document.getElementById('engine-steer-note').dataset.kind === 'error'",
            what="the bad rate's reason shown",
        )
        assert note(page, "engine-steer-note").startswith("HTTP 422: ")
        assert "multiplier" in note(page, "engine-steer-note")
        fill(page, "engine-rate", 2)
        click(page, "engine-set-rate")
        poll(lambda: status(base)["rate"] == 2, timeout=10, what="the rate doubled")
        page.wait_for(
            "document.getElementById('engine-summary').textContent.includes('rate ×2.00')",
            what="the rate on the panel",
        )

        click(page, "engine-pause")
        poll(lambda: status(base)["state"] == "paused", timeout=10, what="the engine paused")
        page.wait_for(
            "document.getElementById('engine-state').textContent === 'paused'",
            what="the pause on the panel",
        )
        # Readings still on the wire at the pause arrive within the panel's next point; none
        # is published over the two points after that.
        figures = page.evaluate("document.querySelectorAll('#engine-charts figure').length")
        assert figures == 3
        wait_points(page, 1)
        sub.clear()
        wait_points(page, 2)
        assert sub.readings(TELEMETRY) == []

        click(page, "engine-resume")
        sub.wait_for(TELEMETRY, count=6, timeout=10)
        assert status(base)["state"] == "running"

        click(page, "engine-stop")
        poll(lambda: status(base)["state"] == "stopped", timeout=10, what="the engine stopped")
        page.wait_for(
            "document.getElementById('engine-state').textContent === 'stopped'",
            what="the stop on the panel",
        )


def wait_points(page: Chromium, n: int) -> None:
    """Until the panel has drawn `n` more points of the engine feed (about a second each)."""
    key = "document.querySelector('#engine-charts path[data-line=target]').getAttribute('d')"
    before = page.evaluate(f"({key}.match(/[ML]/g) || []).length")
    page.wait_for(
        f"({key}.match(/[ML]/g) || []).length >= {before + n}",
        timeout=10,
        what=f"{n} more points on the panel",
    )


def test_a_fault_from_the_panel_is_labelled_and_banded_on_the_device_chart(
    broker: Broker, tmp_path: Path
) -> None:
    """The engine's devices are not the twin's, unless its manifest names one: device_001 with
    no sensors of its own is followed (its readings kept for its charts) and never stood in
    for, so its chart in the device view is the engine's stream, fault band included."""
    config = engine_config(broker, [ManifestDevice(id="device_001", sensors={})])
    with (
        serving(create_app(config)) as base,
        browser(tmp_path) as page,
        Capture(broker, "edgetwin/labels") as labels,
    ):
        started = httpx.post(
            f"{base}/engine/start", json={"devices": 3, "interval": 0.1}, headers=BEARER
        )
        assert started.status_code == 200, started.text
        open_panel(page, base)
        page.evaluate(f"sessionStorage.setItem('edgetwin.api-token', {json.dumps(TOKEN)})")

        # No duration: the gateway's reason, next to the fault's controls.
        fill(page, "engine-fault-devices", "device_001")
        fill(page, "engine-fault-duration", "")
        click(page, "engine-inject")
        page.wait_for(
            "document.getElementById('engine-fault-note').dataset.kind",
            what="the refused fault shown",
        )
        assert note(page, "engine-fault-note").startswith("HTTP 422: ")
        assert "duration" in note(page, "engine-fault-note")

        fill(page, "engine-fault-type", "spike")
        page.evaluate(
            "document.getElementById('engine-fault-type').dispatchEvent(new Event('change'))"
        )
        assert note(page, "engine-fault-param-name") == "magnitude"
        fill(page, "engine-fault-param", 40)
        fill(page, "engine-fault-duration", 1.5)
        click(page, "engine-inject")
        page.wait_for(
            "document.getElementById('engine-fault-note').dataset.kind === 'ok'",
            what="the fault acknowledged",
        )
        assert note(page, "engine-fault-note").endswith(" on device_001")
        found = [FaultLabel.decode(m.payload) for m in labels.wait_for("edgetwin/labels", count=2)]
        assert [(f.event, f.device, f.type) for f in found] == [
            ("start", "device_001", "spike"),
            ("end", "device_001", "spike"),
        ]
        assert found[0].params == {"magnitude": 40.0}
        assert note(page, "engine-fault-note") == f"injected {found[0].id} on device_001"

        page.navigate(f"{base}/#/device/device_001")
        page.wait_for(
            "document.querySelectorAll('#charts rect.fault[data-anomaly=spike]').length > 0 && "
            "document.querySelectorAll('#charts circle.pt[data-source=simulated]').length > 0",
            what="the fault band on the device's charts",
        )
        assert page.evaluate("document.getElementById('engine-view').hidden") is True
        httpx.post(f"{base}/engine/stop", headers=BEARER)
