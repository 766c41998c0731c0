"""The vocabulary of measured quantities: the one place a quantity's name is given a meaning.

Each `QuantityInfo` says what a reading of that name is: its unit, the range it can physically
take, the resolution (decimals) it is published with by default, a description, and the
default signal that plays it in emulators and simulations. Everything else derives from
`VOCABULARY`: the drivers' `Quantity` tuples (`measured`), `PHYSICAL_LIMITS` and `UNITS`, the
scenario files' default units and decimals, the flat payload's units and the recordings'
`name[unit]` columns. A driver therefore cannot name a unit that differs from the vocabulary.

Quantities only one driver measures (`contact`, `motion`, the ADC's `voltage_0` .. `voltage_3`)
are here too. `soc_temperature` is a quantity of its own for scenarios; the SoC thermal driver
measures `temperature` and plays it with the `soc_temperature` signal instead.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from edgetwin.hardware.sensor import Quantity
from edgetwin.hardware.signals import (
    Clamp,
    DailyCycle,
    Noise,
    Pulses,
    RandomWalk,
    RngFactory,
    SignalModel,
    Sum,
    Toggle,
    derive_seed,
)

ADC_CHANNELS: Final = (0, 1, 2, 3)
"""The single-ended inputs of a four-channel ADC, each its own `voltage_N` quantity."""


@dataclass(frozen=True, slots=True)
class QuantityInfo:
    """What a quantity of this name is, wherever it is measured, simulated or recorded."""

    name: str
    unit: str
    limits: tuple[float, float]
    """(lo, hi) in `unit`: the range the quantity can physically take; signals are clamped to
    it."""
    decimals: int
    """Decimals a reading is published with unless its source says otherwise (a driver's own
    resolution, a scenario's `decimals`)."""
    description: str
    signal: str
    """Name of the default signal recipe that plays it (see `default_signal`): its own name,
    or the quantity it is an instance of (`voltage_2` plays `voltage`)."""


def _info(
    name: str,
    unit: str,
    limits: tuple[float, float],
    decimals: int,
    description: str,
    *,
    signal: str | None = None,
) -> QuantityInfo:
    return QuantityInfo(name, unit, limits, decimals, description, signal or name)


_VOLTAGE_LIMITS: Final = (-4.096, 4.096)  # V, an ADS1115 at its widest gain

VOCABULARY: Final[Mapping[str, QuantityInfo]] = MappingProxyType(
    {
        q.name: q
        for q in (
            # °C: the operating range of the usual sensor chips.
            _info("temperature", "°C", (-40.0, 85.0), 2, "air temperature"),
            _info("humidity", "%RH", (0.0, 100.0), 2, "relative humidity"),
            # hPa: the BME280's range.
            _info("pressure", "hPa", (300.0, 1100.0), 2, "barometric pressure"),
            # lux: a 16-bit light sensor's full scale.
            _info("illuminance", "lx", (0.0, 65535.0), 1, "ambient light"),
            _info("voltage", "V", _VOLTAGE_LIMITS, 3, "analogue input voltage"),
            *(
                _info(
                    f"voltage_{n}", "V", _VOLTAGE_LIMITS, 3, f"AIN{n} against GND", signal="voltage"
                )
                for n in ADC_CHANNELS
            ),
            # m: an ultrasonic ranger's useful range.
            _info("distance", "m", (0.02, 4.0), 3, "distance to the nearest reflector"),
            _info("motion", "bool", (0.0, 1.0), 0, "1 while motion is seen"),
            _info("contact", "bool", (0.0, 1.0), 0, "1 while the contact is closed"),
            # °C: the board's own SoC, never below the room it is in.
            _info("soc_temperature", "°C", (20.0, 85.0), 2, "SoC die temperature"),
        )
    }
)
"""Every known quantity by name."""

PHYSICAL_LIMITS: Final[Mapping[str, tuple[float, float]]] = MappingProxyType(
    {name: q.limits for name, q in VOCABULARY.items()}
)
"""The range each quantity can physically take, as (lo, hi) in the quantity's unit."""

UNITS: Final[Mapping[str, str]] = MappingProxyType({name: q.unit for name, q in VOCABULARY.items()})
"""The unit of each quantity."""


def quantity_info(name: str) -> QuantityInfo:
    """The vocabulary's entry for `name`; ValueError naming the known ones if there is none."""
    try:
        return VOCABULARY[name]
    except KeyError:
        raise ValueError(
            f"unknown quantity {name!r}; known: {', '.join(sorted(VOCABULARY))}"
        ) from None


def measured(name: str, *, decimals: int | None = None, description: str | None = None) -> Quantity:
    """The `Quantity` a driver lists for vocabulary quantity `name`.

    The unit always comes from the vocabulary. `decimals` is the resolution the driver's own
    conversion produces (see `decimals_for`), the vocabulary's default when left out;
    `description` says what this driver measures, when that is more particular than the
    vocabulary's.
    """
    info = quantity_info(name)
    return Quantity(
        name,
        info.unit,
        info.description if description is None else description,
        info.decimals if decimals is None else decimals,
    )


def decimals_for(step: float, *, exact_within: int = 4) -> int:
    """Decimals that publish a conversion of resolution `step` (in the quantity's unit).

    When at most `exact_within` decimals write every multiple of `step` exactly (0.01 °C: 2,
    1/16 °C: 4, 1 m°C: 3), those, so nothing the driver measured is rounded away. Otherwise
    (1/1024 %RH, 175/65535 °C, 62.5 µV) the fewest decimals at which two readings one step
    apart stay apart: 10**-decimals <= step.
    """
    if not step > 0 or not math.isfinite(step):
        raise ValueError(f"a resolution step must be positive and finite, got {step}")
    for decimals in range(exact_within + 1):
        scaled = step * 10**decimals
        if abs(scaled - round(scaled)) < 1e-9 * max(1.0, scaled):
            return decimals
    return max(0, math.ceil(-math.log10(step) - 1e-12))


# -- default signals -------------------------------------------------------------------------

Recipe = Callable[[Callable[[str], int], RngFactory], SignalModel]
"""Builds a healthy signal from a seed per component (`sub("walk")`) and a generator factory."""


def _temperature(sub: Callable[[str], int], rng: RngFactory) -> SignalModel:
    # °C: a room around 21 °C, warmest mid-afternoon, wandering ±2 °C, 0.05 °C of jitter.
    return Sum(
        DailyCycle(21.0, 3.0, peak_hour=15.0),
        RandomWalk(-2.0, 2.0, step=0.01, seed=sub("walk"), start=0.0, rng=rng),
        Noise(0.05, seed=sub("noise"), rng=rng),
    )


def _humidity(sub: Callable[[str], int], rng: RngFactory) -> SignalModel:
    # %RH: relative humidity falls as the room warms, so the cycle peaks before dawn.
    return Sum(
        RandomWalk(35.0, 65.0, step=0.05, seed=sub("walk"), rng=rng),
        DailyCycle(0.0, 5.0, peak_hour=5.0),
        Noise(0.3, seed=sub("noise"), rng=rng),
    )


def _pressure(sub: Callable[[str], int], rng: RngFactory) -> SignalModel:
    # hPa: weather moves pressure by a few hPa over hours; standard atmosphere in the middle.
    return RandomWalk(1008.25, 1018.25, step=0.005, seed=sub("walk"), start=1013.25, rng=rng)


def _illuminance(sub: Callable[[str], int], rng: RngFactory) -> SignalModel:
    # lux: daylight through a window, brightest early afternoon, dark from about 21:00 to
    # 05:00 UTC (the cosine below zero is clamped away); clouds move it by ±50 lux.
    return Sum(
        DailyCycle(-100.0, 400.0, peak_hour=13.0),
        RandomWalk(-50.0, 50.0, step=0.5, seed=sub("clouds"), start=0.0, rng=rng),
        Noise(2.0, seed=sub("noise"), rng=rng),
    )


def _voltage(sub: Callable[[str], int], rng: RngFactory) -> SignalModel:
    # V: a slowly wandering analogue level on a 3.3 V rail, 0.5 mV of ADC noise.
    return Sum(
        RandomWalk(0.0, 3.3, step=0.001, seed=sub("walk"), start=1.65, rng=rng),
        Noise(0.0005, seed=sub("noise"), rng=rng),
    )


def _distance(sub: Callable[[str], int], rng: RngFactory) -> SignalModel:
    # m: something moving about in front of a ranger, within its useful range.
    return Sum(
        RandomWalk(0.1, 3.5, step=0.01, seed=sub("walk"), start=1.5, rng=rng),
        Noise(0.003, seed=sub("noise"), rng=rng),
    )


def _motion(sub: Callable[[str], int], rng: RngFactory) -> SignalModel:
    # 0/1: someone passes about six times an hour; the PIR holds its output for 10 s.
    return Pulses(rate_per_hour=6.0, duration=10.0, seed=sub("events"))


def _contact(sub: Callable[[str], int], rng: RngFactory) -> SignalModel:
    # 0/1: a door opened or closed every five hours or so; closed (1.0) at first.
    return Toggle(rate_per_hour=0.2, seed=sub("events"), initial=True)


def _soc_temperature(sub: Callable[[str], int], rng: RngFactory) -> SignalModel:
    # °C: the board's SoC, warmer than the room and following it, with load bursts.
    return Sum(
        DailyCycle(48.0, 3.0, peak_hour=15.0),
        RandomWalk(-5.0, 5.0, step=0.05, seed=sub("load"), start=0.0, rng=rng),
        Noise(0.2, seed=sub("noise"), rng=rng),
    )


_RECIPES: Final[Mapping[str, Recipe]] = MappingProxyType(
    {
        "temperature": _temperature,
        "humidity": _humidity,
        "pressure": _pressure,
        "illuminance": _illuminance,
        "voltage": _voltage,
        "distance": _distance,
        "motion": _motion,
        "contact": _contact,
        "soc_temperature": _soc_temperature,
    }
)


def plausible(quantity: str, model: SignalModel) -> Clamp:
    """`model` clamped to the physical range of `quantity` (see `PHYSICAL_LIMITS`)."""
    if quantity not in PHYSICAL_LIMITS:
        raise ValueError(
            f"no physical limits for quantity {quantity!r}; known: "
            f"{', '.join(sorted(PHYSICAL_LIMITS))}"
        )
    lo, hi = PHYSICAL_LIMITS[quantity]
    return Clamp(model, lo, hi)


def default_signal(quantity: str, seed: int, *, rng: RngFactory = random.Random) -> SignalModel:
    """A physically plausible indoor signal for `quantity`, reproducible from `seed`.

    The quantity's recipe (`QuantityInfo.signal`) builds it. Each recipe and component draws
    from its own stream, seeded by (seed, recipe, component), so that with one seed the
    humidity walk is not a scaled copy of the temperature walk. Every default is clamped to
    the quantity's `PHYSICAL_LIMITS`. Defaults are healthy: add faults with the wrappers in
    `hardware.signals`. `rng` builds the generators (`LightRandom` for large simulated fleets).
    """
    info = VOCABULARY.get(quantity)
    if info is None:
        raise ValueError(
            f"no default signal for quantity {quantity!r}; known: {', '.join(sorted(VOCABULARY))}"
        )

    def sub(component: str) -> int:
        return derive_seed(seed, info.signal, component)

    return plausible(quantity, _RECIPES[info.signal](sub, rng))
