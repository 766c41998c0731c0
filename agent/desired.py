"""Configuration pushed by the gateway: validated in full, kept when good, refused with a reason.

The agent's file gives its identity, broker and defaults; the gateway's desired document
replaces the sensor set. The last applied document is kept on disk, so an agent that boots
while the broker is away runs the configuration it was last given.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

from agent.contract import ContractError, DesiredConfig

log = logging.getLogger(__name__)

MAX_DESIRED_BYTES = 64 * 1024
"""A desired document above this is refused unread: no sensor set needs more, and a Pi must not
parse megabytes from a misbehaving peer."""


class Rejection(Exception):
    """A desired document the agent will not apply; `version` is None when it had none."""

    def __init__(self, reason: str, version: int | None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.version = version


def _claimed_version(payload: bytes) -> int | None:
    """The version a refused document claims, for the rejection report, if it has one."""
    try:
        version = json.loads(payload).get("version")
    except (ValueError, AttributeError):
        return None
    return (
        version
        if isinstance(version, int) and not isinstance(version, bool) and version >= 0
        else None
    )


def validate_desired(payload: bytes, device: str, applied_version: int) -> DesiredConfig:
    """The document, if it is for this device, well formed and newer than what runs now."""
    if len(payload) > MAX_DESIRED_BYTES:
        raise Rejection(f"document of {len(payload)} bytes exceeds {MAX_DESIRED_BYTES}", None)
    try:
        desired = DesiredConfig.decode(payload)
    except ContractError as exc:
        raise Rejection(str(exc), _claimed_version(payload)) from exc
    if desired.device != device:
        raise Rejection(
            f"document is for device {desired.device!r}, not {device!r}", desired.version
        )
    if desired.version <= applied_version:
        raise Rejection(
            f"version {desired.version} is not newer than applied version {applied_version}",
            desired.version,
        )
    return desired


class DesiredStore:
    """The last applied desired document, on disk, replaced atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self, device: str) -> DesiredConfig | None:
        try:
            payload = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.error(
                "cannot read last applied config", extra={"path": str(self.path), "error": str(exc)}
            )
            return None
        try:
            desired = DesiredConfig.decode(payload)
        except ContractError as exc:
            log.error(
                "last applied config unreadable, ignored",
                extra={"path": str(self.path), "error": str(exc)},
            )
            return None
        if desired.device != device:
            log.error(
                "last applied config is for another device, ignored", extra={"path": str(self.path)}
            )
            return None
        return desired

    def save(self, desired: DesiredConfig) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".desired-")
        try:
            os.write(fd, desired.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
