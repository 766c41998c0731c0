"""GPIO through gpiozero: what the GPIO drivers share, and mock pins that behave like circuits.

The GPIO drivers (`pir`, `button`, `hcsr04`) import this module when a sensor is opened, not
when `hardware` is imported: gpiozero takes about 0.2 s to import.

Every gpiozero device here is built with `pin_factory=` the back end's factory; gpiozero's
class-level `Device.pin_factory` is never used. On an emulated back end that factory is a
`MockFactory`, and the emulators below sit on its pins the way a sensor's circuit sits on a
real header: `DigitalOutputEmulator` drives an input pin from a binary signal model (a PIR's
OUT, a door contact), and `EchoTriggerPin` answers each trigger pulse with an echo pulse (an
ultrasonic ranger).

gpiozero's smoothed devices (MotionSensor, DistanceSensor) measure in a background thread and
hand back a running average of whatever that thread last saw. A driver's `read()` must describe
the world after it was called, so the devices here report each sample to a `SampleTap`, and the
drivers wait, with a deadline, for samples taken after the read began.
"""

from __future__ import annotations

import errno
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from importlib.metadata import version as distribution_version
from typing import Any, Final, Self

from gpiozero import DistanceSensor, MotionSensor
from gpiozero.exc import (
    BadPinFactory,
    BadQueueLen,
    BadWaitTime,
    GPIOPinInUse,
    GPIOPinMissing,
    GPIOZeroError,
    PinFixedPull,
    PinInvalidPin,
    PinInvalidPull,
    PinInvalidState,
)
from gpiozero.pins.mock import MockFactory, MockPin, MockTriggerPin, PinState

from edgetwin.hardware.errors import (
    BusError,
    HardwareError,
    SensorMissingError,
    SensorSettingsError,
    SettingsError,
)
from edgetwin.hardware.sensor import Clock
from edgetwin.hardware.signals import SignalModel

BCM_PINS: Final = range(28)
"""GPIO0..GPIO27: the BCM numbers on the 40-pin header of every Pi since the B+."""

_SETTINGS_ERRORS: Final = (
    GPIOPinInUse,
    GPIOPinMissing,
    PinInvalidPin,
    PinFixedPull,
    PinInvalidPull,
    PinInvalidState,
    BadQueueLen,
    BadWaitTime,
)
"""gpiozero errors that mean the configuration is wrong, not the hardware."""


# -- configuration -----------------------------------------------------------------------------


def resolve_pins(
    driver: str,
    roles: tuple[str, ...],
    pins: Mapping[str, int],
    defaults: Mapping[str, int] | None = None,
) -> dict[str, int]:
    """BCM pin numbers by role, from the placement or the driver's documented defaults.

    A role with neither is a SensorSettingsError naming it, as is an unknown role, a number
    that is not a header GPIO, or one pin given two roles.
    """
    unknown = sorted(set(pins) - set(roles))
    if unknown:
        raise SensorSettingsError(
            f"{driver} has no pin role {', '.join(map(repr, unknown))}; roles: {', '.join(roles)}"
        )
    resolved: dict[str, int] = {}
    for role in roles:
        pin = pins.get(role, (defaults or {}).get(role))
        if pin is None:
            raise SensorSettingsError(
                f"{driver} needs a GPIO pin for {role!r}: set pins.{role} to its BCM number"
            )
        if isinstance(pin, bool) or not isinstance(pin, int) or pin not in BCM_PINS:
            raise SensorSettingsError(
                f"{driver} pin {role!r} must be a BCM GPIO number 0..27, got {pin!r}"
            )
        resolved[role] = pin
    if len(set(resolved.values())) < len(resolved):
        raise SensorSettingsError(f"{driver} pins must differ, got {resolved}")
    return resolved


