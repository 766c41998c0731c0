"""The agent's durable, bounded outbox: readings wait here, in SQLite, until the broker has them.

docs/design.md, "Durable outbox": a reading enters the outbox before it is published and leaves
it only when the broker acknowledges it (QoS 1 PUBACK). Broker down, network down, agent
killed: readings wait and are delivered later, in order; past the bound the oldest are
dropped and counted, never silently.

How a reading travels::

    put()  ->  memory buffer  --commit()-->  outbox table  --pending()-->  publish
                                                   ^                          |
                                  deleted at the next commit  <--  ack() on PUBACK

Commits are batched to spare SD cards: rows and the per-stream sequence counters are written
together, at most once per ``commit_interval`` (one fsync each), when the caller's loop calls
`maybe_commit()`. **Trade-off:** a live reading waits up to one commit interval before
`pending()` offers it for publishing. In exchange, nothing is ever published that a crash
could take back: a row and the ``seq`` it was given become visible in the same transaction,
so after a crash either both exist or neither does. The seq numbers of readings lost in the
memory buffer by a crash are handed out again, to new readings, after the restart; that is
harmless because no consumer ever saw them. A committed seq is never handed out again.

Delivery is at least once. An ack is applied at the next commit too, so after a crash the
rows acknowledged since the last commit come back and are published a second time; consumers
discard duplicates by (stream, seq), which is what seq is for.

Threads: the agent calls `put()` and `maybe_commit()` from its main loop, `ack()` and
`try_pending()` from paho's network thread. All methods are thread-safe (one connection, one
lock). Neither of the network thread's calls waits for the disk: `ack()` only appends the ids
to a list under a lock of its own, which the next read or commit takes in, and `try_pending()`
gives up at once while a commit holds the lock, so paho's thread is never stuck behind a fsync
on a slow SD card.

Only the standard library's sqlite3 is used: the agent must stay light.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Final, NamedTuple, Self

__all__ = ["Entry", "Outbox", "OutboxError", "OutboxStats"]

logger = logging.getLogger(__name__)

MiB: Final = 1024 * 1024
# The wire contract's bound on seq (agent.contract.MAX_INT), repeated so that the outbox needs
# nothing beyond the standard library.
MAX_SEQ: Final = 2**53 - 1
# Numbers a stream must have left when another source hands it over: a floor nearer the bound
# (which only a forged document can carry) would leave the stream nothing to number with.
# 2**32 readings are 136 years at 1 Hz.
SEQ_HEADROOM: Final = 2**32

# Bump when the schema changes; an outbox written by a newer agent is refused, not mangled.
_SCHEMA_VERSION: Final = 1

_SCHEMA: Final = (
    # AUTOINCREMENT, because ids must never be reused: with plain rowids, acknowledging the
    # newest row would let the next insert take its id again, and a late or repeated ack of
    # the old id (or a caller's after_id cursor) would then hit the new row.
    """CREATE TABLE IF NOT EXISTS outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        stream TEXT NOT NULL,
        seq INTEGER NOT NULL,
        topic TEXT NOT NULL,
        payload BLOB NOT NULL,
        qos INTEGER NOT NULL,
        created REAL NOT NULL
    )""",
    # The last seq handed out per stream, written in the same transaction as the rows, so a
    # committed seq survives any crash and is never reused.
    """CREATE TABLE IF NOT EXISTS streams (
        stream TEXT PRIMARY KEY,
        last_seq INTEGER NOT NULL
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS meta (
        key TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    ) WITHOUT ROWID""",
    "INSERT OR IGNORE INTO meta (key, value) VALUES ('dropped', 0), ('boot', 0)",
)

# Pragmas chosen for an SD card (see also the module docstring):
_PRAGMAS: Final = (
    # synchronous=FULL: in WAL mode it fsyncs the WAL at every commit. NORMAL would fsync only
    # at checkpoints: never corrupt, but a power cut could undo the last commits. Undoing a
    # commit here is not harmless: its rows may already be published and acked, so the
    # restored seq counters would hand the same seq numbers to different readings, and its
    # unpublished rows, which the outbox had promised to keep, would be gone. The promise is
    # "nothing lost that reached the outbox", and a row reaches it at commit, so a commit must
    # be durable. Batching is what pays for it: at most one fsync per commit interval.
    "PRAGMA synchronous=FULL",
    # 1000 pages of 4 KiB (SQLite's default, stated so that it is a decision): a checkpoint
    # every ~4 MiB of WAL. At 1 Hz a commit writes a handful of pages, so that is a checkpoint
    # every few minutes. Write volume on the card is dominated by the WAL frames of each
    # commit, which do not depend on this; a larger WAL would only cost disk space and a
    # longer recovery at open after a crash.
    "PRAGMA wal_autocheckpoint=1000",
    # After a burst (draining a large backlog deletes many pages) the WAL file is cut back to
    # 4 MiB at the next checkpoint instead of keeping its high-water size on a small card.
    f"PRAGMA journal_size_limit={4 * MiB}",
)

# Another process (an operator's sqlite3 shell, a backup) may hold a lock for a moment; wait
# for it rather than fail the commit with SQLITE_BUSY at once.
_BUSY_TIMEOUT_S: Final = 5.0

# Drops are reported with a warning at most this often, with the count since the last one:
# a full outbox drops on every commit, and one line a second would flood the journal.
_DROP_WARNING_INTERVAL_S: Final = 60.0

# Ids per IN (...) query when taking in acks; below SQLite's historic 999 variable limit.
_ID_CHUNK: Final = 500
# Sizes of handed-out rows kept for their acks: the publisher's window is a few hundred.
_HANDED_MAX: Final = 10_000

_CORRUPTION_CODES: Final = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})


class OutboxError(Exception):
    """The outbox could not be opened or written (disk full, I/O error, closed outbox)."""


@dataclass(frozen=True, slots=True)
class Entry:
    """A committed reading waiting for delivery. ``created`` is wall time (time.time())."""

    id: int
    stream: str
    seq: int
    topic: str
    payload: bytes
    qos: int
    created: float


@dataclass(frozen=True, slots=True)
class OutboxStats:
    depth: int  # committed rows not yet acknowledged
    bytes: int  # their payload bytes
    buffered: int  # rows put but not committed yet (invisible to pending())
    dropped: int  # total ever dropped by the bounds, across restarts
    commits: int  # transactions committed since open (each one fsync of the WAL)
    boot: int
    max_messages: int
    max_bytes: int


class _Row(NamedTuple):
    stream: str
    seq: int
    topic: str
    payload: bytes
    qos: int
    created: float


class _CorruptDatabase(Exception):
    """Raised internally when quick_check or SQLite itself reports a damaged file."""


class Outbox:
    """Durable, bounded outbox of readings in one SQLite file (WAL mode).

    ``max_messages`` and ``max_bytes`` (sum of payload lengths) bound the committed rows:
    a commit that would exceed either first deletes the oldest rows, counted in `dropped`.
    ``clock`` (monotonic seconds) paces commits and drop warnings; inject one in tests.
    """

    def __init__(
        self,
        path: Path,
        *,
        max_messages: int = 100_000,
        max_bytes: int = 64 * MiB,
        commit_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_messages < 1:
            raise ValueError(f"max_messages must be at least 1, not {max_messages}")
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be at least 1, not {max_bytes}")
        if commit_interval < 0:
            raise ValueError(f"commit_interval must not be negative, not {commit_interval}")
        self._path = Path(path)
        self._max_messages = max_messages
        self._max_bytes = max_bytes
        self._interval = commit_interval
        self._clock = clock

        self._lock = threading.Lock()
        # Acks from paho's thread land here without touching SQLite (see module docstring).
        self._ack_lock = threading.Lock()
        self._ack_inbox: list[int] = []

        # Committed state, mirrored in memory so that depth and bounds cost no query.
        self._db_count = 0  # rows in the table, acked-but-not-deleted included
        self._db_bytes = 0
        self._last_id = 0  # newest id ever committed (AUTOINCREMENT's counter)
        self._dropped = 0  # persisted in meta
        self._boot = 0
        self._committed_seq: dict[str, int] = {}

        # Uncommitted state, written by the next commit.
        self._buffer: deque[_Row] = deque()
        self._buffer_bytes = 0
        self._next_seq: dict[str, int] = {}  # last seq handed out, committed or not
        self._acked: dict[int, int] = {}  # id -> payload size, deleted at the next commit
        self._acked_bytes = 0
        # Payload sizes of rows `pending()` handed out, so that their acks need no query: a
        # lookup per ack costs a sixth of the drain's time. Rows dropped by the bounds leave it
        # at once.
        self._handed: dict[int, int] = {}
        self._buffer_dropped = 0  # dropped from the buffer while commits kept failing
        self._commit_failing = False

        self._commits = 0
        # -inf: the first reading after a quiet spell is committed at once, not an interval
        # later; the interval only spaces commits that follow each other.
        self._last_commit = float("-inf")
        self._drops_unlogged = 0
        self._last_drop_warning = float("-inf")

        self._conn: sqlite3.Connection | None = self._open()

    # -- opening and corruption -------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        try:
            return self._connect()
        except _CorruptDatabase as exc:
            detail = str(exc)
        except sqlite3.DatabaseError as exc:
            if not _is_corruption(exc):
                raise OutboxError(f"cannot open outbox {self._path}: {exc}") from exc
            detail = str(exc)
        # A damaged outbox must not stop the agent: keep the file for a post-mortem, start
        # over with an empty one, and say so loudly. The readings in it are lost.
        moved_to = self._set_aside()
        logger.error(
            "outbox database corrupt; moved aside, starting a fresh outbox",
            extra={"path": str(self._path), "moved_to": str(moved_to), "error": detail},
        )
        try:
            return self._connect()
        except (_CorruptDatabase, sqlite3.DatabaseError) as exc:
            raise OutboxError(f"cannot create a fresh outbox at {self._path}: {exc}") from exc

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: no implicit transactions; commit() opens and ends its own.
        # check_same_thread=False: ack() and the main loop share it, serialised by _lock.
        conn = sqlite3.connect(
            self._path, timeout=_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        try:
            # WAL: a commit appends to one sequential file instead of rewriting pages in place
            # plus a rollback journal, and readers never block the writer. It is also the first
            # statement that reads the file, so a file that is not a database fails here.
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                logger.warning(
                    "outbox could not switch to WAL mode",
                    extra={"path": str(self._path), "journal_mode": mode},
                )
            for pragma in _PRAGMAS:
                conn.execute(pragma)
            # quick_check reads every page and checks the b-trees, skipping only the
            # index-versus-table cross-check; this schema has no secondary index, so it finds
            # what integrity_check would, in less time on a slow card.
            problems = [str(row[0]) for row in conn.execute("PRAGMA quick_check")]
            if problems != ["ok"]:
                raise _CorruptDatabase("; ".join(problems[:5]))
            self._init_schema(conn)
            self._load(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _init_schema(self, conn: sqlite3.Connection) -> None:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version > _SCHEMA_VERSION:
            raise OutboxError(
                f"outbox {self._path} has schema version {version}, newer than this agent's "
                f"{_SCHEMA_VERSION}; refusing to touch it"
            )
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA:
                conn.execute(statement)
            if version < _SCHEMA_VERSION:
                conn.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise

    def _load(self, conn: sqlite3.Connection) -> None:
        count, size = conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM outbox"
        ).fetchone()
        self._db_count, self._db_bytes = int(count), int(size)
        self._last_id = _last_id(conn)
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        self._dropped = int(meta.get("dropped", 0))
        self._boot = int(meta.get("boot", 0))
        self._committed_seq = {
            str(stream): int(seq)
            for stream, seq in conn.execute("SELECT stream, last_seq FROM streams")
        }
        self._next_seq = dict(self._committed_seq)

    def _set_aside(self) -> Path:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        target = self._path.with_name(f"{self._path.name}.corrupt-{stamp}")
        attempt = 1
        while target.exists():  # two corruptions in one second: keep both
            target = self._path.with_name(f"{self._path.name}.corrupt-{stamp}-{attempt}")
            attempt += 1
        try:
            self._path.rename(target)
            # The WAL must go with its database: left in place, SQLite would replay the old
            # frames into the fresh file. Paired names keep the copy openable for forensics.
            for suffix in ("-wal", "-shm"):
                side = self._path.with_name(self._path.name + suffix)
                if side.exists():
                    side.rename(target.with_name(target.name + suffix))
        except OSError as exc:
            raise OutboxError(f"cannot move corrupt outbox {self._path} aside: {exc}") from exc
        return target

    # -- writing ----------------------------------------------------------------------------

    def put(
        self, stream: str, make_payload: Callable[[int], bytes], topic: str, qos: int = 1
    ) -> int:
        """Give ``stream`` its next seq, build the payload with it, and buffer the row.

        Returns the seq. The row is invisible to `pending()` until the next commit.
        ``make_payload`` runs under the outbox lock: it must not call the outbox. If it
        raises, or the payload can never fit in ``max_bytes``, no seq is used up.
        """
        if qos not in (0, 1, 2):
            raise ValueError(f"qos must be 0, 1 or 2, not {qos}")
        with self._lock:
            self._check_open()
            seq = self._next_seq.get(stream, 0) + 1
            payload = make_payload(seq)
            if not isinstance(payload, bytes):
                raise TypeError(f"make_payload must return bytes, not {type(payload).__name__}")
            if len(payload) > self._max_bytes:
                raise ValueError(
                    f"payload of {len(payload)} bytes exceeds the outbox bound of "
                    f"{self._max_bytes} bytes"
                )
            self._next_seq[stream] = seq
            self._buffer.append(_Row(stream, seq, topic, payload, qos, time.time()))
            self._buffer_bytes += len(payload)
            # Normally the buffer holds one commit interval of readings and the bounds are
            # applied at commit. If commits keep failing (disk full, card gone), bound it here,
            # or memory would grow until the kernel kills the agent; the drops are counted
            # now and persisted by the first commit that succeeds.
            while self._commit_failing and (
                len(self._buffer) > self._max_messages or self._buffer_bytes > self._max_bytes
            ):
                oldest = self._buffer.popleft()
                self._buffer_bytes -= len(oldest.payload)
                self._buffer_dropped += 1
                self._note_dropped(1)
            return seq

    def ack(self, ids: Iterable[int]) -> None:
        """Mark rows delivered; `pending()` never returns them again.

        They are deleted at the next commit. Cheap and never blocks on the disk, for paho's
        network thread. Unknown ids (already acked, dropped by the bounds) are ignored.
        """
        batch = list(ids)
        if batch:
            with self._ack_lock:
                self._ack_inbox.extend(batch)

    def maybe_commit(self) -> bool:
        """Commit if something is pending and ``commit_interval`` has passed since the last.

        Call it from the main loop as often as convenient; it returns whether it committed.
        """
        if self._clock() - self._last_commit < self._interval:
            return False  # the common case, answered without taking the lock
        with self._lock:
            if self._clock() - self._last_commit < self._interval:
                return False
            return self._commit_locked()

    def commit(self) -> bool:
        """Commit pending rows, seq counters and acks now; returns whether anything was."""
        with self._lock:
            return self._commit_locked()

    def next_boot(self) -> int:
        """Increment the persisted boot counter, commit at once, and return the new value."""
        with self._lock:
            self._commit_locked(boot=self._boot + 1)
            return self._boot

    def _dirty(self) -> bool:
        return bool(
            self._buffer
            or self._acked
            or self._buffer_dropped
            or self._next_seq != self._committed_seq
        )

    def _commit_locked(self, *, boot: int | None = None) -> bool:
        conn = self._check_open()
        self._take_in_acks(conn)
        if boot is None and not self._dirty():
            return False
        now = self._clock()
        # Pace retries too: a failing card is tried once per interval, not on every loop.
        self._last_commit = now
        rows = list(self._buffer)
        acked = list(self._acked)
        count = self._db_count - len(acked)
        size = self._db_bytes - self._acked_bytes
        try:
            conn.execute("BEGIN IMMEDIATE")
            # By runs of consecutive ids, which acks mostly are: a statement per row would
            # hand the GIL to paho's thread and back at every row of a drain's commit.
            conn.executemany("DELETE FROM outbox WHERE id BETWEEN ? AND ?", _runs(acked))
            db_gone, db_gone_bytes, skip = self._make_room(conn, count, size, rows)
            conn.executemany(
                "INSERT INTO outbox (stream, seq, topic, payload, qos, created) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                rows[skip:],
            )
            last_id = _last_id(conn) if rows[skip:] else self._last_id
            changed = {s: q for s, q in self._next_seq.items() if self._committed_seq.get(s) != q}
            conn.executemany(
                "INSERT INTO streams (stream, last_seq) VALUES (?, ?) "
                "ON CONFLICT (stream) DO UPDATE SET last_seq = excluded.last_seq",
                changed.items(),
            )
            dropped = self._dropped + db_gone + skip + self._buffer_dropped
            conn.execute("UPDATE meta SET value = ? WHERE key = 'dropped'", (dropped,))
            if boot is not None:
                conn.execute("UPDATE meta SET value = ? WHERE key = 'boot'", (boot,))
            conn.execute("COMMIT")
        except (sqlite3.Error, OverflowError) as exc:
            # OverflowError: an integer SQLite cannot hold; whatever let it in, it must fail
            # this commit, not end the agent.
            _rollback(conn)
            self._commit_failing = True
            # Nothing in memory changed: the buffer and acks are retried at the next commit.
            raise OutboxError(f"outbox commit failed: {exc}") from exc

        kept = rows[skip:]
        self._db_count = count - db_gone + len(kept)
        self._db_bytes = size - db_gone_bytes + sum(len(row.payload) for row in kept)
        self._commit_failing = False
        self._last_id = last_id
        self._committed_seq.update(changed)
        self._dropped = dropped
        self._buffer_dropped = 0
        if boot is not None:
            self._boot = boot
        self._buffer.clear()
        self._buffer_bytes = 0
        self._acked.clear()
        self._acked_bytes = 0
        self._commits += 1
        if db_gone:
            self._handed.clear()  # some handed rows may be gone; their acks must find nothing
        if db_gone or skip:
            self._note_dropped(db_gone + skip)
        return True

    def _make_room(
        self, conn: sqlite3.Connection, count: int, size: int, rows: list[_Row]
    ) -> tuple[int, int, int]:
        """Apply both bounds to the table plus ``rows``, inside the commit's transaction.

        Returns the rows and payload bytes deleted from the table, and how many of the oldest
        ``rows`` are not to be inserted: when the buffer alone is over a bound, the table is
        emptied and the buffer's oldest go too, dropped and counted like any other.
        """
        over_count = count + len(rows) - self._max_messages
        over_bytes = size + self._buffer_bytes - self._max_bytes
        db_gone, db_gone_bytes = _drop_oldest(conn, over_count, over_bytes)
        over_count -= db_gone
        over_bytes -= db_gone_bytes
        skip = 0
        # put() keeps every payload within max_bytes, so the newest row always survives.
        while over_count > 0 or over_bytes > 0:
            over_count -= 1
            over_bytes -= len(rows[skip].payload)
            skip += 1
        return db_gone, db_gone_bytes, skip

    def _take_in_acks(self, conn: sqlite3.Connection) -> None:
        """Move acks from paho's thread into `_acked`, keeping only ids of committed rows."""
        with self._ack_lock:
            inbox, self._ack_inbox = self._ack_inbox, []
        fresh = []
        for row_id in dict.fromkeys(inbox):
            if row_id in self._acked:
                continue
            size = self._handed.pop(row_id, None)
            if size is None:
                fresh.append(row_id)  # not handed out here: ask the table whether it exists
            else:
                self._acked[row_id] = size
                self._acked_bytes += size
        for start in range(0, len(fresh), _ID_CHUNK):
            chunk = fresh[start : start + _ID_CHUNK]
            marks = ",".join("?" * len(chunk))
            query = f"SELECT id, LENGTH(payload) FROM outbox WHERE id IN ({marks})"  # noqa: S608 - only placeholders
            try:
                found = conn.execute(query, chunk).fetchall()
            except sqlite3.Error as exc:
                with self._ack_lock:  # keep them for the next try
                    self._ack_inbox[:0] = fresh[start:]
                raise OutboxError(f"outbox read failed: {exc}") from exc
            for row_id, size in found:
                self._acked[int(row_id)] = int(size)
                self._acked_bytes += int(size)

    def _note_dropped(self, count: int) -> None:
        self._drops_unlogged += count
        now = self._clock()
        if now - self._last_drop_warning >= _DROP_WARNING_INTERVAL_S:
            logger.warning(
                "outbox full: dropped %d oldest readings",
                self._drops_unlogged,
                extra={
                    "dropped_now": self._drops_unlogged,
                    "dropped_total": self._dropped + self._buffer_dropped,
                    "max_messages": self._max_messages,
                    "max_bytes": self._max_bytes,
                    "path": str(self._path),
                },
            )
            self._drops_unlogged = 0
            self._last_drop_warning = now

    # -- reading ----------------------------------------------------------------------------

    def pending(self, limit: int, after_id: int | None = None) -> list[Entry]:
        """Up to ``limit`` committed, unacknowledged rows, oldest first, ids > ``after_id``.

        Pass the id of the last entry already in flight as ``after_id`` to read the next batch
        while earlier ones await their PUBACK.
        """
        with self._lock:
            return self._pending_locked(limit, after_id)

    def try_pending(self, limit: int, after_id: int | None = None) -> list[Entry] | None:
        """`pending()` for paho's network thread: None at once if a commit holds the outbox,
        rather than waiting behind its fsync."""
        if not self._lock.acquire(blocking=False):
            return None
        try:
            return self._pending_locked(limit, after_id)
        finally:
            self._lock.release()

    def _pending_locked(self, limit: int, after_id: int | None) -> list[Entry]:
        if limit < 1:
            return []
        conn = self._check_open()
        self._take_in_acks(conn)
        acked = self._acked
        # Acked rows are still in the table until the next commit; read enough to skip
        # them, and stop stepping the cursor as soon as the batch is full.
        cursor = conn.execute(
            "SELECT id, stream, seq, topic, payload, qos, created FROM outbox "
            "WHERE id > ? ORDER BY id LIMIT ?",
            (after_id if after_id is not None else 0, limit + len(acked)),
        )
        entries: list[Entry] = []
        try:
            if len(self._handed) > _HANDED_MAX:
                self._handed.clear()  # rows lost in flight pile up: queries will do
            for row in cursor:
                if row[0] in acked:
                    continue
                entries.append(Entry(*row))
                self._handed[row[0]] = len(row[4])
                if len(entries) == limit:
                    break
        except sqlite3.Error as exc:
            raise OutboxError(f"outbox read failed: {exc}") from exc
        finally:
            cursor.close()
        return entries

    @property
    def path(self) -> Path:
        return self._path

    @property
    def depth(self) -> int:
        """Committed rows not yet acknowledged."""
        with self._lock:
            self._take_in_acks(self._check_open())
            return self._db_count - len(self._acked)

    def raise_seq(self, stream: str, floor: int) -> None:
        """Make the next seq of `stream` larger than `floor` (persisted at the next commit):
        another source numbered the stream while this one was away.

        ValueError for a floor that leaves less than SEQ_HEADROOM below the contract's bound:
        accepted, it would make every later commit fail (SQLite holds no integer above
        2**63 - 1) or every reading invalid on the wire.
        """
        if not 0 <= floor <= MAX_SEQ - SEQ_HEADROOM:
            raise ValueError(
                f"seq floor {floor} of stream {stream!r} is outside 0..{MAX_SEQ - SEQ_HEADROOM}"
            )
        with self._lock:
            if floor > self._next_seq.get(stream, 0):
                self._next_seq[stream] = floor

    def last_seq(self, stream: str) -> int:
        """The last seq handed out to `stream`, committed or not; 0 if none ever was."""
        with self._lock:
            return self._next_seq.get(stream, 0)

    @property
    def last_id(self) -> int:
        """Id of the newest row ever committed, 0 before the first. It never decreases.

        A publisher can note it at (re)connect to tell the backlog (ids up to it) from rows
        committed afterwards.
        """
        return self._last_id

    def take_uncommitted(self, limit: int) -> list[tuple[str, bytes]]:
        """Hand over up to `limit` of the rows put but not committed, oldest first, as
        (topic, payload), and forget them.

        For a caller that cannot commit (disk full) and sends them on without a durable copy.
        Their seq numbers stay taken, and are committed with the next success.
        """
        with self._lock:
            rows: list[tuple[str, bytes]] = []
            while self._buffer and len(rows) < limit:
                row = self._buffer.popleft()
                self._buffer_bytes -= len(row.payload)
                rows.append((row.topic, row.payload))
            return rows

    @property
    def uncommitted(self) -> int:
        """Rows put but not committed yet, which `pending()` does not show."""
        return len(self._buffer)

    @property
    def dropped(self) -> int:
        """Readings ever dropped by the bounds, across restarts."""
        with self._lock:
            return self._dropped + self._buffer_dropped

    @property
    def boot(self) -> int:
        """The persisted boot counter, as last set by `next_boot()`."""
        return self._boot

    @property
    def commits(self) -> int:
        """Transactions committed since open by commit(), maybe_commit(), next_boot(), close().

        Each is one fsync of the WAL (synchronous=FULL); checkpoints add their own.
        """
        return self._commits

    def stats(self) -> OutboxStats:
        with self._lock:
            self._take_in_acks(self._check_open())
            return OutboxStats(
                depth=self._db_count - len(self._acked),
                bytes=self._db_bytes - self._acked_bytes,
                buffered=len(self._buffer),
                dropped=self._dropped + self._buffer_dropped,
                commits=self._commits,
                boot=self._boot,
                max_messages=self._max_messages,
                max_bytes=self._max_bytes,
            )

    # -- life cycle -------------------------------------------------------------------------

    def _check_open(self) -> sqlite3.Connection:
        if self._conn is None:
            raise OutboxError(f"outbox {self._path} is closed")
        return self._conn

    @property
    def closed(self) -> bool:
        return self._conn is None

    def close(self) -> None:
        """Commit what is pending, then close the database. Safe to call twice."""
        with self._lock:
            if self._conn is None:
                return
            try:
                self._commit_locked()
            finally:
                # Closing the last connection checkpoints the WAL into the database file.
                conn, self._conn = self._conn, None
                conn.close()

    def close_quietly(self) -> None:
        """Close without committing: for an outbox given up on at start-up."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._conn is None else f"depth={self._db_count - len(self._acked)}"
        return f"<Outbox {self._path} {state}>"

    # Last in the class body, so that the annotations above still see the built-in `bytes`.
    @property
    def bytes(self) -> int:
        """Payload bytes of the committed rows not yet acknowledged."""
        with self._lock:
            self._take_in_acks(self._check_open())
            return self._db_bytes - self._acked_bytes


def _drop_oldest(conn: sqlite3.Connection, over_count: int, over_bytes: int) -> tuple[int, int]:
    """Delete the oldest rows until both excesses (which may be <= 0) are covered, or the
    table is empty.

    Returns how many rows and payload bytes went. Runs inside the commit's transaction, so
    the drop, the new rows and the dropped counter are written together.
    """
    gone_count, gone_bytes, last_id = 0, 0, None
    if over_count <= 0 and over_bytes <= 0:
        return 0, 0  # the common case: no query at all
    cursor = conn.execute("SELECT id, LENGTH(payload) FROM outbox ORDER BY id")
    try:
        for row_id, size in cursor:
            if gone_count >= over_count and gone_bytes >= over_bytes:
                break
            gone_count += 1
            gone_bytes += int(size)
            last_id = int(row_id)
    finally:
        cursor.close()
    if last_id is not None:
        conn.execute("DELETE FROM outbox WHERE id <= ?", (last_id,))
    return gone_count, gone_bytes


def _runs(ids: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted runs of consecutive ids, as (first, last) pairs."""
    runs: list[tuple[int, int]] = []
    for row_id in sorted(ids):
        if runs and runs[-1][1] == row_id - 1:
            runs[-1] = (runs[-1][0], row_id)
        else:
            runs.append((row_id, row_id))
    return runs


def _last_id(conn: sqlite3.Connection) -> int:
    # AUTOINCREMENT keeps the highest id ever used here, even after every row is gone.
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
    return int(row[0]) if row is not None else 0


def _is_corruption(exc: sqlite3.DatabaseError) -> bool:
    # "file is not a database" and "database disk image is malformed"; not "database is
    # locked" or "unable to open", which a rename would not cure and must not trigger.
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:
        return False
    return (int(code) & 0xFF) in _CORRUPTION_CODES


def _rollback(conn: sqlite3.Connection) -> None:
    # After some errors (SQLITE_FULL, I/O) SQLite has already rolled back by itself; a
    # second ROLLBACK then fails with "no transaction is active", which is fine.
    with contextlib.suppress(sqlite3.Error):
        conn.execute("ROLLBACK")
