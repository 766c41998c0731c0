"""`edgetwin sensors`: list the drivers (sensors and outputs), probe the I2C buses, take one
reading."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TextIO

from edgetwin.hardware.backends import EmulatedBackend, RealBackend
from edgetwin.hardware.drivers import OptionValue
from edgetwin.hardware.errors import HardwareError
from edgetwin.hardware.probe import i2c_buses, open_first, probe
from edgetwin.hardware.registry import list_drivers, list_output_drivers


def list_command(out: TextIO = sys.stdout) -> int:
    for info in list_drivers():
        quantities = ", ".join(f"{q.name} [{q.unit}]" for q in info.quantities)
        where = {
            "i2c": ", ".join(f"{a:#04x}" for a in info.valid_addresses()),
            "gpio": "pins " + ", ".join(info.pins),
            "sysfs": info.default_device or "sysfs device",
        }[info.interface]
        out.write(f"{info.name:<12} {info.interface:<6} {where:<22} {quantities}\n")
        out.write(f"{'':<12} {info.description}\n")
    out.write("\noutputs:\n")
    for output in list_output_drivers():
        place = (
            f"{min(output.valid_addresses()):#04x}..{max(output.valid_addresses()):#04x} "
            f"ch 0..{output.channels - 1}"
            if output.interface == "i2c"
            else "pin"
        )
        accepts = output.value_range
        values = (
            " or ".join(f"{level:g}" for level in accepts.levels)
            if accepts.levels
            else f"{accepts.lo:g}..{accepts.hi:g}"
        )
        out.write(
            f"{output.name:<15} {output.interface:<5} {place:<24} {output.kind.value} {values}, "
            f"safe {output.default_safe_value:g}\n"
        )
        out.write(f"{'':<15} {output.description}\n")
    return 0


def probe_command(dev_dir: Path = Path("/dev"), out: TextIO = sys.stdout) -> int:
    buses = i2c_buses(dev_dir)
    if not buses:
        out.write(
            f"no I2C adapters under {dev_dir} (on a Raspberry Pi: raspi-config, enable I2C)\n"
        )
        return 1
    with RealBackend(dev_dir=dev_dir) as backend:
        found = probe(backend, buses)
    for chip in found:
        out.write(f"bus {chip.bus}  {chip.address:#04x}  {chip.driver}\n")
    if not found:
        out.write(f"no known chip answers on buses {', '.join(map(str, buses))}\n")
    return 0


def read_command(
    driver: str,
    *,
    backend: str = "auto",
    bus: int = 1,
    address: int | None = None,
    pins: Mapping[str, int] | None = None,
    device: str | None = None,
    options: Mapping[str, OptionValue] | None = None,
    out: TextIO = sys.stdout,
) -> int:
    chosen: list[EmulatedBackend | RealBackend] = []
    if backend in ("real", "auto"):
        chosen.append(RealBackend())
    if backend in ("emulated", "auto"):
        chosen.append(EmulatedBackend())
    try:
        with open_first(
            driver, chosen, bus=bus, address=address, pins=pins, device=device, options=options
        ) as sensor:
            reading = sensor.read()
            out.write(f"{driver} ({sensor.status.backend.value})\n")
            for quantity, measurement in reading.values.items():
                out.write(f"  {quantity:<16} {measurement.value:>12.6g} {measurement.unit}\n")
    except HardwareError as exc:
        out.write(f"{driver}: {exc}\n")
        return 1
    finally:
        for each in chosen:
            each.close()
    return 0


def parse_assignments(items: Sequence[str] | None, what: str) -> dict[str, str]:
    """`role=value` pairs from the command line, e.g. `--pin trigger=23`."""
    result = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise SystemExit(f"edgetwin sensors: {what} must look like name=value, got {item!r}")
        result[key] = value
    return result


def option_value(text: str) -> OptionValue:
    """An option from the command line keeps its natural type: 2.048 is a float, true a bool."""
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text
