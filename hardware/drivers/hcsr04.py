"""HC-SR04 ultrasonic ranger on two GPIOs (trigger, echo), through gpiozero, and its emulator.

The module (ElecFreaks HC-SR04 datasheet) sends eight 40 kHz cycles after a 10 µs trigger
pulse and holds ECHO high for the sound's round trip: distance = echo time × speed of sound / 2,
2 cm to 4 m. It wants at least 60 ms between pings so one echo is not taken for the next.
ECHO is a 5 V output: it needs a divider (e.g. 1 kΩ / 2 kΩ) before a 3.3 V GPIO.
With no obstacle in range, common modules hold ECHO high for about 38 ms (not in the datasheet;
measured on many boards), 6.5 m of apparent distance.

gpiozero's DistanceSensor pings in a background thread every 60 ms and converts with its own
speed of sound, 343.26 m/s; air at 20 °C carries sound at 343 m/s and every 1 °C adds about
0.6 m/s, so readings are off by ~0.2 % per 1 °C away from 20 °C. Beyond `max_distance` gpiozero
reports exactly `max_distance`, which this driver turns into "no echo" (DataError).

A reading is the median of `samples` pings that started after `read()` was called (see
`hardware.gpio.SampleTap`), the same smoothing gpiozero applies to its queue. That costs real
time on real and emulated back ends alike: up to one ping already in flight, then about
60 ms + the echo (up to 23 ms at 4 m) per sample, so ~0.3 s for the default 3 samples; a read
gives up with SensorTimeoutError when the pings fail (no echo rising at all: wiring) for
`(samples + 1) × PING_PERIOD_MAX + READ_SLACK` seconds.
"""

from __future__ import annotations

import math
import statistics
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final, Self

from edgetwin.hardware.backends import Backend, EmulatedBackend
from edgetwin.hardware.drivers import DriverInfo, Placement
from edgetwin.hardware.errors import DataError, SensorSettingsError, SensorTimeoutError
from edgetwin.hardware.options import DriverOptions
from edgetwin.hardware.quantities import measured
from edgetwin.hardware.sensor import BackendKind, Clock, Sensor
from edgetwin.hardware.signals import Constant, SignalModel

if TYPE_CHECKING:
    from gpiozero import Factory
    from gpiozero.pins.mock import MockFactory

    from edgetwin.hardware.gpio import EchoTriggerPin, TappedDevice

RANGE_MIN: Final = 0.02
"""m; the datasheet's shortest range: nearer, the echo returns while the module still rings."""
RANGE_MAX: Final = 4.0
"""m; the datasheet's longest range."""

SPEED_OF_SOUND: Final = 343.0
"""m/s in dry air at 20 °C: what the emulator's sound travels at."""
GPIOZERO_SPEED_OF_SOUND: Final = 343.26
"""m/s; what gpiozero's DistanceSensor assumes, so an emulated reading comes out 0.08 % long."""

NO_ECHO_PULSE: Final = 38e-3
"""s; how long common modules hold ECHO high when nothing comes back."""

PING_PERIOD: Final = 0.06
"""s; gpiozero's DistanceSensor waits this long between pings, the datasheet's minimum cycle."""
PING_PERIOD_MAX: Final = 0.21
"""s; the longest one gpiozero ping can take: 60 ms between pings, up to 50 ms for a stuck-high
ECHO to fall, then up to 100 ms for the echo (gpiozero/input_devices.py, DistanceSensor._read)."""
READ_SLACK: Final = 0.25
"""s; thread scheduling slack on a busy Pi Zero."""

DEFAULT_MAX_DISTANCE: Final = RANGE_MAX
DEFAULT_SAMPLES: Final = 3
"""Median of three pings: one stray echo (a second reflector, a missed pulse) cannot move it."""
MAX_SAMPLES: Final = 15

# The distance comes from timing an echo, with no conversion step of its own: published at
# the vocabulary's millimetres, about the module's own resolution.
QUANTITIES: Final = (measured("distance"),)


