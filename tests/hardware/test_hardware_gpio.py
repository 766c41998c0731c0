"""GPIO drivers (PIR, button, HC-SR04) on gpiozero MockFactory pins, directly and through the
registry. The PIR and HC-SR04 run on gpiozero's background threads in real time, so their
tests use high sample rates, one sample per reading and few examples."""

from __future__ import annotations

import errno
import math
import re
import time
from collections.abc import Iterator

import pytest
from gpiozero import DistanceSensor, MotionSensor
from gpiozero.pins.mock import MockFactory, MockPin
from hypothesis import given, settings
from hypothesis import strategies as st

from edgetwin.hardware import Health, open_sensor
from edgetwin.hardware.backends import EmulatedBackend
from edgetwin.hardware.drivers.button import ContactButton, Debouncer
from edgetwin.hardware.drivers.hcsr04 import (
    GPIOZERO_SPEED_OF_SOUND,
    HCSR04,
    NO_ECHO_PULSE,
    SPEED_OF_SOUND,
    HCSR04Emulator,
    distance_from_echo,
    echo_time,
)
from edgetwin.hardware.drivers.pir import PIRMotion
from edgetwin.hardware.errors import BusError, DataError, SensorSettingsError, SensorTimeoutError
from edgetwin.hardware.gpio import SampleTap, check_gpiozero, resolve_pins
from edgetwin.hardware.options import DriverOptions
from edgetwin.hardware.sensor import BackendKind
from edgetwin.hardware.signals import Constant
from edgetwin.hardware.timing import ManualClock, RealTimer, VirtualTimer

# gpiozero's DistanceSensor warns that software timing is less accurate than pigpio's, and its
# thread warns on a missed echo: both expected here.
pytestmark = [
    pytest.mark.filterwarnings("ignore::gpiozero.exc.PWMSoftwareFallback"),
    pytest.mark.filterwarnings("ignore::gpiozero.exc.DistanceSensorNoEcho"),
]


class Schedule:
    """A signal that is `values[i]` from `times[i]` on (epoch seconds), for ManualClock tests."""

    def __init__(self, *steps: tuple[float, float]) -> None:
        self.steps = steps

    def sample(self, t: float) -> float:
        value = math.nan
        for start, step_value in self.steps:
            if t >= start:
                value = step_value
        return value


@pytest.fixture
def factory() -> Iterator[MockFactory]:
    factory = MockFactory(pin_class=MockPin)
    yield factory
    factory.close()


# -- shared pieces ---------------------------------------------------------------------------


def test_resolve_pins_defaults_and_errors() -> None:
    assert resolve_pins("pir", ("pin",), {}, {"pin": 17}) == {"pin": 17}
    assert resolve_pins("pir", ("pin",), {"pin": 4}, {"pin": 17}) == {"pin": 4}
    with pytest.raises(SensorSettingsError, match="hcsr04 needs a GPIO pin for 'echo'"):
        resolve_pins("hcsr04", ("trigger", "echo"), {"trigger": 23})
    with pytest.raises(SensorSettingsError, match="no pin role 'echo'; roles: pin"):
        resolve_pins("pir", ("pin",), {"pin": 4, "echo": 5})
    with pytest.raises(SensorSettingsError, match=r"0\.\.27"):
        resolve_pins("pir", ("pin",), {"pin": 40})
    with pytest.raises(SensorSettingsError, match="must differ"):
        resolve_pins("hcsr04", ("trigger", "echo"), {"trigger": 23, "echo": 23})


def test_driver_options_are_checked_by_name() -> None:
    options = DriverOptions("button", {"debounce": 0.02, "pull_up": False})
    assert options.number("debounce", 0.05, lo=0, hi=1) == 0.02
    assert options.flag("pull_up", True) is False
    options.check_all_read()
    with pytest.raises(SensorSettingsError, match="button option 'debounce' must be a number"):
        DriverOptions("button", {"debounce": "fast"}).number("debounce", 0.05, lo=0, hi=1)
    with pytest.raises(SensorSettingsError, match=r"within 0\.\.1"):
        DriverOptions("button", {"debounce": 2}).number("debounce", 0.05, lo=0, hi=1)
    with pytest.raises(SensorSettingsError, match="true or false"):
        DriverOptions("button", {"pull_up": 1}).flag("pull_up", True)
    with pytest.raises(SensorSettingsError, match="integer"):
        DriverOptions("hcsr04", {"samples": 2.5}).integer("samples", 3, lo=1, hi=15)
    typo = DriverOptions("button", {"debounse": 0.1})
    typo.number("debounce", 0.05, lo=0, hi=1)
    with pytest.raises(SensorSettingsError, match="no option 'debounse'; known: debounce"):
        typo.check_all_read()


