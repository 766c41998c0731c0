"""Waiting for something to become true, with a deadline instead of a guessed sleep."""

from __future__ import annotations

import time
from collections.abc import Callable


def poll(
    condition: Callable[[], object],
    timeout: float,
    interval: float = 0.05,
    what: str = "condition",
) -> None:
    """Call `condition` every `interval` seconds until it returns something truthy.

    Raises TimeoutError naming `what` if that has not happened within `timeout` seconds. Use it
    for state that can only be asked for (an HTTP API, a file), not for messages: those are
    awaited where they arrive.
    """
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} not reached within {timeout} s")
        time.sleep(interval)
