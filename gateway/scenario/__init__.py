"""Scenarios: fleets described in TOML, generated deterministically, with labelled faults.

`load_scenario` parses a file into a `Scenario`; `Scenario.generator` gives a `Generator` that
says what each stream publishes at its scheduled times; `run_virtual` (gateway.scenario.virtual)
plays a scenario faster than real time into a file or a broker. `PlacedFleet` is the scenario
of a run whose streams are placed one device at a time (`PlacedStream`), the twin's stand-ins.
"""

from edgetwin.gateway.scenario.generator import Generator, Message, PlacedFleet, PlacedStream
from edgetwin.gateway.scenario.model import (
    FAULT_TYPES,
    FaultRequest,
    FaultSpec,
    Scenario,
    ScenarioError,
    StreamSpec,
    default_scenario,
    load_scenario,
    parse_duration,
    parse_scenario,
)

__all__ = [
    "FAULT_TYPES",
    "FaultRequest",
    "FaultSpec",
    "Generator",
    "Message",
    "PlacedFleet",
    "PlacedStream",
    "Scenario",
    "ScenarioError",
    "StreamSpec",
    "default_scenario",
    "load_scenario",
    "parse_duration",
    "parse_scenario",
]
