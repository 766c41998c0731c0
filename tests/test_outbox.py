"""The agent's durable outbox, on real SQLite files: order, acks, seq across restarts and
crashes, bounds, commit batching, corrupt files, and invariants under random operations."""

from __future__ import annotations

import json
import logging
import re
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgetwin.agent.outbox import Entry, Outbox, OutboxError

REPO = Path(__file__).resolve().parents[1]
CORRUPT_NAME = re.compile(r"^outbox\.db\.corrupt-\d{8}T\d{6}Z(-\d+)?$")


def reading(stream: str, size: int = 0) -> Callable[[int], bytes]:
    """A payload builder that embeds the seq, as the agent's telemetry does."""

    def make(seq: int) -> bytes:
        body = json.dumps({"stream": stream, "seq": seq}).encode()
        return body + b" " * max(0, size - len(body))

    return make


def seqs(entries: list[Entry], stream: str | None = None) -> list[int]:
    return [e.seq for e in entries if stream is None or e.stream == stream]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "outbox.db"


# -- order, content, visibility, acks --------------------------------------------------------


def test_put_commit_pending_ack_keeps_order_and_content(db: Path) -> None:
    with Outbox(db) as box:
        assert box.put("env", reading("env"), "t/env") == 1
        assert box.put("cpu", reading("cpu"), "t/cpu", qos=0) == 1
        assert box.put("env", reading("env"), "t/env") == 2
        assert box.commit() is True

        entries = box.pending(10)
        assert [(e.stream, e.seq, e.topic, e.qos) for e in entries] == [
            ("env", 1, "t/env", 1),
            ("cpu", 1, "t/cpu", 0),
            ("env", 2, "t/env", 1),
        ]
        assert [json.loads(e.payload)["seq"] for e in entries] == [1, 1, 2]
        assert [e.id for e in entries] == sorted(e.id for e in entries)
        assert all(e.created > 1e9 for e in entries)  # wall time, not monotonic
        assert box.depth == 3
        assert box.bytes == sum(len(e.payload) for e in entries)

        box.ack([entries[1].id])
        assert seqs(box.pending(10)) == [1, 2]
        assert box.depth == 2
        assert box.bytes == len(entries[0].payload) + len(entries[2].payload)
        assert box.pending(1) == [entries[0]]
        assert box.pending(10, after_id=entries[0].id) == [entries[2]]


def test_pending_hides_rows_until_they_are_committed(db: Path) -> None:
    with Outbox(db) as box:
        box.put("env", reading("env"), "t")
        assert box.pending(10) == []
        assert box.depth == 0
        assert box.uncommitted == box.stats().buffered == 1
        assert box.last_id == 0
        box.commit()
        assert seqs(box.pending(10)) == [1]
        assert box.uncommitted == box.stats().buffered == 0
        assert box.last_id == box.pending(1)[0].id


def test_last_id_never_decreases_even_when_the_outbox_empties(db: Path) -> None:
    with Outbox(db) as box:
        for _ in range(3):
            box.put("env", reading("env"), "t")
        box.commit()
        newest = box.pending(10)[-1].id
        assert box.last_id == newest
        box.ack(e.id for e in box.pending(10))
        box.commit()
        assert box.depth == 0
        assert box.last_id == newest
    with Outbox(db) as box:
        assert box.last_id == newest
        box.put("env", reading("env"), "t")
        box.commit()
        assert box.last_id == box.pending(1)[0].id > newest


def test_acked_rows_never_come_back_before_or_after_commit_or_reopen(db: Path) -> None:
    with Outbox(db) as box:
        for _ in range(5):
            box.put("env", reading("env"), "t")
        box.commit()
        first = box.pending(10)
        box.ack(e.id for e in first[:3])
        box.ack([first[0].id, 10_000])  # a repeated ack and an unknown id change nothing
        assert seqs(box.pending(10)) == [4, 5]  # before the commit that deletes them
        assert box.depth == 2
        # A full batch is still returned when acked rows sit in front of it.
        assert seqs(box.pending(2)) == [4, 5]
        box.commit()
        assert seqs(box.pending(10)) == [4, 5]
        box.ack([first[3].id])  # acked, not committed: close() commits it
    with Outbox(db) as box:
        assert seqs(box.pending(10)) == [5]
        assert box.depth == 1


def test_scattered_acks_delete_exactly_the_acked_rows(db: Path) -> None:
    with Outbox(db) as box:
        for _ in range(10):
            box.put("env", reading("env"), "t")
        box.commit()
        rows = box.pending(10)
        box.ack(rows[i].id for i in (0, 1, 2, 4, 7))
        box.commit()
    with Outbox(db) as box:
        assert seqs(box.pending(10)) == [4, 6, 7, 9, 10]
        assert box.depth == 5


