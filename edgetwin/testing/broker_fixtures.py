"""pytest fixtures for private brokers (`edgetwin.testing.broker`); part of the edgetwin plugin.

Every broker is the mosquitto binary when installed, else the eclipse-mosquitto image through
testcontainers when a Docker engine answers; where neither can run, the test is skipped with
the reason. Never a broker that is already running: a test sees only its own traffic.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

import pytest

if TYPE_CHECKING:
    from edgetwin.testing.broker import Broker

MARKER = "edgetwin_broker"


class BrokerFactory(Protocol):
    """Call with the arguments of `edgetwin.testing.broker.start_broker`: `backend`,
    `persistence`, `auth`, `users`, `tls`, `client_certificates`, `acl_devices`, `topics`."""

    def __call__(self, *args: Any, **options: Any) -> Broker: ...


def start_or_skip(*args: Any, **options: Any) -> Broker:
    """`start_broker(...)`, or a skip with the reason when this machine cannot run it."""
    from edgetwin.testing.broker import BrokerUnavailable, start_broker

    try:
        return start_broker(*args, **options)
    except BrokerUnavailable as exc:
        pytest.skip(exc.reason)
    except ValueError as exc:  # EDGETWIN_TEST_BROKER names no back end, or options clash
        raise pytest.UsageError(str(exc)) from exc


def broker_or_default(request: pytest.FixtureRequest, broker: Broker | None) -> Broker:
    """`broker`, else `edgetwin_broker`: started only when a test asks for it, so a test that
    passes a broker of its own does not start the default one too."""
    return broker if broker is not None else request.getfixturevalue("edgetwin_broker")


@contextlib.contextmanager
def _factory() -> Iterator[BrokerFactory]:
    with contextlib.ExitStack() as stack:

        def make(*args: Any, **options: Any) -> Broker:
            started = start_or_skip(*args, **options)
            stack.callback(started.close)
            return started

        yield make


@pytest.fixture
def edgetwin_broker_factory() -> Iterator[BrokerFactory]:
    """Start as many private brokers as a test needs, each closed at the test's end.

    def test_tls_only(edgetwin_broker_factory):
        broker = edgetwin_broker_factory(tls=True, persistence=True)
    """
    with _factory() as make:
        yield make


@pytest.fixture(scope="session")
def edgetwin_broker_factory_session() -> Iterator[BrokerFactory]:
    """`edgetwin_broker_factory` for session-scoped fixtures of your own: its brokers live until
    the test session ends."""
    with _factory() as make:
        yield make


@pytest.fixture
def edgetwin_broker(
    request: pytest.FixtureRequest, edgetwin_broker_factory: BrokerFactory
) -> Broker:
    """A started private broker for this test alone, closed after it.

    `host`, `port`, `url`, `endpoint` (an `MqttEndpoint`: credentials and TLS included) and
    `stop()`, `kill()`, `start()`, `restart()`: the port stays the same, so clients reconnect.
    Mark the test to get a variant:

        @pytest.mark.edgetwin_broker(persistence=True, auth=True, tls=True)
        @pytest.mark.edgetwin_broker(acl_devices=["fridge-1", "fridge-2"])
    """
    marker = request.node.get_closest_marker(MARKER)
    args, options = (marker.args, marker.kwargs) if marker else ((), {})
    return edgetwin_broker_factory(*args, **options)


@pytest.fixture(scope="session")
def edgetwin_broker_session(edgetwin_broker_factory_session: BrokerFactory) -> Broker:
    """One plain broker shared by every test of the session that asks for it (quicker than a
    broker per test; tests then share its traffic, so give each its own topics)."""
    return edgetwin_broker_factory_session()