def echo_time(distance: float, speed_of_sound: float = SPEED_OF_SOUND) -> float:
    """Seconds of ECHO high for a reflector `distance` metres away: the round trip."""
    return 2.0 * distance / speed_of_sound


def distance_from_echo(seconds: float, speed_of_sound: float = GPIOZERO_SPEED_OF_SOUND) -> float:
    """Metres to the reflector for an echo of `seconds`, as gpiozero computes it."""
    return seconds * speed_of_sound / 2.0


# -- the driver --------------------------------------------------------------------------------


class HCSR04(Sensor):
    """An HC-SR04 on `trigger` and `echo`, read through gpiozero's DistanceSensor."""

    driver_name = "hcsr04"
    quantities = QUANTITIES

    def __init__(
        self,
        pin_factory: Factory,
        *,
        trigger: int,
        echo: int,
        max_distance: float = DEFAULT_MAX_DISTANCE,
        samples: int = DEFAULT_SAMPLES,
        backend: BackendKind = BackendKind.REAL,
        clock: Clock = time.time,
    ) -> None:
        if not 0 < max_distance <= RANGE_MAX:
            raise ValueError(f"max_distance must be within 0..{RANGE_MAX} m, got {max_distance}")
        if not 1 <= samples <= MAX_SAMPLES:
            raise ValueError(f"samples must be within 1..{MAX_SAMPLES}, got {samples}")
        super().__init__(backend, clock)
        self.trigger = trigger
        self.echo = echo
        self.max_distance = max_distance
        self.samples = samples
        self._factory = pin_factory
        self._device: TappedDevice | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"HCSR04(trigger={self.trigger}, echo={self.echo}, backend={self.status.backend.value})"
        )

    @property
    def read_timeout(self) -> float:
        """Seconds a read waits for its pings before a SensorTimeoutError."""
        return (self.samples + 1) * PING_PERIOD_MAX + READ_SLACK

    def open(self) -> Self:
        """Claim both pins and start gpiozero's pinging thread."""
        with self._lock:
            self._open_device()
        return self

    def close(self) -> None:
        with self._lock:
            device, self._device = self._device, None
        if device is not None:
            device.close()

    def _open_device(self) -> TappedDevice:
        from edgetwin.hardware import gpio

        if self._device is None:
            self._device = gpio.TappedDevice(
                self._where(),
                lambda tap: gpio.TappedDistanceSensor(
                    tap=tap,
                    echo=self.echo,
                    trigger=self.trigger,
                    max_distance=self.max_distance,
                    threshold_distance=self.max_distance / 2,  # unused; must not exceed the max
                    queue_len=self.samples,
                    pin_factory=self._factory,
                ),
            )
        return self._device

    def _measure(self) -> Mapping[str, float]:
        with self._lock:
            ratios = self._open_device().fresh(self.samples, self.read_timeout)
        if ratios is None:
            raise SensorTimeoutError(
                f"{self._where()}: fewer than {self.samples} echoes in {self.read_timeout:.2f} s"
                " (check the wiring and the 5 V to 3.3 V divider on ECHO)"
            )
        ratio = statistics.median(ratios)
        if ratio >= 1.0:
            raise DataError(
                f"{self._where()}: no echo within max_distance {self.max_distance} m "
                "(nothing in range, or a soft surface at a slant)"
            )
        return {"distance": ratio * self.max_distance}

    def _where(self) -> str:
        return f"hcsr04 on GPIO{self.trigger} (trigger) / GPIO{self.echo} (echo)"


# -- the emulator ------------------------------------------------------------------------------