def test_sample_tap_waits_only_for_samples_started_after_the_mark() -> None:
    tap = SampleTap()
    old = tap.begin()
    mark = tap.mark()
    tap.record(old, 1.0)  # started before the mark: stale
    assert tap.wait_fresh(mark, 1, timeout=0.01) is None
    new = tap.begin()
    tap.record(new, None)  # a failed sample does not count
    assert tap.wait_fresh(mark, 1, timeout=0.01) is None
    tap.record(tap.begin(), 0.25)
    assert tap.wait_fresh(mark, 1, timeout=0.01) == [0.25]


# -- debouncing, pure ------------------------------------------------------------------------


def test_debouncer_ignores_a_bounce_shorter_than_the_debounce_time() -> None:
    d = Debouncer(level=False, debounce=0.05, now=0.0)
    d.edge(True, 1.0)
    d.edge(False, 1.01)  # back after 10 ms
    assert d.remaining(2.0) == 0.0
    assert d.stable is False


def test_debouncer_reports_a_change_once_it_has_held() -> None:
    d = Debouncer(level=False, debounce=0.05, now=0.0)
    d.edge(True, 1.0)
    d.edge(False, 1.002)
    d.edge(True, 1.004)  # bouncing on the way in: the last edge counts
    assert d.remaining(1.01) == pytest.approx(0.044)
    assert d.stable is False
    assert d.remaining(1.054) == 0.0
    assert d.stable is True


def test_debouncer_keeps_a_change_seen_only_between_reads() -> None:
    d = Debouncer(level=False, debounce=0.05, now=0.0)
    d.edge(True, 1.0)
    d.edge(False, 3.0)  # held 2 s, then released: the press was real
    assert d.stable is True
    assert d.remaining(3.01) > 0
    assert d.remaining(3.06) == 0.0
    assert d.stable is False


# -- button ----------------------------------------------------------------------------------


def test_button_bounce_shorter_than_debounce_does_not_change_the_state(
    factory: MockFactory,
) -> None:
    timer = VirtualTimer()
    pin = factory.pin(5)
    button = ContactButton(factory, 5, debounce=0.05, timer=timer).open()
    assert button.read().values["contact"].value == 0.0  # pulled up: open
    pin.drive_low()  # contact closes...
    timer.sleep(0.01)
    pin.drive_high()  # ...and springs open again 10 ms later: a bounce
    assert button.read().values["contact"].value == 0.0
    pin.drive_low()
    before = timer.monotonic()
    assert button.read().values["contact"].value == 1.0  # held: reported once settled
    assert timer.monotonic() - before == pytest.approx(0.05)
    button.close()


def test_button_debounce_in_real_time(factory: MockFactory) -> None:
    pin = factory.pin(6)
    button = ContactButton(factory, 6, debounce=0.02, timer=RealTimer()).open()
    pin.drive_low()
    time.sleep(0.005)
    pin.drive_high()
    assert button.read().values["contact"].value == 0.0
    pin.drive_low()
    start = time.monotonic()
    assert button.read().values["contact"].value == 1.0
    assert time.monotonic() - start >= 0.015  # it waited for the contact to settle
    button.close()


class ChatteringTimer(VirtualTimer):
    """Time that flips a pin whenever someone waits on it: a switch that never settles."""

    def __init__(self, pin: MockPin) -> None:
        super().__init__()
        self.pin = pin

    def sleep(self, seconds: float) -> None:
        super().sleep(seconds * 0.9)
        # A glitch just before the contact would have counted as settled.
        self.pin.drive_high()
        self.pin.drive_low()


def test_button_chattering_is_a_data_error(factory: MockFactory) -> None:
    pin = factory.pin(12)
    button = ContactButton(factory, 12, debounce=0.05, timer=ChatteringTimer(pin)).open()
    pin.drive_low()
    with pytest.raises(DataError, match="still bouncing"):
        button.read()
    button.close()


def test_button_pull_down_wiring(factory: MockFactory) -> None:
    pin = factory.pin(13)
    button = ContactButton(factory, 13, pull_up=False, timer=VirtualTimer()).open()
    assert button.read().values["contact"].value == 0.0
    pin.drive_high()  # contact to 3.3 V
    assert button.read().values["contact"].value == 1.0
    button.close()


