"""edgetwin for your own tests, notebooks and scripts: a private broker, a message capture, a
simulated fleet, agents on emulated chips and a gateway, each started from code.

    from edgetwin.testing import Capture, SimulatedFleet, start_broker

    with start_broker() as broker, Capture(broker.endpoint, "edgetwin/#") as capture:
        with SimulatedFleet(broker.endpoint, devices=10, interval=0.5, seed=1):
            capture.wait_for("edgetwin/device_009/telemetry/+")

The pytest plugin (`edgetwin.testing.pytest_plugin`, loaded by pytest through the `pytest11`
entry point) returns these same objects from its fixtures; README's "Testing your own code
against edgetwin" shows both ways. Names load on first use, so that pytest sessions which use
none of them do not import the gateway's stack.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgetwin.testing.agent import EmulatedAgent, OutboxView
    from edgetwin.testing.broker import Broker, BrokerUnavailable, start_broker
    from edgetwin.testing.capture import Capture, Message, SequenceReport, WaitTimeout
    from edgetwin.testing.endpoint import MqttEndpoint
    from edgetwin.testing.fleet import PlayedMessage, SimulatedFleet, load_played, play_scenario
    from edgetwin.testing.gateway import GatewayClient, GatewayError, RunningGateway

_WHERE = {
    "Broker": "broker",
    "BrokerUnavailable": "broker",
    "start_broker": "broker",
    "Capture": "capture",
    "Message": "capture",
    "SequenceReport": "capture",
    "WaitTimeout": "capture",
    "MqttEndpoint": "endpoint",
    "SimulatedFleet": "fleet",
    "PlayedMessage": "fleet",
    "play_scenario": "fleet",
    "load_played": "fleet",
    "EmulatedAgent": "agent",
    "OutboxView": "agent",
    "RunningGateway": "gateway",
    "GatewayClient": "gateway",
    "GatewayError": "gateway",
}

__all__ = [
    "Broker",
    "BrokerUnavailable",
    "Capture",
    "EmulatedAgent",
    "GatewayClient",
    "GatewayError",
    "Message",
    "MqttEndpoint",
    "OutboxView",
    "PlayedMessage",
    "RunningGateway",
    "SequenceReport",
    "SimulatedFleet",
    "WaitTimeout",
    "load_played",
    "play_scenario",
    "start_broker",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'edgetwin.testing' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"edgetwin.testing.{module}"), name)
    globals()[name] = value
    return value