def test_try_pending_gives_up_while_the_outbox_is_held_and_reads_once_it_is_free(
    db: Path,
) -> None:
    with Outbox(db) as box:
        box.put("env", reading("env"), "t")
        box.commit()
        holding, release = threading.Event(), threading.Event()

        def slow_payload(seq: int) -> bytes:
            holding.set()  # put() builds the payload under the outbox's lock, as commit works
            release.wait(10)
            return reading("env")(seq)

        writer = threading.Thread(target=box.put, args=("env", slow_payload, "t"))
        writer.start()
        try:
            assert holding.wait(10)
            assert box.try_pending(10) is None
        finally:
            release.set()
            writer.join(10)
        assert seqs(box.try_pending(10) or []) == [1]


def test_ids_are_not_reused_after_the_newest_row_is_acked(db: Path) -> None:
    with Outbox(db) as box:
        box.put("env", reading("env"), "t")
        box.commit()
        [old] = box.pending(1)
        box.ack([old.id])
        box.commit()
        box.put("env", reading("env"), "t")
        box.commit()
        [new] = box.pending(1)
        assert new.id > old.id
        box.ack([old.id])  # a late duplicate PUBACK must not delete the new row
        assert box.pending(1) == [new]


def test_put_uses_no_seq_when_the_payload_cannot_be_built_or_stored(db: Path) -> None:
    def broken(seq: int) -> bytes:
        raise RuntimeError("sensor gone")

    with Outbox(db, max_bytes=100) as box:
        with pytest.raises(RuntimeError):
            box.put("env", broken, "t")
        with pytest.raises(ValueError, match="exceeds"):
            box.put("env", reading("env", size=101), "t")
        with pytest.raises(ValueError, match="qos"):
            box.put("env", reading("env"), "t", qos=3)
        assert box.put("env", reading("env"), "t") == 1


def test_acks_from_another_thread_while_the_main_loop_writes(db: Path) -> None:
    with Outbox(db, commit_interval=0) as box:
        for _ in range(200):
            box.put("env", reading("env"), "t")
        box.commit()
        ids = [e.id for e in box.pending(200)]

        def acker() -> None:
            for row_id in ids:
                box.ack([row_id])

        thread = threading.Thread(target=acker)
        thread.start()
        for _ in range(200):
            box.put("cpu", reading("cpu"), "t")
            box.maybe_commit()
            box.pending(50)
        thread.join()
        box.commit()
        assert seqs(box.pending(1000), "env") == []
        assert seqs(box.pending(1000), "cpu") == list(range(1, 201))
        assert box.depth == 200


# -- seq across restarts and crashes ---------------------------------------------------------


def test_seq_per_stream_continues_across_close_and_reopen(db: Path) -> None:
    with Outbox(db) as box:
        assert [box.put("a", reading("a"), "t") for _ in range(3)] == [1, 2, 3]
        assert box.put("b", reading("b"), "t") == 1
        box.commit()
        box.ack(e.id for e in box.pending(10))  # delivering everything must not reset seq
        box.put("a", reading("a"), "t")  # buffered only: close() commits it
    with Outbox(db) as box:
        assert box.put("a", reading("a"), "t") == 5
        assert box.put("b", reading("b"), "t") == 2
        assert box.put("c", reading("c"), "t") == 1


