"""Project-wide fixtures: a private MQTT broker per test (docs/design.md, 'Testing').

The broker comes from `edgetwin.testing.broker`: the mosquitto binary when installed, else a
testcontainers mosquitto when a Docker engine answers, else the test is skipped with the
reason. Set EDGETWIN_TEST_BROKER=mosquitto|docker|inprocess to force one back end.
Never the shared broker on 127.0.0.1:1883: tests must not see or disturb other traffic.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Protocol

import pytest

from edgetwin.testing.broker import Broker, BrokerUnavailable, start_broker


class BrokerFactory(Protocol):
    def __call__(self, *, persistence: bool = False, **variant: Any) -> Broker: ...


def started_broker(**options: Any) -> Broker:
    """`start_broker(**options)`, or a skip with the reason when this machine cannot run it."""
    try:
        return start_broker(**options)
    except BrokerUnavailable as exc:
        pytest.skip(exc.reason)
    except ValueError as exc:  # EDGETWIN_TEST_BROKER names no back end
        raise pytest.UsageError(str(exc)) from exc


@pytest.fixture
def broker_factory() -> Iterator[BrokerFactory]:
    """Start extra private brokers, e.g. one with persistence for a restart test, or a
    variant (``auth=True``, ``tls=...``, ``acl_devices=[...]``, see `start_broker`).

    ``persistence=True`` keeps retained messages across `restart()`, and with mosquitto even
    across `kill()` + `start()`. Every broker started is closed at teardown.
    """
    with contextlib.ExitStack() as stack:

        def make(*, persistence: bool = False, **variant: Any) -> Broker:
            started = started_broker(persistence=persistence, **variant)
            stack.callback(started.close)
            return started

        yield make


@pytest.fixture
def broker(broker_factory: BrokerFactory) -> Broker:
    """A started private broker on a free port, closed after the test.

    Face: host, port, url, protocol ("5", or "3.1.1" for the in-process amqtt broker),
    is_running, start(), stop(), kill(), restart(), close(); the port survives restarts.
    Pair it with `edgetwin.testing.capture` (Capture, connect_client, publish).
    """
    return broker_factory()
