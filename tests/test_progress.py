"""The progress of a long run: a bar with rate and time left on a terminal, plain periodic
lines in a file or a CI log (gateway/progress.py)."""

from __future__ import annotations

import io

from edgetwin.gateway.progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_not_on_a_terminal_it_prints_plain_lines_at_its_period() -> None:
    log, clock = io.StringIO(), Clock()
    progress = Progress(3600, what="virtual time", stream=log, every=10, clock=clock)
    for second in range(1, 31):
        clock.now = float(second)
        progress.update(second * 60, second * 1000)
    progress.close()
    text = log.getvalue()
    assert "\r" not in text
    assert "\x1b" not in text
    lines = text.splitlines()
    assert len(lines) == 4  # at 10, 20 and 30 s, and the last
    assert lines[0] == ("virtual time: 16.7%, 10,000 messages, 1,000/s, 0:10 elapsed, 0:50 left")
    assert lines[-1].startswith("virtual time: 50.0%, 30,000 messages, 1,000/s, 0:30 elapsed")


def test_on_a_terminal_it_draws_a_bar_with_rate_and_time_left() -> None:
    terminal, clock = Terminal(), Clock()
    progress = Progress(100, what="virtual time", stream=terminal, clock=clock)
    clock.now = 2.0
    progress.update(50, 4000)
    progress.close()
    last = terminal.getvalue().rstrip("\n").split("\r")[-1]
    assert last.startswith("virtual time  50%|")
    assert "<" in last  # elapsed<remaining
    assert last.endswith("4,000 messages, 2,000/s")
