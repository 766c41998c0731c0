"""Regenerate the gateway page's screenshots in docs/screenshots/ (shown in README.md).

Run: ``./dev screenshots`` (or ``.venv/bin/python docs/screenshots.py``; ``--help``). Needs
mosquitto and Chromium, as the page's tests do. About a minute; prints the files it wrote.

What it sets up, all private to this run: a mosquitto on a free port; a gateway (uvicorn on a
thread, as the tests run it) whose manifest has `demo-pi`, an agent's device, four devices no
agent serves (`sim-*`, simulated by the gateway) and `device_001`, a device of the scale
engine's fleet that the manifest names without sensors, so that the twin follows the engine's
readings of it; the scale engine running 300 devices, resized and sped up on the way; and an
agent on emulated BME280s for `demo-pi`, started once the gateway has simulated it for a while,
so that its charts show the hand-over. A spike is injected on `device_001` from the engine
panel. Headless Chromium (tests/browser.py's DevTools driver) then saves:

- fleet.png: the fleet table;
- device.png: demo-pi's charts, simulated by the gateway and then read by the agent;
- device-twin.png: demo-pi's desired-config form, twin documents and hand-over log;
- device-fault.png: device_001's charts with the injected fault's band;
- engine.png: the engine panel with its live charts;
- device-loop.png: sim-000, simulated by the gateway, whose heater relay (a desired output the
  gateway applies for it) warms its temperature through the response its manifest entry
  declares (README, "Closed loop").
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edgetwin.gateway.app import create_app
from edgetwin.gateway.config import GatewayConfig, ManifestDevice, default_sensors
from edgetwin.gateway.demo import AGENT_DEVICE, demo_sensors
from edgetwin.gateway.scenario.model import ResponseSpec
from edgetwin.testing.agent import EmulatedAgent
from edgetwin.testing.broker import start_broker
from edgetwin.testing.capture import as_endpoint
from edgetwin.testing.gateway import serving
from edgetwin.testing.waiting import poll
from tests.browser import Chromium, chromium_binary

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "screenshots"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
ENGINE_DEVICE = "device_001"
INTERVAL = 1.0  # seconds between a demo device's readings: charts fill in seconds
LOOP_DEVICE = "sim-000"
HEATED = ResponseSpec(
    sensor="env", quantity="temperature", time_constant=8.0, gains={"heater": 6.0}
)


def gateway_config(host: str, port: int) -> GatewayConfig:
    return GatewayConfig.from_builtins(
        {
            "mqtt": {"host": host, "port": port, "keepalive": 5},
            "presence": {"startup_grace": 0.5},
            "api": {"token": TOKEN},
            "devices": [
                ManifestDevice(
                    id=AGENT_DEVICE,
                    sensors=demo_sensors(INTERVAL),
                    site="greenhouse",
                    labels={"row": "3"},
                ),
                *(
                    ManifestDevice(
                        id=f"sim-{i:03d}",
                        sensors=default_sensors(2 * INTERVAL),
                        site="greenhouse" if i < 2 else "store",
                        responses=[HEATED] if f"sim-{i:03d}" == LOOP_DEVICE else [],
                    )
                    for i in range(4)
                ),
                # No sensors of its own: the twin keeps the engine's readings of it for its
                # charts and never stands in for it.
                ManifestDevice(id=ENGINE_DEVICE, sensors={}, labels={"fleet": "engine"}),
            ],
        }
    )


def history(base: str, device: str, sensor: str) -> dict[str, Any]:
    answer = httpx.get(f"{base}/devices/{device}/history", params={"sensor": sensor}, timeout=5)
    if answer.status_code != 200:
        return {"source": [], "anomaly": []}
    series: dict[str, Any] = answer.json()["sensors"][sensor]
    return series


def points_from(base: str, device: str, sensor: str, source: str) -> int:
    sources: list[str] = history(base, device, sensor)["source"]
    return sources.count(source)


def engine(base: str, method: str, path: str, body: dict[str, Any] | None = None) -> None:
    answer = httpx.request(method, f"{base}/engine/{path}", json=body, headers=BEARER, timeout=30)
    answer.raise_for_status()


def heat(base: str) -> None:
    """Switch sim-000's heater on: the gateway applies it and the room warms."""
    current = httpx.get(f"{base}/devices/{LOOP_DEVICE}/desired", timeout=5)
    sensors = {
        name: settings.to_builtins() for name, settings in default_sensors(2 * INTERVAL).items()
    }
    heater = {"driver": "digital_output", "pin": 17, "value": 1}
    answer = httpx.put(
        f"{base}/devices/{LOOP_DEVICE}/desired",
        json={"sensors": sensors, "outputs": {"heater": heater}},
        headers={**BEARER, "If-Match": current.headers.get("ETag", '"0"')},
        timeout=5,
    )
    answer.raise_for_status()


