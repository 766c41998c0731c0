"""The fleet page at GET /: served with its assets, and drawn by a real headless Chromium.

The browser test runs the gateway on uvicorn on a free port (a browser cannot talk to
TestClient), against a private broker, with one device served by an emulating agent and the
rest simulated. It is skipped, with the reason, when no Chromium binary is found; .ci/run
installs Debian's chromium so that it runs in CI.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from edgetwin.gateway.app import create_app
from edgetwin.gateway.config import GatewayConfig, ManifestDevice
from edgetwin.testing.agent import EmulatedAgent
from edgetwin.testing.broker import Broker
from edgetwin.testing.capture import as_endpoint
from edgetwin.testing.gateway import serving
from edgetwin.testing.waiting import poll
from tests.fleet_helpers import bme280, mqtt_settings, one_bme280

pytestmark = pytest.mark.integration

STATIC = Path(__file__).resolve().parent.parent / "gateway" / "static"
TOKEN = "page-test-token"
AGENT_DEVICE = "greenhouse-01"
HOSTILE_LABEL = '<img src=x onerror="document.title=1">'
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Flags that keep a headless run quiet, offline (no updates, sync or QUIC) and bounded in time.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--virtual-time-budget=5000",
)


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


def test_script_never_writes_markup_from_data() -> None:
    """Device ids, sites and labels come from the network: only textContent may carry them."""
    script = (STATIC / "fleet.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script, f"fleet.js uses {sink}"
    for asset in ("index.html", "fleet.js", "fleet.css"):
        text = (STATIC / asset).read_text()
        assert "http://" not in text, f"{asset} names a server: no CDN, relative URLs only"
        assert "https://" not in text, f"{asset} names a server: no CDN, relative URLs only"


# --- in a real browser -------------------------------------------------------------------------


def chromium_binary() -> str | None:
    names = [os.environ["EDGETWIN_CHROMIUM"]] if "EDGETWIN_CHROMIUM" in os.environ else []
    for name in [*names, *CHROMIUM_NAMES]:
        found = shutil.which(name)
        if found:
            return found
    return None


def run_chromium(binary: str, workdir: Path, *args: str, timeout: float = 60) -> str:
    """Run headless Chromium in its own process group; return its stdout."""
    workdir.mkdir(parents=True, exist_ok=True)
    command = [binary, *CHROMIUM_FLAGS, f"--user-data-dir={workdir / 'profile'}", *args]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        env={**os.environ, "HOME": str(workdir)},
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate(timeout=10)
        raise AssertionError(
            f"chromium did not finish in {timeout} s: {stderr.decode(errors='replace')[-2000:]}"
        ) from None
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # renderers left behind, if any
    assert process.returncode == 0, stderr.decode(errors="replace")[-2000:]
    return stdout.decode()


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
    binary = chromium_binary()
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

        dom = run_chromium(binary, tmp_path / "dom", "--dump-dom", f"{base}/")
        screenshot = tmp_path / "fleet.png"
        run_chromium(
            binary,
            tmp_path / "shot",
            f"--screenshot={screenshot}",
            "--window-size=1280,800",
            f"{base}/",
        )

    rows = re.findall(r'<tr data-device="([^"]+)"', dom)
    assert sorted(rows) == sorted(expected)
    for word in ("simulated", "emulated", "online", "unknown", "pending", "°C", "hPa", "live"):
        assert word in dom, f"{word!r} not on the page"
    assert re.search(r"<b>4</b> devices", dom), "summary line from GET /fleet missing"
    # The hostile label is shown as text, never parsed as markup.
    assert "&lt;img src=x onerror=" in dom
    assert "<img" not in dom
    assert screenshot.stat().st_size > 10_000
    keep = os.environ.get("EDGETWIN_PAGE_SCREENSHOT")
    if keep:
        shutil.copyfile(screenshot, keep)
