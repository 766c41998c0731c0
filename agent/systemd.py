"""sd_notify for `Type=notify` units: READY, WATCHDOG, STOPPING and STATUS over NOTIFY_SOCKET.

The protocol is one datagram per message to the AF_UNIX socket systemd names in NOTIFY_SOCKET
(a path, or an abstract name starting with '@'); a dozen lines, so no library for it.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


class Notifier:
    """Does nothing when the process was not started by systemd with a notify socket."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]
        self._address = address or None
        self._socket: socket.socket | None = None
        watchdog_usec = env.get("WATCHDOG_USEC", "")
        watchdog_pid = env.get("WATCHDOG_PID", "")
        self.watchdog_interval: float | None = None
        # A positive integer only, as sd_watchdog_enabled(3) requires: "0" would make the loop
        # ping without ever waiting, and str.isdigit() also passes digits int() refuses ("²").
        usec = int(watchdog_usec) if watchdog_usec.isdecimal() and watchdog_usec.isascii() else 0
        if usec > 0 and (not watchdog_pid or watchdog_pid == str(os.getpid())):
            # Ping at half the timeout, as sd_watchdog_enabled(3) recommends.
            self.watchdog_interval = usec / 2_000_000

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, *fields: str) -> None:
        if self._address is None:
            return
        message = "\n".join(fields).encode()
        try:
            if self._socket is None:
                self._socket = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                )
            self._socket.sendto(message, self._address)
        except OSError as exc:
            # systemd going away must not take the agent with it.
            log.warning("sd_notify failed", extra={"error": str(exc)})

    def ready(self, status: str | None = None) -> None:
        self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")

    def status(self, text: str) -> None:
        self.notify(f"STATUS={text}")

    def stopping(self) -> None:
        self.notify("STOPPING=1")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
