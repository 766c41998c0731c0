"""Shards claimed through the broker, by replicas that no orchestrator numbers.

`edgetwin simulate --shard auto/N`: Compose's `--scale` starts N alike replicas whose host names
carry no ordinal, so none can know its K from its environment. Each claims one instead, with
nothing shared but the broker, the way gateways keep their leases (gateway/membership.py):

- A replica retains a `ShardLease` at `{prefix}/_shards/{run}/{session}`: a topic of its own, so
  that each retained lease has one writer, with an MQTT last will, an empty retained message,
  that clears it the moment the broker loses the replica (at once when its process dies).
- It subscribes to every lease of the run, then publishes an empty message on its own topic
  (it claims nothing yet). Once that comes back, every lease retained before is in: what one
  client publishes reaches a subscriber after the retained messages of the subscription it made
  first. Then it claims the lowest shard that no other session's lease names.
- A claim is decided when the replica receives its own lease back, live: it holds the shard
  unless another session's lease on that shard has reached it by then. Of two replicas that
  claim one shard at the same moment, the broker takes one claim first; the other replica,
  subscribed before it published, receives that claim (live, or retained) before its own comes
  back, and moves on to the next free shard, while the first never sees the second before its
  own. The broker's order decides, not the leases' `ts`: two hosts' clocks, and the moments each
  stamped its claim, need not follow that order, and then both claimants would find their own
  `ts` the lower one.
- At every reconnection the replica publishes its lease again and decides again: a broker that
  restarted without persistence lost every lease, and a replica cut off long enough for its
  will to free its shard may find that another claimed it meanwhile. Then it has lost the shard
  (`on_lost`), and stops.
- A lease whose replica is gone without its will (a broker that kept its retained messages
  through a crash, while the replica died with no broker to notice) would hold its shard for
  ever. So a replica that finds no free shard first calls the roll: it publishes on
  `{prefix}/_shards/{run}/roll-call`, every live replica answers by publishing its lease again,
  and each lease not heard again within `roll_call_wait` seconds is cleared (an empty retained
  message on its topic) as the broker would have cleared it. A live replica that could not
  answer in time (cut off) finds its shard taken when it is back, and stops, as above.
"""

from __future__ import annotations

import contextlib
import logging
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final

from edgetwin.agent.config import MqttSettings
from edgetwin.agent.contract import ContractError, ShardLease, check_id
from edgetwin.agent.mqtt import Message, MqttLink, PublishError, Will

log = logging.getLogger(__name__)

CLAIM_TIMEOUT: Final = 10.0  # seconds the broker may take to answer a connection or a claim
RELEASE_TIMEOUT: Final = 2.0  # seconds a stopping replica waits for the broker to clear its lease
ROLL_CALL_WAIT: Final = 2.0  # seconds live replicas have to answer a roll call
ROLL_CALL: Final = "roll-call"  # the last level of the roll call's topic: no session is named so
# Its leases' topics, {prefix}/_shards/telemetry/{session}, would match every consumer's
# filter for all devices' telemetry, {prefix}/+/telemetry/+.
_RESERVED_RUNS: Final = frozenset({"telemetry"})


class ShardClaimError(Exception):
    """No shard is held: all are claimed, the replicas of the run disagree on the split, or the
    broker does not answer."""


def default_run_name(scenario: Path | None) -> str:
    """The run that the replicas of one command share by default: the scenario file's name as
    an id (`scale.toml` is `scale`), or `default` for the default fleet."""
    if scenario is None:
        return "default"
    name = re.sub(r"[^a-z0-9_-]", "-", scenario.stem.lower()).lstrip("-_")[:64]
    return name or "default"


def check_run_name(run: str) -> str:
    """`run`, if it can name a run's topics; ContractError with the reason otherwise."""
    check_id(run, "run name")
    if run in _RESERVED_RUNS:
        raise ContractError(
            f"run name {run!r}: its leases' topics would match every device's telemetry "
            "filter ({prefix}/+/telemetry/+); choose another"
        )
    return run


class ShardBook:
    """The leases of one run as one replica received them, by session: what the claim rule
    reads. Not thread-safe (ShardClaim guards it)."""

    def __init__(self, run: str, session: str) -> None:
        self.run = run
        self.session = session
        self._leases: dict[str, ShardLease] = {}

    def apply(self, session: str, payload: bytes) -> None:
        """Fold in the message on `session`'s lease topic; an empty one clears the lease.
        ContractError for a malformed lease, or one that names another run or session than
        its topic."""
        if not payload:
            self._leases.pop(session, None)
            return
        lease = ShardLease.decode(payload)
        if (lease.run, lease.session) != (self.run, session):
            raise ContractError(
                f"lease of run {lease.run!r}, session {lease.session} on the topic of run "
                f"{self.run!r}, session {session}"
            )
        self._leases[session] = lease

    def clear(self) -> None:
        self._leases.clear()

    def others(self) -> list[ShardLease]:
        """The leases of every other replica of the run."""
        return [lease for session, lease in self._leases.items() if session != self.session]

    def holds(self, shard: int) -> bool:
        """Whether this replica's claim of `shard`, received back from the broker now, wins
        the shard: no other replica's lease names it (see the module's docstring)."""
        return all(lease.shard != shard for lease in self.others())

    def lowest_free(self, count: int) -> int | None:
        """The lowest of `count` shards that no other replica's lease names; None if all are."""
        taken = {lease.shard for lease in self.others()}
        return next((shard for shard in range(count) if shard not in taken), None)

    def disagreeing(self, count: int, devices: int) -> list[ShardLease]:
        """Other replicas' leases that split another fleet, or the fleet in other shares."""
        return [
            lease for lease in self.others() if (lease.count, lease.devices) != (count, devices)
        ]


