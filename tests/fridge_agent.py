"""An agent process whose emulated BME280 sits in a fridge: `python -m tests.fridge_agent CONFIG`.

The stock agent's emulated chips measure the default indoor signals, which the gateway's own
default simulation measures too; a test that the gateway continues *this* sensor needs one that
measures something else. Stops on SIGTERM like `edgetwin agent`; tests kill it with SIGKILL.
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from edgetwin.agent.config import load_agent_config
from edgetwin.agent.runtime import Agent
from edgetwin.hardware import EmulatedBackend
from edgetwin.hardware.drivers.bme280 import BME280Emulator
from edgetwin.hardware.signals import Constant, Noise, Sum

FRIDGE_TEMPERATURE = 4.0  # °C
FRIDGE_HUMIDITY = 85.0  # %RH
FRIDGE_PRESSURE = 990.0  # hPa


def fridge_backend(seed: int = 11) -> EmulatedBackend:
    """An emulated back end with a BME280 at 0x76 on bus 1 measuring a fridge's inside."""
    backend = EmulatedBackend(seed=seed)
    backend.i2c_bus(1).attach(
        0x76,
        BME280Emulator(
            signals={
                "temperature": Sum(Constant(FRIDGE_TEMPERATURE), Noise(0.05, seed=seed)),
                "humidity": Sum(Constant(FRIDGE_HUMIDITY), Noise(0.3, seed=seed + 1)),
                "pressure": Sum(Constant(FRIDGE_PRESSURE), Noise(0.02, seed=seed + 2)),
            },
            clock=backend.clock,
            timer=backend.timer,
        ),
    )
    return backend


def main(config_path: Path) -> int:
    config = load_agent_config(config_path)
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    return Agent(config, emulated_backend=fridge_backend()).run(stop)


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