class HCSR04Emulator:
    """An HC-SR04 seen from its pins: each trigger pulse is answered by an echo as long as the
    sound's round trip to the distance the "distance" signal gives at that instant.

    A distance beyond `RANGE_MAX`, or a NaN sample (no measurement), gives the module's
    no-echo pulse, which the driver reports as DataError. Wire it with `wire`.
    """

    def __init__(
        self,
        *,
        signals: Mapping[str, SignalModel] | None = None,
        clock: Clock = time.time,
        speed_of_sound: float = SPEED_OF_SOUND,
    ) -> None:
        unknown = set(signals or {}) - {"distance"}
        if unknown:
            raise ValueError(f"hcsr04 emulator has no quantity {sorted(unknown)}")
        self.signal: SignalModel = (signals or {}).get("distance", Constant(1.0))
        self.clock = clock
        self.speed_of_sound = speed_of_sound
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"HCSR04Emulator({self.signal!r})"

    def set_signal(self, model: SignalModel) -> None:
        with self._lock:
            self.signal = model

    def echo_pulse(self) -> float:
        """Seconds of ECHO high for a ping now."""
        with self._lock:
            distance = self.signal.sample(self.clock())
        if math.isnan(distance) or distance > RANGE_MAX:
            return NO_ECHO_PULSE
        return echo_time(max(distance, 0.0), self.speed_of_sound)

    def wire(self, factory: MockFactory, *, trigger: int, echo: int) -> EchoTriggerPin:
        """Put this emulator on `trigger` and `echo` of a MockFactory, before the driver opens.

        A trigger pin left by an earlier emulated HC-SR04 is taken over; any other pin
        already on `trigger` cannot echo, which is a SensorSettingsError.
        """
        from edgetwin.hardware import gpio

        what = f"hcsr04 emulator on GPIO{trigger} / GPIO{echo}"
        with gpio.gpio_errors(what):
            echo_pin = factory.pin(echo, pin_class=gpio.TimedEchoPin)
            trigger_pin = factory.pin(
                trigger,
                pin_class=gpio.EchoTriggerPin,
                echo_pin=echo_pin,
                responder=self.echo_pulse,
            )
        if not isinstance(trigger_pin, gpio.EchoTriggerPin):
            raise SensorSettingsError(
                f"{what}: GPIO{trigger} is already a {type(trigger_pin).__name__} on this "
                "emulated board and cannot echo; emulate the HC-SR04 on other pins"
            )
        return trigger_pin


def open_hcsr04(
    backend: Backend,
    placement: Placement,
    *,
    signals: Mapping[str, SignalModel],
    signals_given: bool,
) -> Sensor:
    """Open an HC-SR04 at `placement.pins` "trigger" and "echo" (both required).

    Options: "max_distance" in m (default and limit 4.0) and "samples" (pings per reading,
    1..15, default 3). On an emulated back end an `HCSR04Emulator` following the "distance"
    signal answers on the pins.
    """
    from edgetwin.hardware import gpio

    pins = gpio.resolve_pins("hcsr04", ("trigger", "echo"), placement.pins)
    options = DriverOptions("hcsr04", placement.options)
    max_distance = options.number("max_distance", DEFAULT_MAX_DISTANCE, lo=0.05, hi=RANGE_MAX)
    samples = options.integer("samples", DEFAULT_SAMPLES, lo=1, hi=MAX_SAMPLES)
    options.check_all_read()
    factory = backend.pin_factory()
    trigger_pin: EchoTriggerPin | None = None
    emulator: HCSR04Emulator | None = None
    if isinstance(backend, EmulatedBackend):
        emulator = HCSR04Emulator(signals=signals, clock=backend.clock)
        trigger_pin = emulator.wire(factory, trigger=pins["trigger"], echo=pins["echo"])
    sensor = HCSR04(
        factory,
        trigger=pins["trigger"],
        echo=pins["echo"],
        max_distance=max_distance,
        samples=samples,
        backend=backend.kind,
        clock=backend.clock,
    ).open()
    if trigger_pin is not None and emulator is not None:
        # Only now that the pins are ours: a pin left by an earlier emulator answers for this one.
        trigger_pin.echo_pin = factory.pin(pins["echo"])
        trigger_pin.responder = emulator.echo_pulse
    return sensor


DRIVER: Final = DriverInfo(
    name="hcsr04",
    interface="gpio",
    quantities=QUANTITIES,
    description="HC-SR04 ultrasonic distance sensor on two GPIOs (trigger, echo)",
    open=open_hcsr04,
    pins=("trigger", "echo"),
)
