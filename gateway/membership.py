"""Which gateways on this prefix are alive, from their leases on the broker alone
(docs/design.md, "Several gateways"), and which of them owns a device.

Every gateway retains a `GatewayLease` at `{prefix}/_gateways/{id}`: online at each connection
(its birth), offline as its last will and at a clean stop. Every gateway subscribes to all of
them and folds them in here. Nothing else is shared: two gateways that received the same leases
hold the same live set and compute the same `owner` of every device.

Ordering. A gateway id lives several lives (a restarted replica keeps its id); each draws a new
`session` and stamps its leases with its start time, `since`. A lease of another session than
the one known is a later life if its `since` is later, and the late will (or a replayed birth)
of an earlier life otherwise; a birth heard live is a new life whatever its `since` (only a
living process publishes one: a replica moved to a host whose clock is behind still counts);
a session once replaced is never taken back, whatever the clocks say. Within one session the
broker's order is the truth: a broker publishes a connection's will before it accepts the same
client's next connection (MQTT 5 §3.1.4, session take-over), so "offline" then "online" of one
session is a reconnection.

Proof of life. A retained "online" is a claim: a broker that crashed lost its clients' wills,
and with persistence replays the births of gateways that are gone. As for agents, every
gateway answers the rebirth request that each gateway sends after its connections, and after
each of its own connections a gateway takes the members not heard live since then for gone
(`confirm`); one heard live later is back at once.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

from edgetwin.agent.contract import ContractError, GatewayLease, Presence

log = logging.getLogger(__name__)

PAST_SESSIONS = 8  # ended sessions remembered per gateway id, as for agents
Verdict = Literal["applied", "unchanged", "stale", "cleared"]


@dataclass(frozen=True, slots=True)
class Member:
    """A live gateway as its latest lease describes it."""

    id: str
    session: str
    since: float  # when this life of the gateway started (wall clock)
    ts: float  # when it published the lease (its last birth)
    version: str
    api: str | None


@dataclass(frozen=True, slots=True)
class MembershipChange:
    joined: frozenset[str]
    left: frozenset[str]
    live: tuple[str, ...]  # the live set after the change, sorted


@dataclass(slots=True)
class _Record:
    lease: GatewayLease | None  # the current session's latest; None once the topic was cleared
    past: list[str] = field(default_factory=list)
    heard: float = float("-inf")  # monotonic time of the current session's last live lease
    silent: bool = False  # online by a retained lease only, and not heard since a connection

    @property
    def live(self) -> bool:
        return self.lease is not None and self.lease.state is Presence.ONLINE and not self.silent


def _weight(gateway: str, device: str) -> int:
    # '/' is in no id, so no two (gateway, device) pairs hash the same text. blake2b, not
    # hash(): Python salts str hashes per process, and every gateway must agree.
    digest = hashlib.blake2b(f"{gateway}/{device}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def rendezvous_owner(device: str, gateways: Iterable[str]) -> str | None:
    """The gateway of `gateways` with the highest weight for `device` (rendezvous, or
    highest-random-weight, hashing); None without gateways. A gateway that leaves moves only
    the devices it owned, each to the gateway with the next weight, spread evenly over the
    rest; one that joins takes about 1/N of the devices, from every other evenly. Ties (1 in
    2**64) go to the greater id."""
    best: str | None = None
    best_weight = -1
    for gateway in gateways:
        weight = _weight(gateway, device)
        if weight > best_weight or (weight == best_weight and best is not None and gateway > best):
            best, best_weight = gateway, weight
    return best


class Membership:
    """The live gateways of one prefix, folded from their leases; thread-safe.

    `self_id` and `self_session` are this gateway's own, only to warn when another process
    publishes leases under this gateway's id (two gateways configured alike).
    """

    def __init__(
        self,
        self_id: str,
        self_session: str,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.self_id = self_id
        self.self_session = self_session
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._records: dict[str, _Record] = {}
        self._live: tuple[str, ...] = ()
        self._listeners: list[Callable[[MembershipChange], None]] = []
        self._impostors: set[str] = set()

    def subscribe(self, listener: Callable[[MembershipChange], None]) -> None:
        """Call `listener` after every change of the live set (on the thread that made it)."""
        self._listeners.append(listener)

    # -- what the broker says -----------------------------------------------------------------

    def apply(self, gateway: str, payload: bytes, heard: float | None) -> Verdict:
        """Fold the message on `gateway`'s lease topic in; `heard` is when it was heard live
        (monotonic), None for a retained one the broker replayed. An empty payload (the
        retained lease cleared) removes the gateway. ContractError for a malformed lease or
        one that names another gateway than its topic."""
        if not payload:
            with self._lock:
                record = self._records.get(gateway)
                if record is None or record.lease is None:
                    return "unchanged"
                record.past = [*record.past, record.lease.session][-PAST_SESSIONS:]
                record.lease = None
                change = self._recount()
            self._notify(change)
            return "cleared"
        lease = GatewayLease.decode(payload)
        if lease.gateway != gateway:
            raise ContractError(f"lease of {lease.gateway!r} on the topic of {gateway!r}")
        self._check_impostor(lease, heard)
        with self._lock:
            record = self._records.setdefault(gateway, _Record(lease=None))
            verdict = self._fold(record, lease, heard)
            change = self._recount() if verdict == "applied" else None
        self._notify(change)
        return verdict

    def _fold(self, record: _Record, lease: GatewayLease, heard: float | None) -> Verdict:
        current = record.lease
        if lease.session in record.past:
            return "stale"
        if current is not None and lease.session != current.session:
            # A birth heard live comes from a living process: a new life, even from a host
            # whose clock is behind the last one's. Anything else is ordered by `since`.
            born_now = heard is not None and lease.state is Presence.ONLINE
            if not born_now and (lease.since, lease.session) < (current.since, current.session):
                return "stale"  # an earlier life's late will, or its birth replayed
            record.past = [*record.past, current.session][-PAST_SESSIONS:]
            current = None
        was_live = record.live
        if current is None:
            # A new life, or the first we hear of this one.
            record.heard = float("-inf")
            record.silent = False
        if heard is not None:
            record.heard = max(record.heard, heard)
            record.silent = False  # heard live: alive, whatever a check concluded before
        elif current is not None and current.state is lease.state:
            # The same lease replayed at a resubscription: nothing new, and no proof of life
            # for a member a check found silent.
            record.lease = lease
            return "unchanged"
        record.lease = lease
        return "applied" if record.live != was_live or current is None else "unchanged"

    def confirm(self, connected: float) -> list[str]:
        """After one of this gateway's connections (at monotonic `connected`) and the time the
        others had to answer its rebirth request: take the members online by a retained lease
        only, not heard live since the connection, for gone. Returns their ids."""
        with self._lock:
            silent = [
                gateway
                for gateway, record in self._records.items()
                if record.live and record.heard < connected
            ]
            for gateway in silent:
                self._records[gateway].silent = True
            change = self._recount() if silent else None
        if silent:
            log.warning(
                "gateways online by a retained lease only, silent since this one connected, "
                "are taken for gone",
                extra={"gateways": sorted(silent)},
            )
        self._notify(change)
        return sorted(silent)

    def _check_impostor(self, lease: GatewayLease, heard: float | None) -> None:
        if (
            lease.gateway == self.self_id
            and lease.session != self.self_session
            and lease.state is Presence.ONLINE
            and heard is not None
            and lease.session not in self._impostors
        ):
            self._impostors.add(lease.session)
            log.warning(
                "another gateway publishes leases under this gateway's id: give each gateway "
                "an id of its own ([gateway] id or EDGETWIN_GATEWAY_ID)",
                extra={"gateway": lease.gateway, "other_session": lease.session},
            )

    # -- the view -----------------------------------------------------------------------------

    def _recount(self) -> MembershipChange | None:
        """Caller holds the lock."""
        live = tuple(sorted(g for g, r in self._records.items() if r.live))
        if live == self._live:
            return None
        before, self._live = set(self._live), live
        return MembershipChange(
            joined=frozenset(set(live) - before), left=frozenset(before - set(live)), live=live
        )

    def _notify(self, change: MembershipChange | None) -> None:
        if change is None:
            return
        log.info(
            "gateways on the prefix changed",
            extra={
                "live": list(change.live),
                "joined": sorted(change.joined),
                "left": sorted(change.left),
            },
        )
        for listener in self._listeners:
            try:
                listener(change)
            except Exception:
                log.exception("membership listener failed")

    def live_ids(self) -> tuple[str, ...]:
        """The ids of the live gateways, sorted."""
        return self._live

    def members(self) -> list[Member]:
        """The live gateways, by id."""
        with self._lock:
            leases = [
                r.lease for _, r in sorted(self._records.items()) if r.live and r.lease is not None
            ]
        return [
            Member(
                id=lease.gateway,
                session=lease.session,
                since=lease.since,
                ts=lease.ts,
                version=lease.version,
                api=lease.api,
            )
            for lease in leases
        ]

    def owner(self, device: str) -> str | None:
        """The live gateway that owns `device`: the same on every gateway with the same view;
        None while no gateway is known to be live."""
        return rendezvous_owner(device, self._live)
