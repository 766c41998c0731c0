"""Project-wide fixtures: a private MQTT broker per test (docs/design.md, 'Testing').

The brokers are edgetwin's own pytest plugin's (`edgetwin.testing.broker_fixtures`), which
pytest loads through the package's `pytest11` entry point: the repository's tests use the
fixtures its users get. `broker` and `broker_factory` are their short names here.
Never the shared broker on 127.0.0.1:1883: tests must not see or disturb other traffic.
"""

from __future__ import annotations

import pytest

from edgetwin.testing.broker import Broker
from edgetwin.testing.broker_fixtures import BrokerFactory

__all__ = ["BrokerFactory"]


@pytest.fixture
def broker_factory(edgetwin_broker_factory: BrokerFactory) -> BrokerFactory:
    """`edgetwin_broker_factory`: extra private brokers, e.g. ``persistence=True`` or a
    variant (``auth=True``, ``tls=True``, ``acl_devices=[...]``), closed at teardown."""
    return edgetwin_broker_factory


@pytest.fixture
def broker(edgetwin_broker: Broker) -> Broker:
    """`edgetwin_broker`: a started private broker on a free port, closed after the test;
    its port survives `stop()`, `kill()` and `restart()`."""
    return edgetwin_broker
