"""The fleet page at GET /: served with its assets, and drawn by a real headless Chromium.

The browser tests run the gateway on uvicorn on a free port (a browser cannot talk to
TestClient), against a private broker, with one device served by an emulating agent and the
rest simulated, and drive Chromium over the DevTools protocol (tests/browser.py): the page
keeps a live event stream open, so it is never "loaded" the way --dump-dom waits for. They are
skipped, with the reason, when no Chromium binary is found; .ci/run installs Debian's chromium
so that they run in CI.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from edgetwin.agent.contract import Telemetry
from edgetwin.gateway.app import create_app
from edgetwin.gateway.config import GatewayConfig, ManifestDevice
from edgetwin.testing.agent import EmulatedAgent
from edgetwin.testing.broker import Broker
from edgetwin.testing.capture import Capture, as_endpoint
from edgetwin.testing.gateway import serving
from edgetwin.testing.waiting import poll
from tests.browser import Chromium
from tests.browser import chromium_binary as find_chromium
from tests.fleet_helpers import bme280, mqtt_settings, one_bme280

pytestmark = pytest.mark.integration

STATIC = Path(__file__).resolve().parent.parent / "gateway" / "static"
TOKEN = "page-test-token"
AGENT_DEVICE = "greenhouse-01"
HOSTILE_LABEL = '<img src=x onerror="document.title=1">'


def page_config(broker: Broker, *, simulated: int = 0) -> GatewayConfig:
    return GatewayConfig.from_builtins(
        {
            "mqtt": mqtt_settings(
                broker, keepalive=2, reconnect_min_delay=0.2, reconnect_max_delay=1
            ),
            "presence": {"startup_grace": 0.3},
            "api": {"token": TOKEN},
            "devices": [
                # Manifest devices without an agent: the twin shows them simulated.
                *(
                    ManifestDevice(id=f"sim-{i:03d}", sensors={"env": bme280(0.5)})
                    for i in range(simulated)
                ),
                ManifestDevice(
                    id=AGENT_DEVICE,
                    site="north",
                    labels={"row": "3"},
                    sensors={"env": bme280(0.3)},
                ),
                ManifestDevice(
                    id="greenhouse-02",
                    site="south",
                    labels={"note": HOSTILE_LABEL},
                    sensors={"env": bme280(0.3), "outdoor": bme280(0.3, address=0x77)},
                ),
            ],
        }
    )


def test_page_and_assets_are_served(broker: Broker) -> None:
    with TestClient(create_app(page_config(broker))) as client:
        page = client.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "<title>edgetwin fleet</title>" in page.text
        assert 'src="static/fleet.js"' in page.text
        assert 'href="static/fleet.css"' in page.text
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert page.headers["x-content-type-options"] == "nosniff"

        script = client.get("/static/fleet.js")
        assert script.status_code == 200
        assert "javascript" in script.headers["content-type"]
        assert script.text == (STATIC / "fleet.js").read_text()
        style = client.get("/static/fleet.css")
        assert style.status_code == 200
        assert style.headers["content-type"].startswith("text/css")

        assert client.get("/static/missing.js").status_code == 404
        assert client.get("/static/%2e%2e/routers/page.py").status_code == 404
        # The page is not part of the API: it stays out of the OpenAPI document.
        assert "/" not in client.get("/openapi.json").json()["paths"]


def test_static_assets_write_no_markup_from_data_and_name_no_server() -> None:
    """Device ids, sites and labels come from the network: only textContent may carry them.
    Every script and style sheet of the page, as served from gateway/static."""
    scripts = sorted(STATIC.glob("*.js"))
    assert {p.name for p in scripts} >= {"common.js", "fleet.js", "device.js", "engine.js"}
    for path in scripts:
        script = path.read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
            assert sink not in script, f"{path.name} uses {sink}"
    page = (STATIC / "index.html").read_text()
    # Deferred scripts run in document order: common.js (window.Edgetwin) before its users.
    order = re.findall(r'<script src="static/([a-z]+\.js)" defer>', page)
    assert order[0] == "common.js", order
    assert sorted(order) == sorted(p.name for p in scripts), order
    for path in [STATIC / "index.html", *scripts, *STATIC.glob("*.css")]:
        # SVG's namespace is a name, not a server the page talks to.
        text = path.read_text().replace('"http://www.w3.org/2000/svg"', "")
        assert "http://" not in text, f"{path.name} names a server: no CDN, relative URLs only"
        assert "https://" not in text, f"{path.name} names a server: no CDN, relative URLs only"
    for sheet in STATIC.glob("*.css"):
        # An unclosed rule swallows every rule after it without any error in the browser.
        depth = 0
        for number, line in enumerate(
            re.sub(r"/\*.*?\*/", "", sheet.read_text(), flags=re.S).splitlines(), 1
        ):
            depth += line.count("{") - line.count("}")
            assert depth >= 0, f"{sheet.name}:{number}: a brace closes nothing"
        assert depth == 0, f"{sheet.name}: a rule is never closed"


# --- in a real browser -------------------------------------------------------------------------


def fleet_ready(base: str, expected: set[str]) -> bool:
    devices: list[dict[str, Any]] = httpx.get(f"{base}/devices", timeout=5).json()
    by_id = {d["id"]: d for d in devices}
    if set(by_id) != expected:
        return False
    agent = by_id.pop(AGENT_DEVICE)["sensors"]["env"]
    return (
        agent["source"] == "agent-emulation"
        and agent["last"] is not None
        and all(s["source"] == "simulation" for d in by_id.values() for s in d["sensors"].values())
    )


def test_page_shows_the_fleet_in_chromium(broker: Broker, tmp_path: Path) -> None:
    binary = find_chromium()
    if binary is None:
        pytest.skip(
            "no chromium binary on PATH (apt-get install chromium, or set EDGETWIN_CHROMIUM); "
            ".ci/run installs it"
        )
    config = page_config(broker, simulated=2)
    expected = {AGENT_DEVICE, "greenhouse-02", "sim-000", "sim-001"}
    with (
        serving(create_app(config)) as base,
        EmulatedAgent(
            as_endpoint(broker), one_bme280(AGENT_DEVICE, 0.3), state_dir=tmp_path / "state"
        ),
    ):
        written = httpx.put(
            f"{base}/devices/greenhouse-02/desired",
            json={"sensors": {"env": bme280(0.5).to_builtins()}},
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=5,
        )
        assert written.status_code == 200, written.text
        poll(lambda: fleet_ready(base, expected), timeout=15, what="agent online, rest simulated")

        with Chromium(binary, tmp_path / "browser") as browser:
            browser.navigate(f"{base}/")
            browser.wait_for(
                "document.querySelectorAll('#devices tr').length === 4 && "
                "document.getElementById('status').dataset.state === 'live' && "
                "document.getElementById('summary').textContent.includes('devices')",
                what="the fleet drawn",
            )
            dom = browser.evaluate("document.documentElement.outerHTML")
            screenshot = tmp_path / "fleet.png"
            browser.screenshot(screenshot)

    rows = re.findall(r'<tr data-device="([^"]+)"', dom)
    assert sorted(rows) == sorted(expected)
    for word in ("simulated", "emulated", "online", "unknown", "pending", "°C", "hPa", "live"):
        assert word in dom, f"{word!r} not on the page"
    assert re.search(r"<b>4</b> devices", dom), "summary line from GET /fleet missing"
    # The hostile label is shown as text, never parsed as markup.
    assert "&lt;img src=x onerror=" in dom
    assert "<img" not in dom
    assert screenshot.stat().st_size > 10_000


# --- live: charts, hand-over and reconnection, driven over the DevTools protocol -------------

CHART = 'figure.chart[data-sensor="env"][data-quantity="temperature"]'


def live_browser(tmp_path: Path) -> Chromium:
    binary = find_chromium()
    if binary is None:
        pytest.skip(
            "no chromium binary on PATH (apt-get install chromium, or set EDGETWIN_CHROMIUM); "
            ".ci/run installs it"
        )
    return Chromium(binary, tmp_path / "browser")


def max_seq(browser: Chromium, source: str) -> int:
    value = browser.evaluate(
        f"Math.max(0, ...[...document.querySelectorAll('{CHART} circle[data-source={source}]')]"
        ".map((c) => Number(c.dataset.seq)))"
    )
    return int(value)


def test_charts_move_with_readings_and_show_a_hand_over(broker: Broker, tmp_path: Path) -> None:
    config = page_config(broker, simulated=1)
    with (
        serving(create_app(config)) as base,
        live_browser(tmp_path) as browser,
        Capture(broker, f"edgetwin/{AGENT_DEVICE}/telemetry/+") as readings,
    ):
        agent = EmulatedAgent(
            as_endpoint(broker), one_bme280(AGENT_DEVICE, 0.3), state_dir=tmp_path / "state"
        )
        with agent:
            poll(
                lambda: fleet_ready(base, {AGENT_DEVICE, "greenhouse-02", "sim-000"}),
                timeout=15,
                what="agent online, rest simulated",
            )
            browser.navigate(f"{base}/")
            row = f'tr[data-device="{AGENT_DEVICE}"]'
            # The fleet table: a sparkline per sensor, drawn in the agent's colour.
            browser.wait_for(
                f"document.querySelectorAll('{row} svg.spark polyline[data-source=emulated]')"
                ".length > 0",
                what="the agent's sparkline",
            )
            assert browser.evaluate("document.querySelectorAll('#devices tr').length") == 3
            assert (
                browser.evaluate(
                    "document.querySelectorAll('tr[data-device=\"greenhouse-02\"] svg.spark')"
                    ".length"
                )
                == 2
            )

            browser.navigate(f"{base}/#/device/{AGENT_DEVICE}")
            browser.wait_for(
                f"document.querySelectorAll('{CHART} circle.pt').length >= 3",
                what="the device's temperature chart",
            )
            assert "°C" in browser.evaluate(
                f"document.querySelector('{CHART} figcaption').textContent"
            )
            first = max_seq(browser, "emulated")
            # The chart moves as readings arrive: pushed, then fetched as history since.
            browser.wait_for(
                f"Math.max(...[...document.querySelectorAll('{CHART} circle')]"
                f".map((c) => Number(c.dataset.seq))) > {first + 2}",
                what="the chart moving",
            )

        # The agent stopped: the gateway stands in. In seq order the chart's points end with
        # a run of emulated ones, up to the agent's last reading as the broker carried it,
        # followed by simulated ones that continue the agent's numbering (points simulated
        # before the agent came online may come first).
        def decoded() -> list[Telemetry]:
            return [Telemetry.decode(m.payload) for m in readings.messages()]

        poll(
            lambda: [r.source for r in decoded()][-2:] == ["simulated", "simulated"],
            timeout=15,
            what="the stand-in's readings on the broker",
        )
        last_real = max(r.seq for r in decoded() if r.source == "emulated")
        browser.wait_for(
            f"document.querySelector('{CHART} circle[data-source=emulated]"
            f'[data-seq="{last_real}"]\')'
            f" && [...document.querySelectorAll('{CHART} circle[data-source=simulated]')]"
            f".filter((c) => Number(c.dataset.seq) > {last_real}).length >= 2",
            what="the agent's last reading and simulated points after the hand-over",
        )
        points = browser.evaluate(
            f"[...document.querySelectorAll('{CHART} circle.pt')]"
            ".map((c) => [Number(c.dataset.seq), c.dataset.source])"
        )
        assert max_seq(browser, "emulated") == last_real
        after = sorted(seq for seq, source in points if seq > last_real)
        assert after[0] == last_real + 1, points  # one numbering across the hand-over
        assert {source for seq, source in points if seq > last_real} == {"simulated"}, points
        colours = browser.evaluate(
            f"[...new Set([...document.querySelectorAll('{CHART} circle.pt')]"
            ".map((c) => getComputedStyle(c).fill))]"
        )
        assert len(colours) == 2, colours  # one colour per source


def test_the_page_reconnects_after_a_gateway_restart(broker: Broker, tmp_path: Path) -> None:
    config = page_config(broker, simulated=1)
    with live_browser(tmp_path) as browser:
        with serving(create_app(config)) as base:
            port = int(base.rsplit(":", 1)[1])
            browser.navigate(f"{base}/")
            browser.wait_for(
                "document.body.dataset.snapshots === '1' && "
                "document.querySelectorAll('#devices tr').length === 3",
                what="the first snapshot drawn",
            )
        browser.wait_for(
            "document.getElementById('status').dataset.state === 'lost'",
            what="the page noticing the gateway gone",
        )
        with serving(create_app(config), port=port):
            browser.wait_for(
                "Number(document.body.dataset.snapshots) >= 2 && "
                "document.getElementById('status').dataset.state === 'live'",
                timeout=20,
                what="the page resynced from the restarted gateway",
            )
            assert browser.evaluate("document.querySelectorAll('#devices tr').length") == 3
