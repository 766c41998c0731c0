"""`edgetwin simulate` without `--virtual`: a scenario played in real time by the scale engine,
straight to a broker, with no gateway around it (a pipeline's test fleet from one command)."""

from __future__ import annotations

import signal
import sys
import threading
import time
from types import FrameType
from typing import Literal

from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server

from edgetwin.gateway.engine.controller import EngineController, EngineError, EngineStats
from edgetwin.gateway.engine.link import Endpoint, probe
from edgetwin.gateway.engine.metrics import EngineCollector
from edgetwin.gateway.engine.settings import EngineSettings
from edgetwin.gateway.scenario import Scenario

REPORT_EVERY = 5.0  # seconds between the status lines on stderr


def _p99(stats: EngineStats) -> str:
    return "-" if stats.lateness_p99_ms is None else f"{stats.lateness_p99_ms:.1f}"


def status_line(stats: EngineStats) -> str:
    """The last seconds: what reached the socket (QoS 0) or the broker's PUBACKs (QoS 1)
    against the target; the tick rate only as "scheduled"."""
    how = "acknowledged" if stats.qos == 1 else "handed to the socket"
    acked = f", {stats.acked} acknowledged, {stats.lost} lost" if stats.qos == 1 else ""
    return (
        f"{stats.devices} devices: {stats.delivered_per_s:.0f}/s {how} of "
        f"{stats.target_per_s:.0f}/s target ({stats.scheduled_per_s:.0f}/s scheduled), "
        f"{stats.sent} sent{acked}, p99 lateness {_p99(stats)} ms, "
        f"{stats.late_skipped + stats.backlog_skipped} ticks skipped"
    )


def final_line(running: EngineStats, final: EngineStats, seconds: float) -> str:
    """The whole run: messages handed to the socket over the time since the clock started
    (`running`: the figures just before the stop), then the totals after it (`final`), which
    include the last batch and the PUBACKs that close() waited for."""
    rate = running.sent / seconds if seconds > 0 else 0.0
    acked = ""
    if running.qos == 1:
        acked_rate = running.acked / seconds if seconds > 0 else 0.0
        acked = f", {acked_rate:.0f}/s acknowledged"
    totals = f"{final.sent} sent in all"
    if final.qos == 1:
        totals += f", {final.acked} acknowledged, {final.refused} refused"
    return (
        f"{running.devices} devices: {rate:.0f}/s handed to the socket{acked} over "
        f"{seconds:.1f} s, target {running.target_per_s:.0f}/s; {totals}, {final.lost} lost, "
        f"{final.late_skipped + final.backlog_skipped} ticks skipped, "
        f"p99 lateness {_p99(final)} ms"
    )


def run_realtime(
    scenario: Scenario,
    endpoint: Endpoint,
    *,
    seconds: float | None,
    workers: int,
    qos: Literal[0, 1],
    payload: Literal["edgetwin", "flat"],
    quiet: bool = False,
    metrics: tuple[str, int] | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Run until `seconds` have passed (None: until SIGINT or SIGTERM, or until the caller
    sets `stop`); the exit code. With `metrics` (host, port), the engine's Prometheus figures
    are served there while it runs: the same `edgetwin_engine_*` families as the gateway's,
    and the process's; an orchestrator's probes and a Prometheus scrape of a replica both use
    them."""
    error = probe(endpoint)
    if error is not None:
        print(f"edgetwin simulate: {error}", file=sys.stderr)
        return 1
    if scenario.origin is None:
        scenario = scenario.with_start(time.time())
    settings = EngineSettings(workers=workers, max_workers=workers, qos=qos, payload=payload)
    engine = EngineController(endpoint, settings)
    server = None
    if metrics is not None:
        registry = CollectorRegistry()
        registry.register(EngineCollector(engine))
        ProcessCollector(registry=registry)
        try:
            server, _ = start_http_server(metrics[1], metrics[0], registry=registry)
        except OSError as exc:
            print(
                f"edgetwin simulate: metrics on {metrics[0]}:{metrics[1]}: {exc}", file=sys.stderr
            )
            return 2
    stopping = threading.Event() if stop is None else stop

    def on_signal(_number: int, _frame: FrameType | None) -> None:
        stopping.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            engine.start(scenario)
        except EngineError as exc:
            print(f"edgetwin simulate: {exc}", file=sys.stderr)
            return 1
        started = time.monotonic()
        deadline = None if seconds is None else started + seconds
        while not stopping.is_set():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            stopping.wait(REPORT_EVERY if left is None else min(REPORT_EVERY, left))
            if not quiet:
                print(status_line(engine.refresh()), file=sys.stderr)
        running = engine.refresh()
        elapsed = time.monotonic() - started
        engine.close()
        final = engine.stats()  # the stopped run's figures, as each worker reported at its end
    finally:
        engine.close()
        if server is not None:
            server.shutdown()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print(final_line(running, final, elapsed))
    return 0
