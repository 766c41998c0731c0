"""`edgetwin gateway`: the FastAPI twin on uvicorn, stopped cleanly by SIGTERM or Ctrl-C."""

from __future__ import annotations

import logging
import signal
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import uvicorn

from edgetwin.agent.config import EXIT_CONFIG, load_for_program
from edgetwin.gateway.app import create_app
from edgetwin.gateway.config import GatewayConfig, load_gateway_config
from edgetwin.gateway.live import LiveHub

log = logging.getLogger(__name__)


class GatewayServer(uvicorn.Server):
    """uvicorn waits for every open response before it stops, and a page's event stream
    (GET /events) never ends by itself: the streams are ended first."""

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        state = getattr(self.config.app, "state", None)
        hub = getattr(state, "live", None)
        if isinstance(hub, LiveHub):
            hub.shutdown()
        await super().shutdown(sockets)


class _Server(GatewayServer):
    """uvicorn re-raises SIGTERM after its graceful shutdown, so the process would die by the
    signal; a service that stopped cleanly should exit 0 instead, as the agent does."""

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {
            sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def serve(config: GatewayConfig) -> uvicorn.Server:
    """A uvicorn server for the gateway; `run()` it, and it handles SIGTERM and SIGINT."""
    app = create_app(config)
    server_config = uvicorn.Config(
        app,
        host=config.server.host,
        port=config.server.port,
        log_config=None,  # keep our JSON handler on the root logger
        access_log=False,  # request latency is in the metrics; one line per request is noise
        lifespan="on",
        # A backstop for responses that still do not end (the live streams are ended first).
        timeout_graceful_shutdown=5,
    )
    return _Server(server_config)


def run_gateway(config_path: Path) -> int:
    config = load_for_program(load_gateway_config, config_path, "gateway")
    if config is None:
        return EXIT_CONFIG
    server = serve(config)
    server.run()
    return 0 if server.started else 1