@contextmanager
def gpio_errors(
    what: str, settings_error: type[SettingsError] = SensorSettingsError
) -> Iterator[None]:
    """Translate gpiozero's and the OS's exceptions raised inside the block, once.

    A pin in use, out of range or with a fixed pull is a `settings_error` (SensorSettingsError
    for a sensor, OutputSettingsError for an output); no usable pin factory is a
    SensorMissingError; anything else from gpiozero or the OS is a BusError. `what` names the
    device, e.g. "pir on GPIO17".
    """
    try:
        yield
    except HardwareError:
        raise
    except _SETTINGS_ERRORS as exc:
        raise settings_error(f"{what}: {exc}") from exc
    except BadPinFactory as exc:
        raise SensorMissingError(errno.ENODEV, f"{what}: {exc}") from exc
    except OSError as exc:
        code = exc.errno if exc.errno is not None else errno.EIO
        raise BusError(code, f"{what}: {exc.strerror or exc}") from exc
    except GPIOZeroError as exc:
        raise BusError(errno.EIO, f"{what}: {exc}") from exc


# -- fresh samples from gpiozero's background threads ------------------------------------------


class SampleTap:
    """Samples a gpiozero smoothed device's background thread takes, numbered as they start.

    The device calls `begin()` as it starts a sample and `record()` with the result; a reader
    takes `mark()` and then `wait_fresh(mark, n)` for n results of samples that started after
    the mark, so none of them can predate the read. Results of None (gpiozero's "no reading",
    e.g. an echo that never came) are not kept.
    """

    HISTORY: Final = 64

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._started = 0
        self._samples: deque[tuple[int, float]] = deque(maxlen=self.HISTORY)

    def begin(self) -> int:
        with self._cond:
            self._started += 1
            return self._started

    def record(self, ticket: int, value: float | None) -> None:
        with self._cond:
            if value is not None:
                self._samples.append((ticket, float(value)))
            self._cond.notify_all()

    def mark(self) -> int:
        with self._cond:
            return self._started

    def wait_fresh(self, mark: int, count: int, timeout: float) -> list[float] | None:
        """The first `count` results of samples started after `mark`, waiting up to `timeout`
        seconds of real time for them; None if they did not come."""
        if not 1 <= count <= self.HISTORY:
            raise ValueError(f"count must be within 1..{self.HISTORY}, got {count}")
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                fresh = [value for ticket, value in self._samples if ticket > mark]
                if len(fresh) >= count:
                    return fresh[:count]
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)


def check_gpiozero(version: str, classes: tuple[type, ...]) -> None:
    """Refuse a gpiozero whose smoothed devices lost the hook the tapped devices below use.

    They override `_read`: the method gpiozero 2's sampling thread calls for every sample
    (`GPIOQueue.fill` -> `self.parent._read()`, gpiozero/mixins.py), which its own subclasses
    override the same way (MotionSensor, DistanceSensor). It is the subclassing point, not
    public API, so it is checked here, at import, by name: a gpiozero that renamed it fails
    with this message instead of a tap that never sees a sample.
    """
    major = version.split(".", 1)[0]
    missing = [c.__name__ for c in classes if not callable(getattr(c, "_read", None))]
    if major != "2" or missing:
        raise ImportError(
            f"edgetwin's GPIO drivers need gpiozero 2.x with `_read` on its smoothed devices; "
            f"found gpiozero {version}"
            + (f" without `_read` on {', '.join(missing)}" if missing else "")
            + ": install gpiozero>=2.0,<3"
        )


check_gpiozero(distribution_version("gpiozero"), (MotionSensor, DistanceSensor))

# gpiozero ships no type hints, so its classes are Any to mypy and subclassing them needs the
# ignore below. Attributes must be set before gpiozero's __init__: it freezes the attribute set.


class TappedMotionSensor(MotionSensor):  # type: ignore[misc]
    """gpiozero's MotionSensor, reporting every sample of its background thread to `tap`."""

    def __init__(self, pin: int, *, tap: SampleTap, **kwargs: Any) -> None:
        self._tap = tap
        super().__init__(pin, **kwargs)

    def _read(self) -> Any:
        ticket = self._tap.begin()
        value = super()._read()
        self._tap.record(ticket, value)
        return value


