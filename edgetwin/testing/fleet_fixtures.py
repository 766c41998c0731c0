"""pytest fixtures for a message capture and simulated fleets; part of the edgetwin plugin."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import pytest

from edgetwin.testing.broker_fixtures import broker_or_default

if TYPE_CHECKING:
    from edgetwin.gateway.scenario import Scenario
    from edgetwin.testing.broker import Broker
    from edgetwin.testing.capture import Capture
    from edgetwin.testing.fleet import SimulatedFleet


@pytest.fixture
def edgetwin_capture(edgetwin_broker: Broker) -> Iterator[Capture]:
    """A client of `edgetwin_broker` that records every message of the filters it subscribes
    to (as the broker's reader identity where the broker has an ACL).

        edgetwin_capture.subscribe("edgetwin/+/telemetry/#")
        (alert,) = edgetwin_capture.wait_for("alerts/#", timeout=5)
        edgetwin_capture.assert_sequence_complete("fridge-1", "cabinet")

    `wait_for` fails with what did arrive; `readings()` decodes telemetry into the wire
    contract's `Telemetry`. For another broker: `edgetwin.testing.capture.Capture(endpoint)`.
    """
    from edgetwin.testing.capture import Capture

    with Capture(edgetwin_broker.reader_endpoint) as capture:
        yield capture


class FleetFactory(Protocol):
    """Call with the arguments of `edgetwin.testing.fleet.SimulatedFleet` (`devices`,
    `scenario`, `seed`, `interval`, `prefix`, `workers`, ...) and optionally `broker`."""

    def __call__(
        self,
        devices: int | None = None,
        *,
        scenario: Scenario | str | Path | None = None,
        broker: Broker | None = None,
        **options: Any,
    ) -> SimulatedFleet: ...


@pytest.fixture
def edgetwin_fleet(request: pytest.FixtureRequest) -> Iterator[FleetFactory]:
    """Start simulated fleets, on `edgetwin_broker` unless given `broker=`; each is stopped
    at the test's end.

        fleet = edgetwin_fleet(scenario="tests/fridges.toml", seed=7)
        fault = fleet.inject("fridge-2", "drift", per_hour=36_000, duration=30)
        fleet.wait_for_label(fault.id)

    The fleet runs the gateway's simulation engine in this process (`workers=N` for worker
    processes); `resize(n)`, `inject(...)`, `labels()` and `stop()` act on it while it runs.
    """
    from edgetwin.testing.fleet import SimulatedFleet

    with contextlib.ExitStack() as stack:

        def make(
            devices: int | None = None,
            *,
            scenario: Scenario | str | Path | None = None,
            broker: Broker | None = None,
            **options: Any,
        ) -> SimulatedFleet:
            on = broker_or_default(request, broker)
            fleet = SimulatedFleet(on.engine_endpoint, devices, scenario=scenario, **options)
            fleet.start()
            stack.callback(fleet.stop)
            return fleet

        yield make
