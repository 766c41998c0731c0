"""Sensor settings from config or desired state, turned into opened hardware sensors."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from edgetwin.agent.contract import SensorSettings
from edgetwin.hardware import EmulatedBackend, RealBackend, Sensor
from edgetwin.hardware.probe import open_first
from edgetwin.hardware.signals import SignalModel


def open_configured(
    settings: SensorSettings,
    backends: Sequence[EmulatedBackend | RealBackend],
    *,
    seed: int,
    signals: Mapping[str, SignalModel] | None = None,
) -> Sensor:
    """Open the sensor `settings` describe on the first of `backends` where it comes up;
    an emulated chip measures `signals` (quantity -> model), the default signals otherwise.

    Raises HardwareError naming every back end tried when none works.
    """
    return open_first(
        settings.driver,
        backends,
        bus=settings.bus,
        address=settings.address,
        pins=settings.pins,
        device=settings.device,
        options=settings.options,
        seed=seed,
        signals=signals,
    )