def shoot(browser: Chromium, out: Path, name: str) -> Path:
    path = out / name
    browser.screenshot(path)
    print(
        f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}: "
        f"{path.stat().st_size // 1024} KiB"
    )
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    parser.add_argument("--window", default="1280,800", help="width,height of the page")
    args = parser.parse_args()
    binary = chromium_binary()
    if binary is None:
        raise SystemExit("no chromium binary (apt-get install chromium, or set EDGETWIN_CHROMIUM)")
    args.out.mkdir(parents=True, exist_ok=True)

    with (
        start_broker("mosquitto") as broker,
        serving(create_app(gateway_config(broker.host, broker.port))) as base,
        tempfile.TemporaryDirectory(prefix="edgetwin-screenshots-") as tmp,
    ):
        # Started first, so that its charts have the most history when they are taken.
        engine(base, "POST", "start", {"devices": 300, "interval": 1.0})
        poll(
            lambda: points_from(base, AGENT_DEVICE, "env", "simulated") >= 12,
            timeout=60,
            what="demo-pi simulated by the gateway for a while",
        )
        heat(base)
        agent = EmulatedAgent(
            as_endpoint(broker),
            {
                "agent": {"device_id": AGENT_DEVICE},
                # The manifest's sensors, as the agent's config file states them.
                "sensors": {
                    name: {k: v for k, v in settings.to_builtins().items() if v is not None}
                    for name, settings in demo_sensors(INTERVAL).items()
                },
            },
            state_dir=Path(tmp) / "agent",
        )
        with agent, Chromium(binary, Path(tmp) / "browser", window=args.window) as browser:
            # The page's viewport exactly: --window-size is the window, toolbars' room included.
            width, height = (int(n) for n in args.window.split(","))
            browser.send(
                "Emulation.setDeviceMetricsOverride",
                {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
                session=browser.session,
            )
            engine(base, "PUT", "size", {"devices": 500})
            browser.navigate(f"{base}/#/engine")
            browser.wait_for(
                "document.getElementById('engine-fault-type').options.length > 0",
                what="the engine panel",
            )
            poll(
                lambda: points_from(base, AGENT_DEVICE, "env", "emulated") >= 12,
                timeout=60,
                what="demo-pi's agent serving it",
            )
            engine(base, "PUT", "rate", {"multiplier": 2})
            form = {
                "engine-fault-devices": ENGINE_DEVICE,
                "engine-fault-type": "spike",
                "engine-fault-duration": 8,
                "engine-fault-param": 12,
            }
            for element, value in form.items():
                browser.evaluate(
                    f"document.getElementById({json.dumps(element)}).value = {json.dumps(value)}"
                )
            browser.evaluate(
                "document.getElementById('engine-fault-type').dispatchEvent(new Event('change'))"
            )
            # Not awaited: the click's write asks for the API token in the page's dialog.
            browser.evaluate("document.getElementById('engine-inject').click(), true")
            browser.wait_for("document.getElementById('token-dialog').open", what="token dialog")
            browser.evaluate(f"document.getElementById('token-input').value = {json.dumps(TOKEN)}")
            browser.evaluate("document.getElementById('token-ok').click()")
            browser.wait_for(
                "document.getElementById('engine-fault-note').dataset.kind === 'ok'",
                what="the fault injected from the panel",
            )

            def fault_over() -> bool:
                marks = history(base, ENGINE_DEVICE, "env")["anomaly"]
                banded = [i for i, mark in enumerate(marks) if mark]
                return bool(banded) and len(marks) - banded[-1] > 8

            poll(fault_over, timeout=60, what="the fault over, with clean readings after it")

            # By its hash, like the page's own links: the page stays loaded, and the engine
            # panel keeps what it said about the fault for its own screenshot.
            browser.navigate(f"{base}/#/")
            browser.wait_for(
                "document.querySelectorAll('#devices tr').length === 6 && "
                "document.getElementById('status').dataset.state === 'live' && "
                "document.querySelectorAll('#devices svg.spark polyline').length >= 5",
                what="the fleet table",
            )
            shoot(browser, args.out, "fleet.png")

            browser.navigate(f"{base}/#/device/{AGENT_DEVICE}")
            browser.wait_for(
                "document.querySelectorAll('#charts circle[data-source=emulated]').length > 0 &&"
                " document.querySelectorAll('#charts circle[data-source=simulated]').length > 0",
                what="demo-pi's charts with the hand-over",
            )
            shoot(browser, args.out, "device.png")
            browser.wait_for(
                "document.querySelectorAll('#twin-docs dl, #twin-docs table').length > 0"
                " && document.querySelectorAll('#desired-editor input').length > 0",
                what="demo-pi's twin documents and config form",
            )
            browser.evaluate("document.getElementById('desired-panel').scrollIntoView(); true")
            shoot(browser, args.out, "device-twin.png")
            browser.evaluate("window.scrollTo(0, 0); true")

            browser.navigate(f"{base}/#/device/{ENGINE_DEVICE}")
            browser.wait_for(
                "document.querySelectorAll('#charts rect.fault').length > 0",
                what="device_001's charts with the fault band",
            )
            shoot(browser, args.out, "device-fault.png")

            browser.navigate(f"{base}/#/engine")
            browser.wait_for(
                "(document.querySelector('#engine-charts path[data-line=delivered]')"
                "?.getAttribute('d').match(/L/g) || []).length >= 30",
                what="the engine panel's charts",
            )
            shoot(browser, args.out, "engine.png")

            browser.navigate(f"{base}/#/device/{LOOP_DEVICE}")
            browser.wait_for(
                "document.querySelector('#output-rows tr[data-output=heater]')"
                "?.dataset.backend === 'simulated' && "
                "document.querySelectorAll('#charts circle[data-source=simulated]').length > 20",
                what="sim-000's heater and charts",
            )
            shoot(browser, args.out, "device-loop.png")
        engine(base, "POST", "stop")


if __name__ == "__main__":
    main()
