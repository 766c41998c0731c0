"""Log lines that any broker client can provoke, bounded: one per key and interval."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class LogLimiter:
    """Whether to log now for `key`: at most once per `interval` seconds each, the rest
    counted and reported with the next line. Keys come from the network (device ids in
    topics), so their number is bounded too: past `max_keys`, the stalest are forgotten."""

    def __init__(
        self,
        interval: float,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval = interval
        self.max_keys = max_keys
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def allow(self, key: str) -> int | None:
        """None: stay quiet. Else log, saying how many lines for `key` were held back."""
        now = self._clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.interval:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return None
            if last is None and len(self._last) >= self.max_keys:
                self._forget_stale(now)
            self._last[key] = now
            return self._suppressed.pop(key, 0)

    def __len__(self) -> int:
        """Keys remembered now."""
        with self._lock:
            return len(self._last)

    def _forget_stale(self, now: float) -> None:
        stale = [k for k, t in self._last.items() if now - t >= self.interval]
        for key in stale or list(self._last)[: self.max_keys // 2]:
            self._last.pop(key, None)
            self._suppressed.pop(key, None)