class TappedDistanceSensor(DistanceSensor):  # type: ignore[misc]
    """gpiozero's DistanceSensor, reporting every ping (distance / max_distance, or None for
    a missed echo) to `tap`."""

    def __init__(self, *, tap: SampleTap, **kwargs: Any) -> None:
        self._tap = tap
        super().__init__(**kwargs)

    def _read(self) -> Any:
        ticket = self._tap.begin()
        value = super()._read()
        self._tap.record(ticket, value)
        return value


class TappedDevice:
    """A tapped gpiozero device (above) and its `SampleTap`, made together: what a PIR or
    HC-SR04 driver holds from open() to close().

    `build(tap)` makes the device, which claims its pins and starts gpiozero's sampling thread;
    its errors are translated by `gpio_errors(what)`, and after one nothing is held. Not
    locked: the driver's lock covers it.
    """

    def __init__(self, what: str, build: Callable[[SampleTap], Any]) -> None:
        tap = SampleTap()
        with gpio_errors(what):
            self._device = build(tap)
        self._tap = tap

    def fresh(self, count: int, timeout: float) -> list[float] | None:
        """The first `count` results of samples that start from now on, waiting up to
        `timeout` seconds of real time; None if they did not come (`SampleTap.wait_fresh`)."""
        return self._tap.wait_fresh(self._tap.mark(), count, timeout)

    def close(self) -> None:
        """Stop the sampling thread and release the pins."""
        self._device.close()


# -- emulated circuits on mock pins ------------------------------------------------------------


class EmulatorPinFactory(MockFactory):  # type: ignore[misc]
    """The emulated back end's MockFactory: a pin an emulator has made is the pin, whatever
    class the emulator chose for it.

    MockFactory refuses to hand a gpiozero device (which asks for the factory's default class)
    a pin already made PWM-capable: `MockPWMPin` for a PWM output's load. Here a request that
    names no class gets the pin already there, so the emulator wired to a pin decides what it
    can do, as the circuit does on a real header; pins nobody made yet are plain `MockPin`s.
    """

    def __init__(self) -> None:
        super().__init__(pin_class=MockPin)

    def pin(self, name: Any, pin_class: Any = None, **kwargs: Any) -> Any:
        if pin_class is None:
            for _header, info in self.board_info.find_pin(name):
                existing = self.pins.get(info)
                if existing is not None:
                    return existing
        return super().pin(name, pin_class=pin_class, **kwargs)


class DigitalOutputEmulator:
    """A sensor's digital output wired to one mock input pin, following a binary signal.

    `drive()` samples `signal` on `clock` and drives the pin: high for a value of 0.5 or more
    (a model's 1.0), low below, inverted with `active_low` (a contact that pulls a pulled-up
    input to ground when closed). A NaN sample, the model's "no measurement", fails with a
    BusError, so the read that asked for it reports a fault. Drivers call `drive()` at the start
    of each read, so the pin shows the signal at the moment it is read.
    """

    def __init__(
        self,
        pin: MockPin,
        signal: SignalModel,
        clock: Clock,
        *,
        active_low: bool = False,
        what: str = "emulated output",
    ) -> None:
        self.pin = pin
        self.signal = signal
        self.clock = clock
        self.active_low = active_low
        self.what = what
        self._lock = threading.Lock()

    @classmethod
    def on_pin(
        cls,
        factory: MockFactory,
        pin: int,
        signal: SignalModel,
        clock: Clock,
        *,
        active_low: bool = False,
        what: str,
    ) -> Self:
        """The emulator driving BCM `pin` of `factory`; a pin gpiozero refuses (in use, no such
        pin) is a SensorSettingsError, as for a driver."""
        with gpio_errors(what):
            mock_pin = factory.pin(pin)
        return cls(mock_pin, signal, clock, active_low=active_low, what=what)

    def __repr__(self) -> str:
        return f"DigitalOutputEmulator({self.what!r}, active_low={self.active_low})"

    def drive(self) -> None:
        with self._lock:
            value = self.signal.sample(self.clock())
            if math.isnan(value):
                raise BusError(errno.EIO, f"{self.what}: no reading (signal dropout)")
            if (value >= 0.5) != self.active_low:
                self.pin.drive_high()
            else:
                self.pin.drive_low()