@dataclass(frozen=True, slots=True)
class _Verdict:
    statement: bytes  # the publish this verdict answers
    held: bool


class ShardClaim:
    """This replica's claim of one of `count` shards of `run`, a fleet of `devices`, over a
    broker connection of its own (the lease's will is that connection's). `claim()` takes a
    shard and holds it until `release()`; use it as a context manager.

    `on_lost(reason)` is called (on the connection's thread) when a reconnection finds the
    shard claimed by another replica; `lost` keeps the reason.
    """

    def __init__(
        self,
        settings: MqttSettings,
        run: str,
        count: int,
        devices: int,
        *,
        host: str | None = None,
        on_lost: Callable[[str], None] | None = None,
        roll_call_wait: float = ROLL_CALL_WAIT,
    ) -> None:
        self.run = check_run_name(run)
        self.count = count
        self.devices = devices
        self.host = (host or socket.gethostname())[:253]
        self.session = secrets.token_hex(8)
        self.shard: int | None = None
        self.lost: str | None = None
        self._url = settings.url
        topics = settings.topics()
        self._topics = topics
        self._topic = topics.shard_lease(run, self.session)
        self._leases = topics.all_shard_leases(run)
        self._roll_call = topics.shard_lease(run, ROLL_CALL)
        self._roll_call_wait = roll_call_wait
        # Sessions whose lease came live since the last roll call this replica made.
        self._answered: set[str] = set()
        self.cleared: list[str] = []
        """Sessions whose leases this replica cleared as stale (nobody answered for them)."""
        self._on_lost = on_lost
        self._book = ShardBook(run, self.session)
        self._changed = threading.Condition()
        # What this replica last said on its topic: nothing (b"") or its lease of `_claiming`.
        self._statement = b""
        self._claiming: int | None = None
        self._verdict: _Verdict | None = None
        self._started = False
        self._link = MqttLink(
            settings,
            client_id=f"edgetwin-shard-{self.session}",
            will=Will(self._topic, b"", qos=1, retain=True),
            on_connect=self._on_connect,
            on_message=self._on_message,
        )
        self._link.subscribe([self._leases], qos=1)

    def __enter__(self) -> ShardClaim:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()

    # -- the replica's side ----------------------------------------------------------------

    def connect(self, timeout: float = CLAIM_TIMEOUT) -> None:
        """Connect, and return once every lease the broker retains for the run is known.
        ShardClaimError when the broker refuses, or does not answer within `timeout` s."""
        if self._started:
            return
        self._started = True
        self._link.start()
        problem = self._link.wait_attempt(timeout)
        if problem is not None:
            raise ShardClaimError(problem)
        self._await(b"", timeout)  # published at the connection, back after the retained

    def claim(self, timeout: float = CLAIM_TIMEOUT) -> int:
        """The shard this replica holds: unless it holds one, connect and claim the lowest
        free one. ShardClaimError when none can be held: all are claimed, a replica of the run
        splits another fleet, or the broker does not answer within `timeout` seconds."""
        self.connect(timeout)
        with self._changed:
            if self.shard is not None and self.lost is None:
                return self.shard
        # Each lost claim is a shard that another replica claimed first; room for as many
        # again, for claims of others that lose in turn and leave theirs free.
        attempts = 2 * self.count + 1
        rolled = False
        for _ in range(attempts):
            with self._changed:
                disagreeing = self._book.disagreeing(self.count, self.devices)
                free = self._book.lowest_free(self.count)
            if (disagreeing or free is None) and not rolled:
                rolled = True
                if self.call_roll():
                    continue
            if disagreeing:
                other = disagreeing[0]
                raise ShardClaimError(
                    f"the replicas of run {self.run!r} disagree: this one splits "
                    f"{self.devices} devices into {self.count} shards, {other.host} "
                    f"{other.devices} into {other.count}: give each replica the same fleet "
                    "and --shard auto/N, and each fleet a --run of its own"
                )
            if free is None:
                raise ShardClaimError(
                    f"all {self.count} shards of run {self.run!r} are claimed: scale to at "
                    f"most {self.count} replicas"
                )
            if self.try_claim(free, timeout):
                log.info(
                    "shard claimed",
                    extra={"run": self.run, "shard": free, "count": self.count},
                )
                return free
            log.info(
                "shard claimed first by another replica, trying the next",
                extra={"run": self.run, "shard": free},
            )
        raise ShardClaimError(
            f"no shard of run {self.run!r} held after {attempts} claims: other replicas "
            "claimed each one first"
        )

    def call_roll(self) -> bool:
        """Ask every live replica of the run to publish its lease again, and clear each
        lease nobody answered for within `roll_call_wait` seconds (see the module's
        docstring). Returns whether any was cleared."""
        with self._changed:
            self._answered.clear()
        self._link.publish(self._roll_call, b"", qos=1)
        deadline = time.monotonic() + self._roll_call_wait
        with self._changed:
            while True:
                silent = [
                    lease.session
                    for lease in self._book.others()
                    if lease.session not in self._answered
                ]
                left = deadline - time.monotonic()
                if not silent or left <= 0:
                    break
                self._changed.wait(left)
            for session in silent:
                self._book.apply(session, b"")
        for session in silent:
            log.warning(
                "stale shard lease cleared: no replica answered for it",
                extra={"run": self.run, "session": session},
            )
            self._link.publish(self._topics.shard_lease(self.run, session), b"", qos=1, retain=True)
        self.cleared += silent
        return bool(silent)

    def release(self, timeout: float = RELEASE_TIMEOUT) -> None:
        """Clear this replica's lease and disconnect: a clean DISCONNECT has the broker drop
        the will, so the lease is cleared here."""
        if self._link.connected:
            with contextlib.suppress(PublishError):
                self._link.publish(self._topic, b"", qos=1, retain=True).wait(timeout)
        self._link.close()

    def try_claim(self, shard: int, timeout: float = CLAIM_TIMEOUT) -> bool:
        """Claim `shard` (after `connect`) and say whether this replica holds it now: False
        when another replica's lease on it reached the broker first. A claim lost stays
        published until the next claim or `release` replaces it."""
        statement = self._lease(shard)
        with self._changed:
            self._statement, self._claiming = statement, shard
        self._link.publish(self._topic, statement, qos=1, retain=True)
        return self._await(statement, timeout).held

    def _await(self, statement: bytes, timeout: float) -> _Verdict:
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._verdict is None or self._verdict.statement != statement:
                left = deadline - time.monotonic()
                if left <= 0 and self._link.rejected:
                    raise ShardClaimError(
                        f"{self._url} refused this replica's shard lease: its identity must "
                        f"write and read {self._leases} (as edgetwin broker-acl's "
                        "edgetwin.simulate may)"
                    )
                if left <= 0:
                    raise ShardClaimError(
                        f"no answer from {self._url} within {timeout:g} s to this replica's "
                        "shard lease"
                    )
                self._changed.wait(left)
            return self._verdict

    def _lease(self, shard: int) -> bytes:
        return ShardLease(
            run=self.run,
            shard=shard,
            count=self.count,
            devices=self.devices,
            session=self.session,
            ts=time.time(),
            host=self.host,
        ).encode()

    # -- the connection's thread -------------------------------------------------------------

    def _answer_roll_call(self, message: Message) -> None:
        """Another replica calls the roll (live: a retained one is nobody asking now): publish
        this replica's lease again, held or still being claimed, unchanged (a claim in flight
        is decided by its own bytes coming back)."""
        if message.retain:
            return
        with self._changed:
            statement = self._statement
        if statement:
            self._link.publish(self._topic, statement, qos=1, retain=True)

    def _on_connect(self, link: MqttLink) -> None:
        with self._changed:
            # The subscription's retained leases follow this hook: the book starts again.
            self._book.clear()
            if self.shard is not None and self.lost is None:
                self._statement = self._lease(self.shard)  # the held lease, stamped anew
            statement = self._statement
        link.publish(self._topic, statement, qos=1, retain=True)

    def _on_message(self, message: Message) -> None:
        session = message.topic.rsplit("/", 1)[1]
        if session == ROLL_CALL:
            self._answer_roll_call(message)
            return
        lost = None
        with self._changed:
            if not message.retain:
                self._answered.add(session)
                self._changed.notify_all()
            try:
                self._book.apply(session, message.payload)
            except ContractError as exc:
                log.warning("malformed shard lease ignored", extra={"error": str(exc)})
                return
            # Only this replica's latest statement, heard live, decides: a retained copy comes
            # with the subscription, before the leases the broker took after it.
            if session != self.session or message.retain or message.payload != self._statement:
                return
            claiming = self._claiming if message.payload else None
            held = claiming is not None and self._book.holds(claiming)
            if held:
                self.shard = claiming
            elif claiming is not None and claiming == self.shard and self.lost is None:
                lost = self.lost = (
                    f"shard {claiming} of {self.count} of run {self.run!r} was claimed by "
                    "another replica while this one was away from the broker"
                )
                self._statement, self._claiming = b"", None
            self._verdict = _Verdict(message.payload, held)
            self._changed.notify_all()
        if lost is not None:
            log.error("shard lost", extra={"run": self.run, "shard": self.shard})
            self._link.publish(self._topic, b"", qos=1, retain=True)
            if self._on_lost is not None:
                self._on_lost(lost)
