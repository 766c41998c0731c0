"""Passive infra-red motion sensor (HC-SR501 and alike) on one GPIO input, and its emulator.

The module's OUT pin is a 3.3 V push-pull output: high while it sees motion and for its hold
time after (HC-SR501 datasheet: "delay time" 5..200 s by the Tx potentiometer, then a 2.5 s
"block time" in which it cannot trigger). Its output never changes faster than that, so
gpiozero's MotionSensor sampling it at 10 Hz in a background thread loses nothing. After
power-up the HC-SR501 needs up to a minute to settle and may trigger falsely meanwhile.

A reading is one pin sample taken after `read()` was called (see `hardware.gpio.SampleTap`):
a read waits up to one sample period (0.1 s at the default 10 Hz) of real time, on a real or
an emulated back end alike.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Final, Self

from edgetwin.hardware.backends import Backend, EmulatedBackend
from edgetwin.hardware.drivers import DriverInfo, Placement
from edgetwin.hardware.errors import SensorTimeoutError
from edgetwin.hardware.options import DriverOptions
from edgetwin.hardware.quantities import measured
from edgetwin.hardware.sensor import BackendKind, Clock, Sensor
from edgetwin.hardware.signals import SignalModel

if TYPE_CHECKING:
    from gpiozero import Factory

    from edgetwin.hardware.gpio import TappedDevice

DEFAULT_PIN: Final = 17
"""BCM 17 (header pin 11): free of I2C, SPI and UART, next to 3.3 V and GND on pins 1 and 9."""

DEFAULT_SAMPLE_RATE: Final = 10.0
"""Hz; gpiozero's MotionSensor default. Ten times faster than the PIR's shortest pulse."""

MAX_SAMPLE_RATE: Final = 1000.0
"""Hz; a Python thread polling faster than this would mostly measure the GIL."""

READ_SLACK: Final = 0.25
"""Seconds added to two sample periods before a read gives up: thread scheduling on a busy
Pi Zero can delay gpiozero's sampling thread by tens of milliseconds."""

QUANTITIES: Final = (measured("motion", description="1 while the PIR output is high"),)


class PIRMotion(Sensor):
    """A PIR module's output on one GPIO, read through gpiozero's MotionSensor.

    Pulled down (gpiozero's MotionSensor default), so an unplugged module reads "no motion"
    rather than floating; nothing on a single digital line can tell an absent PIR from a quiet
    room. `before_read` is called at the start of every read, before the pin is sampled: an
    emulated back end passes its emulator's `drive` there so the pin shows the signal model at
    the moment of the read; it is None on real hardware.
    """

    driver_name = "pir"
    quantities = QUANTITIES

    def __init__(
        self,
        pin_factory: Factory,
        pin: int = DEFAULT_PIN,
        *,
        sample_rate: float = DEFAULT_SAMPLE_RATE,
        backend: BackendKind = BackendKind.REAL,
        clock: Clock = time.time,
        before_read: Callable[[], None] | None = None,
    ) -> None:
        if not 0 < sample_rate <= MAX_SAMPLE_RATE:
            raise ValueError(f"sample_rate must be within 0..{MAX_SAMPLE_RATE} Hz")
        super().__init__(backend, clock)
        self.pin = pin
        self.sample_rate = sample_rate
        self._factory = pin_factory
        self._before_read = before_read
        self._device: TappedDevice | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"PIRMotion(pin={self.pin}, backend={self.status.backend.value})"

    def open(self) -> Self:
        """Claim the pin and start gpiozero's sampling thread; SensorSettingsError if the pin
        is taken or invalid."""
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
                lambda tap: gpio.TappedMotionSensor(
                    self.pin,
                    tap=tap,
                    pull_up=False,
                    queue_len=1,
                    sample_rate=self.sample_rate,
                    pin_factory=self._factory,
                ),
            )
        return self._device

    def _measure(self) -> Mapping[str, float]:
        with self._lock:
            device = self._open_device()
            if self._before_read is not None:
                self._before_read()
            timeout = 2.0 / self.sample_rate + READ_SLACK
            samples = device.fresh(1, timeout)
        if samples is None:
            raise SensorTimeoutError(
                f"{self._where()}: gpiozero took no sample within {timeout:.2f} s"
            )
        return {"motion": 1.0 if samples[0] else 0.0}

    def _where(self) -> str:
        return f"pir on GPIO{self.pin}"


def open_pir(
    backend: Backend,
    placement: Placement,
    *,
    signals: Mapping[str, SignalModel],
    signals_given: bool,
) -> Sensor:
    """Open a PIR at `placement.pins["pin"]` (default GPIO17); option "sample_rate" in Hz.

    On an emulated back end the pin is driven by a `DigitalOutputEmulator` following the
    "motion" signal (1.0 = output high).
    """
    from edgetwin.hardware import gpio

    pin = gpio.resolve_pins("pir", ("pin",), placement.pins, {"pin": DEFAULT_PIN})["pin"]
    options = DriverOptions("pir", placement.options)
    sample_rate = options.number("sample_rate", DEFAULT_SAMPLE_RATE, lo=0.1, hi=MAX_SAMPLE_RATE)
    options.check_all_read()
    factory = backend.pin_factory()
    before_read: Callable[[], None] | None = None
    if isinstance(backend, EmulatedBackend):
        emulator = gpio.DigitalOutputEmulator.on_pin(
            factory, pin, signals["motion"], backend.clock, what=f"pir on GPIO{pin}"
        )
        before_read = emulator.drive
    sensor = PIRMotion(
        factory,
        pin,
        sample_rate=sample_rate,
        backend=backend.kind,
        clock=backend.clock,
        before_read=before_read,
    )
    return sensor.open()


DRIVER: Final = DriverInfo(
    name="pir",
    interface="gpio",
    quantities=QUANTITIES,
    description="PIR motion sensor (HC-SR501 and alike) on one GPIO input",
    open=open_pir,
    pins=("pin",),
)
