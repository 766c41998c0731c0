"""The retained list of the devices the twin knows, so that a restarted gateway can read their
documents in portions a stock broker delivers whole (docs/design.md, "Rebuilding the twin").

Sharded by device id (`agent.contract.twin_index_shard`): adding a device rewrites one shard,
not a document of the whole fleet. Changes are gathered for a moment and each changed shard is
published once: adding 10,000 devices through the API rewrites each of 64 shards a few times,
not 10,000 times.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from edgetwin.agent.contract import TWIN_INDEX_SHARDS, Topics, TwinIndex, twin_index_shard

FLUSH_DELAY = 0.5  # seconds changes are gathered before their shards are published

Publish = Callable[[str, bytes], None]


class TwinIndexKeeper:
    def __init__(self, topics: Topics, publish: Publish) -> None:
        self._topics = topics
        self._publish = publish
        self._lock = threading.Lock()
        self._shards: list[set[str]] = [set() for _ in range(TWIN_INDEX_SHARDS)]
        self._dirty: set[int] = set()
        self._timer: threading.Timer | None = None
        self._loaded: set[str] = set()
        # What the broker holds per shard, as read from it or last written to it: a rebuild
        # republishes only the shards that differ, not all 64 after every broker restart.
        self._on_broker: dict[int, frozenset[str]] = {}

    def load(self, document: TwinIndex) -> None:
        """A shard as the broker keeps it (an earlier run's): its devices are fetched, and
        stay listed until the twin is found not to know them (`settle`)."""
        with self._lock:
            devices = {d for d in document.devices if twin_index_shard(d) == document.shard}
            self._shards[document.shard] |= devices
            self._loaded |= devices
            self._on_broker[document.shard] = frozenset(devices)

    def forget_broker(self) -> None:
        """The broker's copy is about to be read again (it may have lost it in a restart)."""
        with self._lock:
            self._on_broker.clear()

    def loaded(self) -> list[str]:
        """The devices the broker's index listed, in id order."""
        with self._lock:
            return sorted(self._loaded)

    def note(self, device: str, known: bool) -> None:
        """The twin knows `device` (or no longer does)."""
        shard = twin_index_shard(device)
        with self._lock:
            members = self._shards[shard]
            if (device in members) == known:
                return
            if known:
                members.add(device)
            else:
                members.discard(device)
            self._dirty.add(shard)
            if self._timer is None:
                self._timer = threading.Timer(FLUSH_DELAY, self.flush)
                self._timer.daemon = True
                self._timer.start()

    def settle(self, known: Callable[[str], bool]) -> None:
        """After a rebuild: drop the listed devices the twin did not find on the broker."""
        for device in self.loaded():
            if not known(device):
                self.note(device, False)
        with self._lock:
            self._loaded.clear()

    def republish(self) -> None:
        """Publish the shards the broker does not hold as the twin knows them: all of them
        after a broker without persistence lost them, none after a plain gateway restart."""
        with self._lock:
            self._dirty.update(
                shard
                for shard in range(TWIN_INDEX_SHARDS)
                if frozenset(self._shards[shard]) != self._on_broker.get(shard, frozenset())
            )
        self.flush()

    def flush(self) -> None:
        with self._lock:
            self._timer = None
            dirty, self._dirty = self._dirty, set()
            documents = {shard: sorted(self._shards[shard]) for shard in sorted(dirty)}
            for shard, devices in documents.items():
                self._on_broker[shard] = frozenset(devices)
        for shard, devices in documents.items():
            payload = TwinIndex(shard=shard, devices=devices).encode() if devices else b""
            self._publish(self._topics.twin_index(shard), payload)

    def cancel(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
