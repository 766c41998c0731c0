"""`edgetwin agent`: run the daemon in the foreground, as systemd expects."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from agent.config import ConfigError, load_agent_config
from agent.logs import configure_logging
from agent.runtime import Agent

log = logging.getLogger(__name__)


def run_agent(config_path: Path) -> int:
    try:
        config = load_agent_config(config_path)
    except ConfigError as exc:
        # Plain text, not JSON: whoever starts the program must read this one at once.
        print(f"edgetwin agent: {exc}", file=sys.stderr)
        return 2
    configure_logging(
        config.observability.service_name,
        config.observability.log_level,
        config_file=config.observability.log_config,
    )
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        log.info("stop requested", extra={"signal": signal.Signals(signum).name})
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    return Agent(config).run(stop)
