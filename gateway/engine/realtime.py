"""`edgetwin simulate` without `--virtual`: a scenario played in real time by the scale engine,
straight to a broker, with no gateway around it (a pipeline's test fleet from one command)."""

from __future__ import annotations

import signal
import sys
import threading
import time
from types import FrameType
from typing import Literal

from gateway.engine.controller import EngineController, EngineError, EngineStats
from gateway.engine.link import Endpoint
from gateway.engine.settings import EngineSettings
from gateway.scenario import Scenario

REPORT_EVERY = 5.0  # seconds between the status lines on stderr


def _status_line(stats: EngineStats) -> str:
    p99 = "-" if stats.lateness_p99_ms is None else f"{stats.lateness_p99_ms:.1f}"
    return (
        f"{stats.devices} devices: {stats.delivered_per_s:.0f}/s of {stats.target_per_s:.0f}/s "
        f"target, {stats.sent} sent, p99 lateness {p99} ms, "
        f"{stats.late_skipped + stats.backlog_skipped} ticks skipped"
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
) -> int:
    """Run until `seconds` have passed (None: until SIGINT or SIGTERM); the exit code."""
    if scenario.origin is None:
        scenario = scenario.with_start(time.time())
    settings = EngineSettings(workers=workers, max_workers=workers, qos=qos, payload=payload)
    engine = EngineController(endpoint, settings)
    stop = threading.Event()

    def on_signal(_number: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            engine.start(scenario)
        except EngineError as exc:
            print(f"edgetwin simulate: {exc}", file=sys.stderr)
            return 1
        deadline = None if seconds is None else time.monotonic() + seconds
        while not stop.is_set():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            stop.wait(REPORT_EVERY if left is None else min(REPORT_EVERY, left))
            if not quiet:
                print(_status_line(engine.refresh()), file=sys.stderr)
        final = engine.refresh()
    finally:
        engine.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print(_status_line(final))
    return 0