def test_button_close_releases_the_pin(factory: MockFactory) -> None:
    first = ContactButton(factory, 16, timer=VirtualTimer()).open()
    with pytest.raises(SensorSettingsError, match="button on GPIO16"):
        ContactButton(factory, 16, timer=VirtualTimer()).open()
    first.close()
    ContactButton(factory, 16, timer=VirtualTimer()).open().close()


@pytest.mark.parametrize(("pin", "pull_up"), [(20, True), (21, False)])
def test_button_through_the_registry_follows_its_signal(pin: int, pull_up: bool) -> None:
    clock = ManualClock(1000.0)
    with EmulatedBackend(clock=clock) as backend:
        button = open_sensor(
            "button",
            backend=backend,
            pins={"pin": pin},
            options={"pull_up": pull_up, "debounce": 0.02},
            signals={"contact": Schedule((0.0, 1.0), (1010.0, 0.0), (1020.0, math.nan))},
        )
        assert button.read().values["contact"].value == 1.0
        clock.advance(10.0)
        assert button.read().values["contact"].value == 0.0
        clock.advance(10.0)
        with pytest.raises(BusError, match="dropout") as info:
            button.read()
        assert info.value.errno == errno.EIO
        assert button.status.health is Health.FAULTED
        button.close()


def test_button_settings_errors() -> None:
    with EmulatedBackend() as backend:
        with pytest.raises(SensorSettingsError, match="button needs a GPIO pin for 'pin'"):
            open_sensor("button", backend=backend)
        with pytest.raises(SensorSettingsError, match="no option 'bounce'"):
            open_sensor("button", backend=backend, pins={"pin": 5}, options={"bounce": 0.1})
        with pytest.raises(SensorSettingsError, match="fixed pull"):
            # GPIO2 carries the board's I2C pull-up: it cannot be pulled down.
            open_sensor("button", backend=backend, pins={"pin": 2}, options={"pull_up": False})


# -- PIR -------------------------------------------------------------------------------------


def test_pir_reads_the_pin_after_the_read_began(factory: MockFactory) -> None:
    pin = factory.pin(17)
    pir = PIRMotion(factory, 17, sample_rate=200).open()
    assert pir.read().values["motion"].value == 0.0  # pulled down
    pin.drive_high()
    assert pir.read().values["motion"].value == 1.0  # never a sample from before the change
    pin.drive_low()
    assert pir.read().values["motion"].value == 0.0
    pir.close()


def test_pir_through_the_registry_default_pin() -> None:
    clock = ManualClock(1000.0)
    with EmulatedBackend(clock=clock) as backend:
        pir = open_sensor(
            "pir",
            backend=backend,
            options={"sample_rate": 200},
            signals={"motion": Schedule((0.0, 0.0), (1005.0, 1.0), (1010.0, math.nan))},
        )
        assert isinstance(pir, PIRMotion)
        assert pir.pin == 17
        assert pir.read().values["motion"].value == 0.0
        clock.advance(5.0)
        reading = pir.read().values["motion"]
        assert (reading.value, reading.unit) == (1.0, "bool")
        clock.advance(5.0)
        with pytest.raises(BusError, match="pir on GPIO17: no reading"):
            pir.read()
        with pytest.raises(SensorSettingsError, match="GPIO17"):
            open_sensor("pir", backend=backend)  # the pin is taken
        pir.close()


def test_pir_read_after_close_claims_the_pin_again(factory: MockFactory) -> None:
    pin = factory.pin(18)
    pir = PIRMotion(factory, 18, sample_rate=200).open()
    pir.close()
    assert pir.read().values["motion"].value == 0.0
    pin.drive_high()
    assert pir.read().values["motion"].value == 1.0
    pir.close()


def test_pir_sample_rate_option_is_checked() -> None:
    with EmulatedBackend() as backend, pytest.raises(SensorSettingsError, match="sample_rate"):
        open_sensor("pir", backend=backend, options={"sample_rate": 0})


# -- HC-SR04 ---------------------------------------------------------------------------------


def test_echo_time_and_back() -> None:
    assert echo_time(1.0) == pytest.approx(2 / 343.0)
    assert distance_from_echo(echo_time(1.0, GPIOZERO_SPEED_OF_SOUND)) == pytest.approx(1.0)
    assert distance_from_echo(NO_ECHO_PULSE) > 6.0  # beyond any max_distance


