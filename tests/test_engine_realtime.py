"""`edgetwin simulate`'s status and exit lines: what reached the socket or the broker, never the
target or the tick rate as if it had been delivered."""

from __future__ import annotations

import msgspec

from edgetwin.gateway.engine import EngineStats
from edgetwin.gateway.engine.realtime import final_line, status_line


def stats(**changes: object) -> EngineStats:
    base = EngineStats(
        state="running",
        fleet="api",
        devices=50_000,
        streams=50_000,
        workers=2,
        qos=0,
        payload="edgetwin",
        rate=1.0,
        target_per_s=50_000.0,
        scheduled_per_s=49_000.0,
        delivered_per_s=28_400.0,
        messages_per_s=28_400.0,
        acked_per_s=0.0,
        ticks=1_000_000,
        sent=568_000,
        acked=0,
        rejected=0,
        lost=0,
        late_skipped=10,
        backlog_skipped=20,
        refused=0,
        lateness_p50_ms=3.0,
        lateness_p99_ms=8.0,
        lateness_counts=[],
        lateness_sum=0.0,
        rss_bytes=0,
        cpu_seconds=0.0,
        per_worker=[],
    )
    return msgspec.structs.replace(base, **changes)


def test_the_status_line_gives_the_socket_rate_and_labels_the_tick_rate_scheduled() -> None:
    line = status_line(stats())
    assert line.startswith(
        "50000 devices: 28400/s handed to the socket of 50000/s target (49000/s scheduled), "
        "568000 sent,"
    )
    assert line.endswith("30 ticks skipped")


def test_at_qos_1_the_status_line_gives_the_acknowledged_rate() -> None:
    line = status_line(
        stats(qos=1, delivered_per_s=20_000.0, acked_per_s=20_000.0, acked=400_000, lost=7)
    )
    assert "20000/s acknowledged of 50000/s target (49000/s scheduled)" in line
    assert "568000 sent, 400000 acknowledged, 7 lost" in line


def test_the_exit_line_gives_what_was_handed_over_the_whole_run() -> None:
    running = stats(sent=284_000)  # 10 s of the run at 28,400/s, whatever the target
    final = stats(state="stopped", sent=284_100, lost=2)
    line = final_line(running, final, 10.0)
    assert line == (
        "50000 devices: 28400/s handed to the socket over 10.0 s, target 50000/s; "
        "284100 sent in all, 2 lost, 30 ticks skipped, p99 lateness 8.0 ms"
    )
    qos1 = final_line(
        stats(qos=1, sent=284_000, acked=200_000),
        stats(qos=1, sent=284_100, acked=284_000, refused=3),
        10.0,
    )
    assert qos1.startswith(
        "50000 devices: 28400/s handed to the socket, 20000/s acknowledged over 10.0 s, "
        "target 50000/s; 284100 sent in all, 284000 acknowledged, 3 refused, 0 lost"
    )