CRASHING_AGENT = """
import os, signal, sys
from pathlib import Path
from edgetwin.agent.outbox import Outbox

def make(stream):
    return lambda seq: f"{stream}-{seq}".encode()

box = Outbox(Path(sys.argv[1]))
for _ in range(5):
    box.put("a", make("a"), "t/a")
for _ in range(3):
    box.put("b", make("b"), "t/b")
box.commit()
box.ack([box.pending(1)[0].id])  # delivered, but the deletion is never committed
for _ in range(4):
    box.put("a", make("a"), "t/a")  # never committed
box.put("c", make("c"), "t/c")
print("ready", flush=True)
if sys.argv[2] == "exit":
    os._exit(1)
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("how", ["exit", "sigkill"])
def test_a_crash_keeps_committed_rows_and_seq_and_loses_only_the_buffer(db: Path, how: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", CRASHING_AGENT, str(db), how],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.stdout == "ready\n", result.stderr
    assert result.returncode == (1 if how == "exit" else -signal.SIGKILL)

    with Outbox(db) as box:
        entries = box.pending(100)
        # Committed rows survived, the uncommitted ones are gone with their seq numbers.
        # The uncommitted ack is lost too, so a-1 is delivered again (at least once).
        assert [(e.stream, e.seq) for e in entries] == [("a", n) for n in range(1, 6)] + [
            ("b", n) for n in range(1, 4)
        ]
        assert [e.payload for e in entries[:2]] == [b"a-1", b"a-2"]
        # Seq continues right after the last committed one; a-6..a-9 and c-1 were never
        # visible to anyone, so handing them out again is safe.
        assert box.put("a", reading("a"), "t/a") == 6
        assert box.put("b", reading("b"), "t/b") == 4
        assert box.put("c", reading("c"), "t/c") == 1


# -- bounds ----------------------------------------------------------------------------------


def test_count_bound_drops_the_oldest_counts_and_persists_it(
    db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="edgetwin.agent.outbox")
    with Outbox(db, max_messages=5) as box:
        for _ in range(4):
            box.put("env", reading("env"), "t")
        box.commit()
        for _ in range(3):
            box.put("env", reading("env"), "t")
        box.commit()
        assert seqs(box.pending(10)) == [3, 4, 5, 6, 7]
        assert box.dropped == 2
        assert box.depth == 5
        for _ in range(8):  # more in one batch than the bound: the table empties first
            box.put("env", reading("env"), "t")
        box.commit()
        assert seqs(box.pending(10)) == [11, 12, 13, 14, 15]
        assert box.dropped == 10
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # the second drop came within the same minute
    assert warnings[0].__dict__["dropped_now"] == 2
    with Outbox(db, max_messages=5) as box:
        assert box.dropped == 10
        assert box.stats().dropped == 10
        assert seqs(box.pending(10)) == [11, 12, 13, 14, 15]


def test_byte_bound_drops_the_oldest_by_payload_size(db: Path) -> None:
    with Outbox(db, max_bytes=1000) as box:
        for size in (300, 300, 300):
            box.put("env", reading("env", size), "t")
        box.commit()
        assert box.bytes == 900
        box.put("env", reading("env", 150), "t")
        box.commit()
        assert seqs(box.pending(10)) == [2, 3, 4]
        assert box.bytes == 750
        box.put("env", reading("env", 600), "t")  # needs two old rows to go
        box.commit()
        assert seqs(box.pending(10)) == [4, 5]
        assert box.bytes == 750
        assert box.dropped == 3
    with Outbox(db, max_bytes=1000) as box:
        assert box.dropped == 3
        assert box.bytes == 750


def test_acked_rows_make_room_before_anything_is_dropped(db: Path) -> None:
    with Outbox(db, max_messages=3) as box:
        for _ in range(3):
            box.put("env", reading("env"), "t")
        box.commit()
        box.ack([box.pending(1)[0].id])
        box.put("env", reading("env"), "t")
        box.commit()
        assert seqs(box.pending(10)) == [2, 3, 4]
        assert box.dropped == 0


def test_drop_warning_at_most_once_a_minute_with_the_count(
    db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="edgetwin.agent.outbox")
    clock = FakeClock()
    with Outbox(db, max_messages=1, commit_interval=0, clock=clock) as box:
        for step in (0, 1, 10, 20, 61):
            clock.now = 1000.0 + step
            box.put("env", reading("env"), "t")
            box.commit()  # from t=1 on, each commit drops the one before
        counts = [r.__dict__["dropped_now"] for r in caplog.records]
        assert counts == [1, 3]  # at t=1, then at t=61 with what t=10 and t=20 dropped
        assert box.dropped == 4


# -- commit batching -------------------------------------------------------------------------


def test_commits_are_batched_to_one_per_interval(db: Path) -> None:
    clock = FakeClock()
    with Outbox(db, commit_interval=1.0, clock=clock) as box:
        for _ in range(100):
            box.put("env", reading("env"), "t")
            box.maybe_commit()
            clock.now += 0.009
        # The first reading after a quiet spell goes at once; the rest wait for the interval.
        assert box.commits == 1
        assert seqs(box.pending(1000)) == [1]

        clock.now += 0.2  # one interval after the first commit
        assert box.maybe_commit() is True
        assert box.commits == 2
        assert len(box.pending(1000)) == 100

        clock.now += 5
        assert box.maybe_commit() is False  # nothing to write, no fsync
        assert box.commits == 2
        box.ack(e.id for e in box.pending(1000))
        assert box.maybe_commit() is True  # acks alone are written too
        assert box.commits == 3


def test_next_boot_counts_up_and_persists(db: Path) -> None:
    with Outbox(db) as box:
        assert box.boot == 0
        box.put("env", reading("env"), "t")
        assert box.next_boot() == 1
        assert box.next_boot() == 2
        assert seqs(box.pending(10)) == [1]  # next_boot committed the buffer with it
    with Outbox(db) as box:
        assert box.boot == 2
        assert box.next_boot() == 3


def test_closed_outbox_refuses_work(db: Path) -> None:
    box = Outbox(db)
    box.close()
    box.close()
    assert box.closed
    with pytest.raises(OutboxError, match="closed"):
        box.put("env", reading("env"), "t")


# -- corrupt files ---------------------------------------------------------------------------


def assert_set_aside(db: Path, original: bytes, caplog: pytest.LogCaptureFixture) -> None:
    aside = [p for p in db.parent.iterdir() if p.name.startswith("outbox.db.corrupt-")]
    assert [p.name for p in aside if CORRUPT_NAME.match(p.name)] == [aside[0].name]
    assert aside[0].read_bytes() == original
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert record.name == "edgetwin.agent.outbox"
    assert record.__dict__["moved_to"] == str(aside[0])
    assert record.__dict__["path"] == str(db)


def assert_fresh_and_working(db: Path) -> None:
    with Outbox(db) as box:
        assert box.depth == 0
        assert box.put("env", reading("env"), "t") == 1
        box.commit()
        assert seqs(box.pending(10)) == [1]


def test_a_file_that_is_not_a_database_is_set_aside(
    db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    garbage = b"this is not an SQLite database \x00\xff" * 200
    db.write_bytes(garbage)
    assert_fresh_and_working(db)
    assert_set_aside(db, garbage, caplog)


def test_a_truncated_database_is_set_aside(db: Path, caplog: pytest.LogCaptureFixture) -> None:
    with Outbox(db) as box:
        for _ in range(2000):
            box.put("env", reading("env", 200), "t")
    data = db.read_bytes()
    truncated = data[: len(data) // 2]
    db.write_bytes(truncated)
    assert_fresh_and_working(db)
    assert_set_aside(db, truncated, caplog)


def test_a_path_that_cannot_be_opened_is_an_error_not_corruption(tmp_path: Path) -> None:
    (tmp_path / "outbox.db").mkdir()
    with pytest.raises(OutboxError):
        Outbox(tmp_path / "outbox.db")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outbox.db"]


# -- invariants under random operations ------------------------------------------------------

put_op = st.tuples(st.just("put"), st.sampled_from(["a", "b", "c"]), st.integers(0, 120))
operations = st.lists(
    st.one_of(
        put_op,
        put_op,  # twice as likely as the others, so that the bounds are reached often
        st.tuples(st.just("commit"), st.just(""), st.just(0)),
        st.tuples(st.just("ack"), st.just(""), st.integers(0, 2**16)),
        st.tuples(st.just("reopen"), st.just(""), st.just(0)),
    ),
    max_size=40,
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=operations)
def test_random_operations_keep_the_invariants(ops: list[tuple[str, str, int]]) -> None:
    max_messages, max_bytes = 5, 300
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "outbox.db"
        box = Outbox(path, max_messages=max_messages, max_bytes=max_bytes)
        last_seq: dict[str, int] = {}
        seen: dict[int, tuple[str, int]] = {}  # every committed row ever offered, by id
        committed_puts = buffered_puts = delivered = 0
        try:
            for op, stream, arg in ops:
                if op == "put":
                    seq = box.put(stream, reading(stream, arg), "t")
                    assert seq == last_seq.get(stream, 0) + 1
                    last_seq[stream] = seq
                    buffered_puts += 1
                elif op in ("commit", "reopen"):
                    if op == "commit":
                        box.commit()
                    else:
                        box.close()  # commits what is pending
                        box = Outbox(path, max_messages=max_messages, max_bytes=max_bytes)
                    committed_puts += buffered_puts
                    buffered_puts = 0
                else:
                    current = box.pending(100)
                    # Ack a pseudo-random subset, plus one id that is already gone.
                    chosen = [e.id for i, e in enumerate(current) if (arg >> i) & 1]
                    box.ack([*chosen, *chosen[:1]])
                    delivered += len(chosen)

                everything = box.pending(1000)
                ids = [e.id for e in everything]
                assert ids == sorted(set(ids))
                for e in everything:
                    assert seen.setdefault(e.id, (e.stream, e.seq)) == (e.stream, e.seq)
                by_stream: dict[str, list[int]] = {}
                for e in everything:
                    by_stream.setdefault(e.stream, []).append(e.seq)
                assert all(s == sorted(set(s)) for s in by_stream.values())
                assert box.depth == len(everything)
                assert box.last_id >= max(seen, default=0)  # never behind, never decreasing
                assert box.bytes == sum(len(e.payload) for e in everything)
                assert box.depth <= max_messages
                assert box.bytes <= max_bytes
                assert box.dropped + delivered + box.depth == committed_puts
        finally:
            box.close()
        # Seq across the whole history: ids and seqs rise together within each stream.
        history: dict[str, list[int]] = {}
        for _, (stream, seq) in sorted(seen.items()):
            history.setdefault(stream, []).append(seq)
        assert all(s == sorted(set(s)) for s in history.values())
