"""`edgetwin agent`: run the daemon in the foreground, as systemd expects."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from edgetwin.agent.config import EXIT_CONFIG, load_agent_config, load_for_program
from edgetwin.agent.runtime import Agent, StateDirError
from edgetwin.hardware.fault_channel import FAULTS_ENV

log = logging.getLogger(__name__)


def run_agent(config_path: Path) -> int:
    config = load_for_program(load_agent_config, config_path, "agent")
    if config is None:
        return EXIT_CONFIG
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        log.info("stop requested", extra={"signal": signal.Signals(signum).name})
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        # Set only by a test harness (edgetwin.testing.agent): faults for emulated chips.
        faults = os.environ.get(FAULTS_ENV)
        agent = Agent(config, fault_channel=Path(faults) if faults else None)
    except StateDirError as exc:
        print(f"edgetwin agent: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return agent.run(stop)
