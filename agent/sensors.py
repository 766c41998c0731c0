"""Sensor settings from config or desired state, turned into opened hardware sensors."""

from __future__ import annotations

from agent.contract import SensorSettings
from hardware import EmulatedBackend, RealBackend, Sensor, open_sensor


def open_configured(
    settings: SensorSettings, backend: EmulatedBackend | RealBackend, *, seed: int
) -> Sensor:
    """Open the sensor `settings` describe on `backend`; raises HardwareError if it cannot."""
    return open_sensor(
        settings.driver,
        backend=backend,
        bus=settings.bus,
        address=settings.address,
        pins=settings.pins,
        device=settings.device,
        options=settings.options,
        seed=seed,
    )