EchoResponder = Callable[[], float | None]
"""The echo pulse, in seconds, for a trigger pulse now; None for no pulse at all."""

ECHO_DELAY: Final = 1e-3
"""From the trigger pulse to the echo rising, as gpiozero's MockTriggerPin has it. A real
HC-SR04 first sends its eight 40 kHz cycles (0.2 ms); modules differ beyond that."""


class TimedEchoPin(MockPin):  # type: ignore[misc]
    """A mock input pin whose edges can carry the time the circuit made them.

    gpiozero stamps a MockPin's edge with monotonic() when the Python code driving it runs, so
    an echo timed by sleep() comes out 0.1 ms long on an idle machine and whole milliseconds
    long on a loaded one (1 ms is 17 cm of distance). `drive_at(level, t)` stamps the edge
    with `t` instead, the moment the emulated circuit switched, so the pulse width gpiozero
    measures is the emulated one however late the thread got to drive it.
    """

    # MockPin's own state, declared for mypy: gpiozero ships no type hints.
    _state: bool
    _last_change: float
    states: list[Any]

    def __init__(self, factory: Any, info: Any) -> None:
        self._stamp: float | None = None
        super().__init__(factory, info)

    def drive_at(self, level: bool, t: float) -> None:
        """Drive the pin to `level`, as of monotonic time `t`."""
        self._stamp = t
        try:
            if level:
                self.drive_high()
            else:
                self.drive_low()
        finally:
            self._stamp = None

    def _change_state(self, value: bool) -> bool:
        if self._stamp is None:
            return bool(super()._change_state(value))
        if self._state == value:
            return False
        # MockPin._change_state with the stamp in place of monotonic() (gpiozero 2.0).
        self._state = value
        self.states.append(PinState(self._stamp - self._last_change, value))
        self._last_change = self._stamp
        return True


class EchoTriggerPin(MockTriggerPin):  # type: ignore[misc]
    """A mock trigger pin wired to an ultrasonic ranger: every rising edge on it makes
    `echo_pin` go high for `responder()` seconds.

    gpiozero's MockTriggerPin echoes a fixed `echo_time`; here the pulse comes from
    `responder`, asked once per trigger (so a distance model is sampled at each ping, in the
    echo thread). With a `TimedEchoPin` as `echo_pin` the pulse is exact (see there); with a
    plain MockPin it is as long as sleep() makes it. Without a responder the pin behaves as
    MockTriggerPin does.
    """

    def __init__(
        self,
        factory: Any,
        info: Any,
        echo_pin: MockPin | None = None,
        echo_time: float = 0.04,
        responder: EchoResponder | None = None,
    ) -> None:
        super().__init__(factory, info, echo_pin=echo_pin, echo_time=echo_time)
        self.responder = responder

    def _echo(self) -> None:
        responder = self.responder
        pulse = responder() if responder is not None else self.echo_time
        echo_pin = self.echo_pin
        if pulse is None or echo_pin is None:
            return
        time.sleep(ECHO_DELAY)
        if isinstance(echo_pin, TimedEchoPin):
            rise = time.monotonic()
            echo_pin.drive_at(True, rise)
            time.sleep(pulse)
            echo_pin.drive_at(False, rise + pulse)
        else:
            echo_pin.drive_high()
            time.sleep(pulse)
            echo_pin.drive_low()
