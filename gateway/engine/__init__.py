"""The scale engine for purely simulated fleets: worker processes, each with its own MQTT
connection and a deadline schedule over its share of the streams (see controller.py)."""

from edgetwin.gateway.engine.controller import (
    EngineController,
    EngineError,
    EngineInputError,
    EngineStateError,
    EngineStats,
    WorkerSummary,
)
from edgetwin.gateway.engine.link import Endpoint
from edgetwin.gateway.engine.settings import EngineSettings

__all__ = [
    "Endpoint",
    "EngineController",
    "EngineError",
    "EngineInputError",
    "EngineSettings",
    "EngineStateError",
    "EngineStats",
    "WorkerSummary",
]
