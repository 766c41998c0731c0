"""Benchmark of the fleet page at 10,000 devices: first paint, and the cost of each update.

Run: ``.venv/bin/python bench/page_bench.py`` (``--help`` for options). Needs mosquitto and
Chromium (as the page's tests). Prints a table; asserts nothing. About a minute.

A private mosquitto and a gateway (uvicorn on a thread of this process, as the tests run it)
with N manifest devices and no agents: all of them are simulated by the gateway's stand-ins,
one BME280 each every `--interval` seconds, and the twin receives every reading back, so the
page has N devices that change all the time. Headless Chromium, driven over the DevTools
protocol (tests/browser.py), opens the page:

- first table: from the navigation to the page's `edgetwin-first-table` mark (the snapshot of
  its first 100 devices drawn), and the browser's first-contentful-paint, over `--loads` loads;
- per update, over `--seconds` of the live feed: the gateway's CPU in `LiveHub.cycle` (take the
  changed devices, build and encode the summaries of the page's changed devices, offer them),
  per cycle; the bytes of each `devices` event; and the browser's script and task time
  (`Performance.getMetrics` ScriptDuration and TaskDuration) per event it handled; plus the
  whole gateway process's CPU (ingesting N / interval readings a second, the stand-ins' engine
  thread and the feed) for scale;
- the device view (#/device/ID): from the navigation to its charts drawn.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edgetwin.gateway.app import create_app
from edgetwin.gateway.config import GatewayConfig
from edgetwin.testing.broker import start_broker
from edgetwin.testing.gateway import serving
from edgetwin.testing.waiting import poll
from tests.browser import Chromium, chromium_binary


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between readings")
    parser.add_argument("--seconds", type=float, default=20.0, help="live feed measured")
    parser.add_argument("--loads", type=int, default=3)
    parser.add_argument(
        "--screenshots",
        type=Path,
        help="directory to save the fleet table and a device's view at this fleet size into "
        "(fleet-N.png, device-N.png)",
    )
    args = parser.parse_args()
    binary = chromium_binary()
    if binary is None:
        raise SystemExit("no chromium binary (apt-get install chromium)")

    broker = start_broker()
    sensors = {"env": {"driver": "bme280", "interval": args.interval, "backend": "emulated"}}
    config = GatewayConfig.from_builtins(
        {
            "mqtt": {"host": broker.host, "port": broker.port},
            "presence": {"startup_grace": 0.5},
            "devices": [{"id": f"dev-{i:05d}", "sensors": sensors} for i in range(args.devices)],
        }
    )
    app = create_app(config)
    rows: list[tuple[str, str]] = []
    try:
        with serving(app) as base, tempfile.TemporaryDirectory() as tmp:
            started = time.monotonic()

            def simulated() -> bool:
                fleet = httpx.get(f"{base}/fleet", timeout=30).json()
                return bool(fleet["simulated_devices"] == args.devices)

            poll(simulated, 300, 0.5, what="every device simulated")
            # A full round of readings, so that every row has a last value and a sparkline.
            time.sleep(args.interval * 2)  # let readings and history accumulate (bench only)
            rows.append(("devices (all simulated, 1 BME280 each)", f"{args.devices:,}"))
            rows.append(("readings/s into the twin", f"{args.devices / args.interval:,.0f}"))
            rows.append(("gateway ready (all simulated)", f"{time.monotonic() - started:.1f} s"))
            hub = app.state.live
            with Chromium(binary, Path(tmp)) as browser:
                firsts, fcps = [], []
                for _ in range(args.loads):
                    browser.navigate("about:blank")
                    browser.wait_for("location.href === 'about:blank'")
                    browser.navigate(f"{base}/")
                    browser.wait_for(
                        "performance.getEntriesByName('edgetwin-first-table').length > 0",
                        timeout=60,
                    )
                    firsts.append(
                        browser.evaluate(
                            "performance.getEntriesByName('edgetwin-first-table')[0].startTime"
                        )
                    )
                    fcps.append(
                        browser.evaluate(
                            "(performance.getEntriesByName('first-contentful-paint')[0] || "
                            "{startTime: NaN}).startTime"
                        )
                    )
                rows.append(
                    (
                        "first table drawn (100 rows of the 10,000), ms",
                        " / ".join(f"{v:.0f}" for v in firsts),
                    )
                )
                rows.append(("first-contentful-paint, ms", " / ".join(f"{v:.0f}" for v in fcps)))
                rows_drawn = browser.evaluate("document.querySelectorAll('#devices tr').length")
                rows.append(("rows in the DOM", str(rows_drawn)))

                # Earlier loads' streams end once the gateway notices their sockets closed.
                poll(lambda: len(hub.clients) == 1, 10, what="one stream open")
                before_page = browser.metrics()
                updates0 = int(browser.evaluate("Number(document.body.dataset.updates || 0)"))
                cycles0, hub_cpu0, bytes0 = hub.cycles, hub.cycle_seconds, hub.bytes_sent
                snapshots0 = hub.snapshots
                rows.append(("live: streams open on the gateway", str(len(hub.clients))))
                streams = len(hub.clients)
                cpu0, wall0 = cpu(), time.monotonic()
                time.sleep(args.seconds)  # the measured window of the live feed
                cpu1, wall1 = cpu(), time.monotonic()
                after_page = browser.metrics()
                updates = int(browser.evaluate("Number(document.body.dataset.updates || 0)"))
                updates -= updates0
                cycles = hub.cycles - cycles0
                rows.append(("live: devices events received by the page", str(updates)))
                rows.append(
                    ("live: snapshots sent again (resyncs)", str(hub.snapshots - snapshots0))
                )
                rows.append(
                    (
                        "server CPU per update cycle (LiveHub.cycle)",
                        f"{(hub.cycle_seconds - hub_cpu0) / max(cycles, 1) * 1e3:.2f} ms",
                    )
                )
                rows.append(
                    (
                        "bytes per update event",
                        f"{(hub.bytes_sent - bytes0) / max(updates * streams, 1):,.0f}",
                    )
                )
                for name in ("ScriptDuration", "TaskDuration"):
                    spent = after_page[name] - before_page[name]
                    rows.append(
                        (f"browser {name} per update", f"{spent / max(updates, 1) * 1e3:.2f} ms")
                    )
                rows.append(
                    (
                        "gateway process CPU during the window",
                        f"{(cpu1 - cpu0) / (wall1 - wall0) * 100:.0f} % of a core",
                    )
                )

                if args.screenshots is not None:
                    args.screenshots.mkdir(parents=True, exist_ok=True)
                    browser.screenshot(args.screenshots / f"fleet-{args.devices}.png")

                started_view = time.monotonic()
                browser.navigate(f"{base}/#/device/dev-00042")
                browser.wait_for(
                    "document.querySelectorAll('figure.chart circle.pt').length > 0", timeout=30
                )
                rows.append(
                    (
                        "device view: charts drawn",
                        f"{(time.monotonic() - started_view) * 1e3:.0f} ms",
                    )
                )
                if args.screenshots is not None:
                    browser.screenshot(args.screenshots / f"device-{args.devices}.png")
    finally:
        broker.close()
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    main()
