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
from typing import Any

from edgetwin.agent.contract import ContractError, DesiredConfig, SensorSettings, check_id
from edgetwin.hardware import HardwareError
from edgetwin.hardware.registry import check_settings

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


def _as_object(payload: bytes) -> dict[str, Any]:
    """A refused document read leniently, for its report: {} when it is no JSON object."""
    try:
        document = json.loads(payload)
    except (ValueError, RecursionError):
        # RecursionError: deeply nested JSON ("[[[[..."), well under MAX_DESIRED_BYTES.
        return {}
    return document if isinstance(document, dict) else {}


def _claimed_version(document: dict[str, Any]) -> int | None:
    """The version a refused document claims, for the rejection report, if it has one."""
    version = document.get("version")
    return (
        version
        if isinstance(version, int) and not isinstance(version, bool) and version >= 0
        else None
    )


def _culprit(document: dict[str, Any]) -> str | None:
    """The first sensor entry at fault, by name: the decoder's error gives only its position."""
    sensors = document.get("sensors")
    if not isinstance(sensors, dict):
        return None
    for name, settings in sensors.items():
        try:
            check_id(name, "sensor name")
            SensorSettings.from_builtins(settings)
        except ContractError as exc:
            return f"sensor {name!r}: {exc}"
    return None


class AlreadyApplied(Exception):
    """The document that runs now, delivered again (a retained message on resubscribe)."""


def validate_desired(
    payload: bytes, device: str, applied_version: int, applied: DesiredConfig | None = None
) -> DesiredConfig:
    """The document, if it is for this device, well formed and newer than what runs now.

    Raises Rejection for anything else, except AlreadyApplied for the running version itself:
    the broker hands the retained document over again at every reconnect, and that is no error.
    Given the `applied` document, the same version with other content is a Rejection: the
    gateway would otherwise believe the device runs what it does not.
    """
    if len(payload) > MAX_DESIRED_BYTES:
        raise Rejection(f"document of {len(payload)} bytes exceeds {MAX_DESIRED_BYTES}", None)
    try:
        desired = DesiredConfig.decode(payload)
    except ContractError as exc:
        document = _as_object(payload)
        raise Rejection(_culprit(document) or str(exc), _claimed_version(document)) from exc
    if desired.device != device:
        raise Rejection(
            f"document is for device {desired.device!r}, not {device!r}", desired.version
        )
    if desired.version == applied_version:
        if applied is not None and desired != applied:
            raise Rejection(
                f"version {desired.version} is already applied with other content; "
                "a change needs a new version",
                desired.version,
            )
        raise AlreadyApplied
    if desired.version < applied_version:
        raise Rejection(
            f"version {desired.version} is older than applied version {applied_version}",
            desired.version,
        )
    for name, settings in desired.sensors.items():
        try:
            check_settings(settings.driver, address=settings.address)
        except HardwareError as exc:
            # Refused now rather than applied as a sensor that can never come up.
            raise Rejection(f"sensor {name!r}: {exc}", desired.version) from exc
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
