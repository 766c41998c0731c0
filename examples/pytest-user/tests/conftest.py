"""fridge-watch's own fixture: the service, connected to the test's broker.

Everything else (`edgetwin_broker`, `edgetwin_fleet`, `edgetwin_agent`, `edgetwin_capture`)
comes from edgetwin's pytest plugin, which pytest loads by itself once edgetwin is installed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from fridge_watch import FridgeWatch


@pytest.fixture
def start_watch() -> Iterator[Callable[..., FridgeWatch]]:
    started: list[FridgeWatch] = []

    def start(broker, **options) -> FridgeWatch:  # type: ignore[no-untyped-def]
        endpoint = broker.reader_endpoint  # may read every device's telemetry
        watch = FridgeWatch(
            endpoint.host,
            endpoint.port,
            username=endpoint.username,
            password=endpoint.password,
            **options,
        )
        watch.start()
        started.append(watch)
        return watch

    yield start
    for watch in started:
        watch.stop()