class Ranger:
    """An HC-SR04 emulator on two mock pins and the real driver on them."""

    def __init__(self, distance: float, *, max_distance: float = 1.0) -> None:
        self.clock = ManualClock()
        self.factory = MockFactory(pin_class=MockPin)
        self.emulator = HCSR04Emulator(signals={"distance": Constant(distance)}, clock=self.clock)
        self.emulator.wire(self.factory, trigger=23, echo=24)
        self.sensor = HCSR04(
            self.factory,
            trigger=23,
            echo=24,
            max_distance=max_distance,
            samples=1,
            backend=BackendKind.EMULATED,
            clock=self.clock,
        ).open()

    def close(self) -> None:
        self.sensor.close()
        self.factory.close()


@settings(deadline=None, max_examples=5, database=None)
@given(distance=st.floats(min_value=0.02, max_value=0.95))
def test_distance_round_trip(distance: float) -> None:
    ranger = Ranger(distance)
    try:
        measured = ranger.sensor.read().values["distance"].value
    finally:
        ranger.close()
    # gpiozero converts with 343.26 m/s where the emulated air carries sound at 343 m/s; the
    # echo edges carry the emulated times, so nothing else is lost.
    expected = distance * GPIOZERO_SPEED_OF_SOUND / SPEED_OF_SOUND
    assert measured == pytest.approx(expected, abs=1e-6)


def test_distance_beyond_max_is_no_echo() -> None:
    ranger = Ranger(1.5, max_distance=1.0)
    try:
        with pytest.raises(DataError, match=r"no echo within max_distance 1\.0 m"):
            ranger.sensor.read()
        ranger.emulator.set_signal(Constant(math.nan))  # the echo never came back
        with pytest.raises(DataError, match="no echo"):
            ranger.sensor.read()
        ranger.emulator.set_signal(Constant(0.5))
        assert ranger.sensor.read().values["distance"].value == pytest.approx(
            0.5 * GPIOZERO_SPEED_OF_SOUND / SPEED_OF_SOUND
        )
    finally:
        ranger.close()


def test_nothing_answering_the_trigger_times_out(factory: MockFactory) -> None:
    sensor = HCSR04(factory, trigger=5, echo=6, samples=1).open()
    try:
        with pytest.raises(SensorTimeoutError, match="fewer than 1 echoes"):
            sensor.read()
    finally:
        sensor.close()


def test_hcsr04_through_the_registry() -> None:
    with EmulatedBackend() as backend:
        with pytest.raises(SensorSettingsError, match="hcsr04 needs a GPIO pin for 'trigger'"):
            open_sensor("hcsr04", backend=backend)
        sensor = open_sensor(
            "hcsr04",
            backend=backend,
            pins={"trigger": 23, "echo": 24},
            options={"samples": 1, "max_distance": 2.0},
            signals={"distance": Constant(1.2)},
        )
        reading = sensor.read().values["distance"]
        assert reading.unit == "m"
        assert reading.value == pytest.approx(1.2 * GPIOZERO_SPEED_OF_SOUND / SPEED_OF_SOUND)
        sensor.close()
        # The same pins again after close: the emulator left there answers for the new sensor.
        again = open_sensor(
            "hcsr04",
            backend=backend,
            pins={"trigger": 23, "echo": 24},
            options={"samples": 1},
            signals={"distance": Constant(0.3)},
        )
        assert again.read().values["distance"].value == pytest.approx(
            0.3 * GPIOZERO_SPEED_OF_SOUND / SPEED_OF_SOUND
        )
        again.close()


def test_hcsr04_on_a_plain_pin_cannot_echo() -> None:
    with EmulatedBackend() as backend:
        backend.pin_factory().pin(23)  # already a plain MockPin on this board
        with pytest.raises(SensorSettingsError, match="cannot echo"):
            open_sensor("hcsr04", backend=backend, pins={"trigger": 23, "echo": 24})


def test_the_gpiozero_hook_the_taps_override_is_checked_at_import() -> None:
    check_gpiozero("2.0.1.post3", (MotionSensor, DistanceSensor))  # the installed one passes

    class Renamed:
        def _sample(self) -> float:
            return 0.0

    with pytest.raises(
        ImportError, match=re.escape("without `_read` on Renamed: install gpiozero>=2.0,<3")
    ):
        check_gpiozero("2.1", (MotionSensor, Renamed))
    with pytest.raises(ImportError, match=re.escape("found gpiozero 3.0: install")):
        check_gpiozero("3.0", (MotionSensor,))
