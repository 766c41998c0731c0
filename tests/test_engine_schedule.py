"""The engine's schedule and lateness histogram on a virtual clock: no processes, no broker."""

from __future__ import annotations

import pytest

from edgetwin.gateway.engine.schedule import Entry, Schedule, Timeline
from edgetwin.gateway.engine.stats import LATENESS_EDGES, Lateness, quantile


def fleet(n: int, interval: float = 1.0) -> list[Entry]:
    return [Entry(i, interval, (i / n) * interval) for i in range(n)]


def test_each_stream_fires_once_per_interval_in_deadline_order() -> None:
    schedule = Schedule(fleet(4))
    taken = []
    for s_now in (0.1, 0.8, 1.3, 2.0):
        due, skipped = schedule.take_due(s_now, skip_before=-10, limit=100)
        assert skipped == 0
        taken += due
    # Phases 0, .25, .5, .75 over cycles 0 and 1, then cycle 2's phase 0 exactly at s=2.
    assert taken == [
        (0, 0.0), (1, 0.25), (2, 0.5), (3, 0.75),
        (0, 1.0), (1, 1.25), (2, 1.5), (3, 1.75),
        (0, 2.0),
    ]  # fmt: skip
    assert schedule.next_time() == 2.25


def test_batch_limit_leaves_the_rest_for_the_next_pass() -> None:
    schedule = Schedule(fleet(10))
    first, _ = schedule.take_due(0.95, skip_before=-1, limit=4)
    rest, _ = schedule.take_due(0.95, skip_before=-1, limit=100)
    assert [i for i, _ in first] == [0, 1, 2, 3]
    assert [i for i, _ in rest] == [4, 5, 6, 7, 8, 9]


def test_a_backlog_is_skipped_and_counted_and_coalesced_to_one_tick_per_stream() -> None:
    schedule = Schedule(fleet(4))
    # 10 s behind with max lateness 0.5 s: only ticks in (9.5, 10] survive.
    due, skipped = schedule.take_due(10.0, skip_before=9.5, limit=1000)
    assert due == [(3, 9.75), (0, 10.0)]
    assert skipped == 39  # the deadlines in [0, 9.5]
    assert len(due) + skipped == 41  # every deadline in [0, 10] counted once


def test_coalescing_keeps_at_most_one_tick_per_stream_even_with_a_long_max_lateness() -> None:
    schedule = Schedule(fleet(2, interval=0.1))
    due, skipped = schedule.take_due(5.0, skip_before=-100, limit=1000)
    assert sorted(i for i, _ in due) == [0, 1]
    assert skipped == 99


def test_a_rebuilt_schedule_does_not_replay_taken_ticks() -> None:
    schedule = Schedule(fleet(4))
    schedule.take_due(1.3, skip_before=-1, limit=100)
    rebuilt = Schedule(fleet(6), after=1.3)
    due, _ = rebuilt.take_due(2.0, skip_before=-1, limit=100)
    assert all(s > 1.3 for _, s in due)
    # Phases k/6: in (1.3, 2.0] fall 1.33, 1.5, 1.67, 1.83 and 2.0; stream 1 (1.17) was taken.
    assert due == [
        (2, pytest.approx(4 / 3)),
        (3, 1.5),
        (4, pytest.approx(5 / 3)),
        (5, pytest.approx(11 / 6)),
        (0, 2.0),
    ]


def test_skip_to_counts_everything_up_to_a_time() -> None:
    schedule = Schedule(fleet(5))
    assert schedule.skip_to(2.0) == 11  # 2 full cycles and s=2.0 itself
    assert schedule.next_time() == pytest.approx(2.2)


def test_timeline_pause_freezes_and_rate_rescales_schedule_time() -> None:
    timeline = Timeline(wall_start=1000.0)
    assert timeline.schedule_time(1002.0) == 2.0
    timeline.pause(1002.0)
    assert timeline.schedule_time(1010.0) == 2.0
    timeline.resume(1010.0)
    assert timeline.schedule_time(1011.0) == 3.0
    timeline.set_rate(4.0, 1011.0)
    assert timeline.schedule_time(1012.0) == 7.0
    assert timeline.wall_time(7.0) == 1012.0


def test_schedule_rejects_a_zero_interval() -> None:
    with pytest.raises(ValueError, match="interval"):
        Schedule([Entry(0, 0.0, 0.0)])


def test_lateness_quantiles_come_from_bucket_counts() -> None:
    lateness = Lateness()
    for _ in range(98):
        lateness.add(0.001)
    lateness.add(0.2)
    lateness.add(0.2)
    p50 = quantile(lateness.counts, 0.5)
    p99 = quantile(lateness.counts, 0.99)
    assert p50 is not None
    assert 0.001 <= p50 < 0.00113
    assert p99 is not None
    assert 0.2 <= p99 < 0.23
    assert quantile([0] * (len(LATENESS_EDGES) + 1), 0.5) is None


def test_streams_of_different_intervals_each_keep_their_own() -> None:
    schedule = Schedule([Entry(0, 0.5, 0.0), Entry(1, 2.0, 0.1), Entry(2, 0.5, 0.25)])
    assert schedule.per_second == pytest.approx(4.5)
    taken: list[tuple[int, float]] = []
    s = 0.0
    while s <= 4.0:
        due, skipped = schedule.take_due(s, skip_before=-1, limit=100)
        assert skipped == 0
        taken += due
        s = round(s + 0.05, 2)
    by_stream = {i: [t for j, t in taken if j == i] for i in range(3)}
    assert by_stream[1] == pytest.approx([0.1, 2.1])
    assert by_stream[0] == pytest.approx([0.5 * k for k in range(9)])
    assert by_stream[2] == pytest.approx([0.25 + 0.5 * k for k in range(8)])


def test_take_through_takes_every_tick_however_far_behind_in_the_runs_own_frame() -> None:
    entries = [Entry(0, 0.5, 0.0), Entry(1, 2.0, 0.1), Entry(2, 0.5, 0.25), Entry(3, 0.1, 0.05)]
    origin = 1_795_737_600.0
    schedule = Schedule(entries)
    taken = schedule.take_through(10.0, origin) + schedule.take_through(12.0, origin)
    # Nothing skipped or coalesced: every deadline up to 12 s, once, as virtual time needs.
    for entry in entries:
        times = sorted(t for t, i in taken if i == entry.index)
        ticks = int((12.0 - entry.phase) / entry.interval + 1e-9) + 1
        # Each time is the stream's first deadline plus k intervals, rounded as such.
        assert times == [(origin + entry.phase) + k * entry.interval for k in range(ticks)]
    # The cursors moved as take_due's do: the next tick is the first after 12 s.
    assert schedule.next_time() == pytest.approx(12.05)
    due, _ = schedule.take_due(12.1, skip_before=-1, limit=10)
    assert due == [(3, pytest.approx(12.05)), (1, pytest.approx(12.1))]
