"""Progress of a long command-line run: a live bar on a terminal, plain lines elsewhere.

On a terminal, tqdm draws the bar with its rate and the time left. Anywhere else (a file, a
pipe, a CI log) a redrawn bar is noise: `\\r` and escape codes in every line of the log. There
the run prints one plain line every `every` seconds instead, with the same figures.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import IO, Never

from tqdm import tqdm

PLAIN_EVERY = 10.0  # seconds between plain lines


def _duration(seconds: float) -> str:
    seconds = max(round(seconds), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    """How far a run is through `total` (of a unit, e.g. virtual seconds) and how many
    messages it produced: `update(done, messages)` as it goes, `close()` at the end."""

    def __init__(
        self,
        total: float,
        *,
        what: str,
        stream: IO[str] | None = None,
        every: float = PLAIN_EVERY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._total = total
        self._what = what
        self._stream = stream if stream is not None else sys.stderr
        self._every = every
        self._clock = clock
        self._started = self._last = clock()
        self._done = 0.0
        self._messages = 0
        isatty = getattr(self._stream, "isatty", None)
        self._bar: tqdm[Never] | None = None
        if callable(isatty) and isatty():
            self._bar = tqdm(
                total=total,
                file=self._stream,
                desc=what,
                unit="s",
                unit_scale=True,
                mininterval=0.2,
                bar_format="{desc} {percentage:3.0f}%|{bar}| {elapsed}<{remaining}{postfix}",
            )

    def update(self, done: float, messages: int) -> None:
        self._done, self._messages = min(done, self._total), messages
        if self._bar is not None:
            self._bar.n = self._done
            self._bar.set_postfix_str(self._figures(), refresh=False)
            self._bar.update(0)  # redraws when tqdm's mininterval has passed
            return
        now = self._clock()
        if now - self._last >= self._every:
            self._last = now
            self._stream.write(self.line() + "\n")
            self._stream.flush()

    def _figures(self) -> str:
        elapsed = max(self._clock() - self._started, 1e-9)
        return f"{self._messages:,} messages, {self._messages / elapsed:,.0f}/s"

    def line(self) -> str:
        """The plain line: fraction done, messages and their rate, time spent and left."""
        fraction = self._done / self._total if self._total > 0 else 1.0
        elapsed = self._clock() - self._started
        left = elapsed * (1 - fraction) / fraction if fraction > 0 else None
        return (
            f"{self._what}: {fraction:.1%}, {self._figures()}, {_duration(elapsed)} elapsed, "
            + ("time left unknown" if left is None else f"{_duration(left)} left")
        )

    def close(self) -> None:
        """The final state: the bar completed, or the last plain line."""
        if self._bar is not None:
            self._bar.n = self._done
            self._bar.set_postfix_str(self._figures(), refresh=False)
            self._bar.close()
            return
        self._stream.write(self.line() + "\n")
        self._stream.flush()
