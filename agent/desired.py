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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgetwin.agent.contract import (
    ContractError,
    DesiredConfig,
    OutputSettings,
    SensorSettings,
    check_id,
)
from edgetwin.hardware import HardwareError
from edgetwin.hardware.drivers import OptionValue
from edgetwin.hardware.output import OutputPlacement, OutputSpec
from edgetwin.hardware.registry import check_output, check_output_value, check_settings

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
    """The first sensor or output entry at fault, by name: the decoder's error gives only its
    position."""
    entries: list[tuple[str, str, type[SensorSettings | OutputSettings]]] = [
        ("sensors", "sensor", SensorSettings),
        ("outputs", "output", OutputSettings),
    ]
    for key, what, kind in entries:
        table = document.get(key)
        if not isinstance(table, dict):
            continue
        for name, settings in table.items():
            try:
                check_id(name, f"{what} name")
                kind.from_builtins(settings)
            except ContractError as exc:
                return f"{what} {name!r}: {exc}"
    return None


def check_outputs(
    outputs: Mapping[str, OutputSettings], sensors: Mapping[str, SensorSettings]
) -> None:
    """Refuse, without touching any hardware, outputs that can never work or would fight over
    one place: an unknown driver, options or a placement the driver does not take, a value
    outside the output's declared range (refused, never clamped), two outputs on one GPIO pin
    or one channel, an output on a pin or an I2C address that a sensor of the same document
    names, and two frequencies on one PWM chip (a PCA9685 has one frequency for all its
    channels: the second would re-program the first). ContractError names the output.

    Shared by the agent (a refused document is reported and the last good one runs on) and
    the gateway's API (422), so both refuse the same documents for the same reasons.
    """
    owners = _places_of_sensors(sensors)
    frequencies: dict[tuple[int, int], tuple[OptionValue, str]] = {}
    for name, output in sorted(outputs.items()):
        what = f"output {name!r}"
        try:
            spec, placement = check_output(
                output.driver,
                bus=output.bus,
                address=output.address,
                channel=output.channel,
                pin=output.pin,
                options=output.options,
            )
            check_output_value(output.driver, output.value, output.options)
        except HardwareError as exc:
            raise ContractError(f"{what}: {exc}") from exc
        if placement.pin is not None:
            place: tuple[object, ...] = ("pin", placement.pin)
            described = f"GPIO{placement.pin}"
        else:
            place, described = _channel_place(
                what, output.driver, spec, placement, owners=owners, frequencies=frequencies
            )
        owner = owners.setdefault(place, what)
        if owner != what:
            raise ContractError(f"{what}: {described} is already taken by {owner}")


def _channel_place(
    what: str,
    driver: str,
    spec: OutputSpec,
    placement: OutputPlacement,
    *,
    owners: Mapping[tuple[object, ...], str],
    frequencies: dict[tuple[int, int], tuple[OptionValue, str]],
) -> tuple[tuple[object, ...], str]:
    """An I2C output's channel as a place, and in words; ContractError when its chip's address
    is a sensor's, or when another output gave the chip another frequency."""
    assert placement.address is not None  # check_output filled in the default
    chip = (placement.bus, placement.address)
    where = f"the {driver} at {placement.address:#04x} on I2C bus {placement.bus}"
    sensor = owners.get(("chip", *chip))
    if sensor is not None:
        raise ContractError(f"{what}: {where} is already taken by {sensor}")
    frequency = spec.settings.get("frequency")
    if frequency is not None:
        first, first_output = frequencies.setdefault(chip, (frequency, what))
        if first != frequency:
            raise ContractError(
                f"{what}: frequency {frequency:g} Hz, but {first_output} on {where} runs at "
                f"{first:g} Hz: one chip has one PWM frequency for all its channels"
            )
    return ("channel", *chip, placement.channel), f"channel {placement.channel} of {where}"


def _places_of_sensors(sensors: Mapping[str, SensorSettings]) -> dict[tuple[object, ...], str]:
    """The GPIO pins and I2C chips the running sensors of a document name, and whose they are:
    ("pin", N) and ("chip", bus, address)."""
    owners: dict[tuple[object, ...], str] = {}
    for name, sensor in sensors.items():
        if not sensor.enabled:
            continue
        for pin in sensor.pins.values():
            owners.setdefault(("pin", pin), f"sensor {name!r}")
        try:
            info = check_settings(sensor.driver, address=sensor.address)
        except HardwareError:
            continue  # refused elsewhere; only the places a sensor can take matter here
        address = sensor.address if sensor.address is not None else info.default_address
        if info.interface == "i2c" and address is not None:
            owners.setdefault(("chip", sensor.bus, address), f"sensor {name!r}")
    return owners


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
    try:
        check_outputs(desired.outputs, desired.sensors)
    except ContractError as exc:
        raise Rejection(str(exc), desired.version) from exc
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
