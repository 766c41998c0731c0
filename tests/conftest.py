"""Project-wide fixtures: a private MQTT broker per test (docs/design.md, 'Testing').

The broker comes from the mosquitto binary when installed, else from a testcontainers
mosquitto when a Docker engine answers, else the test is skipped with the reason. Set
EDGETWIN_TEST_BROKER=mosquitto|docker|inprocess to force one back end (see tests/brokers.py).
Never the shared broker on 127.0.0.1:1883: tests must not see or disturb other traffic.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Protocol

import pytest

from tests.brokers import BrokerUnderTest, start_test_broker


class BrokerFactory(Protocol):
    def __call__(self, *, persistence: bool = False) -> BrokerUnderTest: ...


@pytest.fixture
def broker_factory() -> Iterator[BrokerFactory]:
    """Start extra private brokers, e.g. one with persistence for a restart test.

    ``persistence=True`` keeps retained messages across `restart()`, and with mosquitto even
    across `kill()` + `start()`. Every broker started is closed at teardown.
    """
    with contextlib.ExitStack() as stack:

        def make(*, persistence: bool = False) -> BrokerUnderTest:
            started = start_test_broker(persistence=persistence)
            stack.callback(started.close)
            return started

        yield make


@pytest.fixture
def broker(broker_factory: BrokerFactory) -> BrokerUnderTest:
    """A started private broker on a free port, closed after the test.

    Face: host, port, url, protocol ("5", or "3.1.1" for the in-process amqtt broker),
    is_running, start(), stop(), kill(), restart(), close(); the port survives restarts.
    Pair it with `edgetwin.testing.capture` (Capture, connect_client, publish).
    """
    return broker_factory()
