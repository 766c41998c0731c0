"""One device id, more than one agent: told apart from births, which no single agent repeats.

Agents sharing an id share its client id too, so the broker hands the connection from one to
the other at each connect ("session taken over"), and each comes back after its backoff: the
twin sees the device flap (50 such agents: 374 times in 25 s) and nothing says why. Two
signs give them away, among the births heard live (a retained one is history):

- a birth of a session that another session's birth already followed in the window: an agent
  draws a new session at every start and never goes back to an old one, so two processes are
  alive with the same id (a re-imaged board's new session with boot 1 is no such sign);
- without sessions (agents older than them), a birth of a lower boot than one already seen in
  the window: an agent's boot counter only grows;
- many births in a short window: a single agent is born again only after a lost connection
  and a backoff that doubles, so a dozen in half a minute means connections taken over.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

FLAP_WINDOW = 30.0  # seconds of births looked at
FLAP_BIRTHS = 10  # births within the window that no single agent's backoff allows
HOLD = 600.0  # seconds a suspicion stays after its last evidence


@dataclass(frozen=True)
class Suspicion:
    reason: str
    until: float  # monotonic
    new: bool  # the first evidence after a quiet spell: worth a log line


class DuplicateWatch:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._births: dict[str, deque[tuple[float, int, str | None]]] = {}
        self._until: dict[str, float] = {}

    def birth(
        self, device: str, boot: int, at: float, session: str | None = None
    ) -> Suspicion | None:
        """Note a birth of `device` (of agent session `session`) heard live at monotonic `at`."""
        with self._lock:
            births = self._births.setdefault(device, deque())
            while births and at - births[0][0] > FLAP_WINDOW:
                births.popleft()
            if session is None:
                earlier = max((b for _, b, s in births if s is None), default=boot)
                returned = False
            else:
                earlier = boot
                last = births[-1][2] if births else session
                returned = last != session and any(s == session for _, _, s in births)
            births.append((at, boot, session))
            if len(births) > FLAP_BIRTHS * 4:
                births.popleft()  # bounded: the count past the threshold tells nothing more
            if returned:
                sessions = len({s for _, _, s in births if s is not None})
                reason = (
                    f"births of {sessions} agent sessions taking turns within "
                    f"{FLAP_WINDOW:g} s: more than one agent runs with this device id"
                )
            elif boot < earlier:
                boots = sorted({b for _, b, _ in births})
                reason = (
                    f"births of boots {boots} within {FLAP_WINDOW:g} s: more than one agent "
                    "runs with this device id"
                )
            elif len(births) >= FLAP_BIRTHS:
                reason = (
                    f"{len(births)} births within {FLAP_WINDOW:g} s: more than one agent runs "
                    "with this device id (each takes the other's connection over)"
                )
            else:
                return None
            new = self._until.get(device, -1.0) < at
            self._until[device] = at + HOLD
            return Suspicion(reason, at + HOLD, new)

    def forget(self, device: str) -> None:
        with self._lock:
            self._births.pop(device, None)
            self._until.pop(device, None)
