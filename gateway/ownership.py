"""Which gateway plays a device's missing streams when several share a prefix, and when it may
start (docs/design.md, "Several gateways").

The owner of a device is chosen by rendezvous hashing over the live gateways
(`membership.rendezvous_owner`) as the membership saw them once its view had stood for
`[gateway] rebalance_delay` (`settle`): a gateway's blip moves nothing. Ownership alone does
not make a writer: a gateway that just became the owner of a device another live gateway
still plays would double its streams. The claim settles that: the
retained twin document of a device names the gateway that writes it and plays its simulated
streams (`TwinSummary.gateway`). The owner starts once the claim is its own or nobody's (the old
owner's release, which carries the last seq it played), once the claimant has left the
membership, or after `handoff_timeout` without a release. Nothing but the broker is shared:
every gateway reads the same documents and leases and comes to the same decisions.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable, Mapping

from edgetwin.agent.contract import Server, TwinSummary
from edgetwin.gateway.membership import rendezvous_owner
from edgetwin.gateway.standins import StandIns

log = logging.getLogger(__name__)


class Decision(enum.Enum):
    SERVE = "serve"  # this gateway owns the device and nobody else plays it
    WAIT = "wait"  # this gateway owns it, but another live gateway has yet to release it
    OTHER = "other"  # another gateway owns it


class Ownership:
    """The claims of the devices' twin documents, and what this gateway may do with each
    device; thread-safe."""

    def __init__(
        self,
        self_id: str,
        handoff_timeout: float,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.self_id = self_id
        self.handoff_timeout = handoff_timeout
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._documents: dict[str, TwinSummary] = {}
        # Devices this gateway claims now: its last document of each named it.
        self._claimed: set[str] = set()
        # Devices this gateway owns but waits for: when it gives up waiting.
        self._waiting: dict[str, float] = {}
        # The live gateways as of the last `settle`: the membership's view once it has stood
        # for `[gateway] rebalance_delay`, not every blip of it.
        self._live: frozenset[str] = frozenset()
        self._live_sorted: tuple[str, ...] = ()

    def settle(self, live: tuple[str, ...]) -> tuple[str, ...]:
        """Decide from now on by `live`; returns the live set it replaces."""
        with self._lock:
            before, self._live_sorted, self._live = self._live_sorted, live, frozenset(live)
        return before

    @property
    def live(self) -> tuple[str, ...]:
        return self._live_sorted

    # -- what the broker says -------------------------------------------------------------------

    def note_document(self, summary: TwinSummary) -> bool:
        """A twin document as the broker delivered it (this gateway's own included). Returns
        whether its claim changed from the last one known: a device waited for may be free."""
        with self._lock:
            before = self._documents.get(summary.device)
            self._documents[summary.device] = summary
            if summary.gateway != self.self_id:
                # Written over by another gateway (one that took the device while this one was
                # cut off), or this gateway's own release coming back: no claim of ours stands.
                self._claimed.discard(summary.device)
            return before is None or before.gateway != summary.gateway

    def forget(self, device: str) -> None:
        with self._lock:
            self._documents.pop(device, None)
            self._claimed.discard(device)
            self._waiting.pop(device, None)

    # -- what this gateway does -----------------------------------------------------------------

    def owner(self, device: str, live: tuple[str, ...] | None = None) -> str:
        """The owner by the settled live set (or by `live`). With no live gateway known yet
        (its own lease has not come back) this gateway is alone as far as it knows, as a
        gateway on a prefix of its own always is."""
        return rendezvous_owner(device, self._live_sorted if live is None else live) or self.self_id

    def decide(self, device: str) -> Decision:
        if self.owner(device) != self.self_id:
            with self._lock:
                self._waiting.pop(device, None)
            return Decision.OTHER
        with self._lock:
            claimant = self._claimant(device)
            if claimant is None or claimant == self.self_id:
                self._waiting.pop(device, None)
                return Decision.SERVE
            if claimant not in self._live:
                self._waiting.pop(device, None)
                return Decision.SERVE  # the claimant is gone: its claim went with it
            now = self._monotonic()
            deadline = self._waiting.setdefault(device, now + self.handoff_timeout)
            if now < deadline:
                return Decision.WAIT
            del self._waiting[device]
        log.warning(
            "a live gateway did not hand a device over in time; taking it",
            extra={"device": device, "claimant": claimant, "timeout_s": self.handoff_timeout},
        )
        return Decision.SERVE

    def _claimant(self, device: str) -> str | None:
        """Caller holds the lock."""
        if device in self._claimed:
            return self.self_id
        document = self._documents.get(device)
        return document.gateway if document is not None else None

    def documented(self, device: str) -> bool:
        """Whether a twin document of the device was seen or published here."""
        with self._lock:
            return device in self._documents or device in self._claimed

    def claimed_devices(self) -> list[str]:
        with self._lock:
            return sorted(self._claimed)

    def claimed(self, device: str) -> bool:
        with self._lock:
            return device in self._claimed

    def note_published(self, device: str, *, claim: bool) -> None:
        """This gateway published the device's document, claiming it or releasing it."""
        with self._lock:
            if claim:
                self._claimed.add(device)
            else:
                self._claimed.discard(device)

    def next_deadline(self) -> float | None:
        """The monotonic time the first wait runs out, None without waits."""
        with self._lock:
            return min(self._waiting.values(), default=None)

    def expired_waits(self) -> list[str]:
        now = self._monotonic()
        with self._lock:
            return [device for device, deadline in self._waiting.items() if deadline <= now]

    def waiting(self) -> list[str]:
        with self._lock:
            return sorted(self._waiting)

    # -- what the documents say -----------------------------------------------------------------

    def floor(self, device: str) -> dict[str, int]:
        """The last seq of each stream as the device's latest document gives it: a released
        device continues after what its last player played, even where the player's last
        readings have not reached this gateway yet."""
        with self._lock:
            document = self._documents.get(device)
        if document is None:
            return {}
        return {name: serving.seq for name, serving in document.sensors.items()}

    def simulated_elsewhere(self, device: str) -> Mapping[str, int]:
        """The streams of `device` another live gateway plays now, by its latest document, with
        the seq that document gives: for the API, which answers for the whole fleet."""
        with self._lock:
            document = self._documents.get(device)
        if (
            document is None
            or document.gateway is None
            or document.gateway == self.self_id
            or document.gateway not in self._live
        ):
            return {}
        return {
            name: serving.seq
            for name, serving in document.sensors.items()
            if serving.served_by is Server.SIMULATION
        }

    def claims_of(self, gateways: frozenset[str]) -> list[str]:
        """The devices whose documents name one of `gateways`."""
        with self._lock:
            return [d for d, doc in self._documents.items() if doc.gateway in gateways]

    def elsewhere(self) -> tuple[set[str], int]:
        """The devices other live gateways play now, by their documents, and their streams."""
        devices: set[str] = set()
        streams = 0
        with self._lock:
            if len(self._live) < 2:
                return devices, 0
            for document in self._documents.values():
                if document.gateway is None or document.gateway == self.self_id:
                    continue
                if document.gateway not in self._live:
                    continue
                played = sum(
                    1 for s in document.sensors.values() if s.served_by is Server.SIMULATION
                )
                if played:
                    devices.add(document.device)
                streams += played
        return devices, streams


class PlayedStreams:
    """The fleet's simulated streams as this gateway knows them, for the API, which answers
    for the whole fleet whichever gateway it asks: its own stand-ins', and those that other
    live gateways play, by their twin documents."""

    def __init__(self, standins: StandIns, ownership: Ownership) -> None:
        self._standins = standins
        self._ownership = ownership

    def simulated_streams(self, device: str) -> Mapping[str, int]:
        return self._standins.simulated_streams(device) or self._ownership.simulated_elsewhere(
            device
        )

    def active_devices(self) -> set[str]:
        return self._standins.active_devices() | self._ownership.elsewhere()[0]

    def stream_count(self) -> int:
        return self._standins.stream_count() + self._ownership.elsewhere()[1]

    def tally(self) -> tuple[set[str], int]:
        """The devices played and their streams, with one walk over the others' documents
        (the live feed asks every half second)."""
        devices, streams = self._ownership.elsewhere()
        return self._standins.active_devices() | devices, self._standins.stream_count() + streams
