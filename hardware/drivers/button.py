"""A contact on one GPIO input (push button, reed switch, door contact), debounced.

Wired the usual way, between the GPIO and GND with the SoC's internal pull-up (about 50 kΩ on
the BCM2835/BCM2711: "pull_up" true, the default), a closed contact reads low; with
"pull_up" false the contact goes to 3.3 V and the internal pull-down holds it low when open.

Mechanical contacts bounce: the line flips for a few milliseconds at every make and break
(tens of ms for worn or large switches). A level counts once it has held for the "debounce"
time (default 50 ms), the semantics of lgpio's debounce: a bounce shorter than that is never
reported, and a real change is reported `debounce` seconds after its last bounce. gpiozero's
`bounce_time` is passed on too: lgpio filters edges that way in its own thread, while gpiozero's
MockPin ignores it ("XXX Need to implement this", gpiozero/pins/mock.py), so the driver applies
the same rule itself, from edge times on its timer. On lgpio this adds up to one more debounce
period of latency to a change, which no door or button notices.

A read returns the settled level: when the line changed less than `debounce` ago the read
waits for it to settle (at most `debounce` of real time on hardware, none on an emulated back
end's virtual timer), and a line still bouncing after `SETTLE_PERIODS` debounce periods is a
DataError.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Final, Self

from edgetwin.hardware.backends import Backend, EmulatedBackend
from edgetwin.hardware.drivers import DriverInfo, Placement
from edgetwin.hardware.errors import DataError
from edgetwin.hardware.options import DriverOptions
from edgetwin.hardware.quantities import measured
from edgetwin.hardware.sensor import BackendKind, Clock, Sensor
from edgetwin.hardware.signals import SignalModel
from edgetwin.hardware.timing import RealTimer, Timer

if TYPE_CHECKING:
    from gpiozero import Button, Factory

DEFAULT_DEBOUNCE: Final = 0.05
"""Seconds; long enough for ordinary push buttons and reed switches (bounce of 1..20 ms), short
enough that a person pressing a button never notices."""

MAX_DEBOUNCE: Final = 1.0

SETTLE_PERIODS: Final = 10
"""A contact still changing after this many debounce periods is chattering (a failing reed
switch, a vibrating door), and a read reports that rather than waiting for ever."""

HOLD_TIME: Final = 0.1
"""Seconds; gpiozero's hold events are not used, but Button's hold thread waits this long
(1 s by default) before it notices close() while the contact is closed."""

QUANTITIES: Final = (measured("contact"),)


class Debouncer:
    """A line's level, believed only once it has held for `debounce` seconds.

    Fed with edges (`edge`) and asked how long until the latest level is believed
    (`remaining`); `stable` is the last believed level. Pure: times are whatever monotonic
    timer the caller uses.
    """

    def __init__(self, level: bool, debounce: float, now: float) -> None:
        if debounce < 0:
            raise ValueError(f"debounce must not be negative, got {debounce}")
        self.debounce = debounce
        self.stable = level
        self._level = level
        self._since = now

    def __repr__(self) -> str:
        return f"Debouncer(stable={self.stable}, level={self._level}, since={self._since})"

    def edge(self, level: bool, t: float) -> None:
        """The line is at `level` from time `t` on; a repeat of the current level is ignored."""
        if level == self._level:
            return
        self._settle(t)
        self._level = level
        self._since = t

    def remaining(self, now: float) -> float:
        """Seconds until the line's current level is believed; 0 once it is."""
        self._settle(now)
        if self._level == self.stable:
            return 0.0
        return max(self._since + self.debounce - now, 0.0)

    def _settle(self, now: float) -> None:
        if self._level != self.stable and now >= self._since + self.debounce:
            self.stable = self._level


class ContactButton(Sensor):
    """A debounced contact on one GPIO, through gpiozero's Button.

    `before_read` is called at the start of every read, before the pin is looked at: an
    emulated back end passes its emulator's `drive` so the pin shows the signal model at that
    moment; it is None on real hardware. `timer` times the debounce and must be the timer of
    whatever drives the pin: real time for real pins, the back end's timer for emulated ones.
    """

    driver_name = "button"
    quantities = QUANTITIES

    def __init__(
        self,
        pin_factory: Factory,
        pin: int,
        *,
        debounce: float = DEFAULT_DEBOUNCE,
        pull_up: bool = True,
        backend: BackendKind = BackendKind.REAL,
        clock: Clock = time.time,
        timer: Timer | None = None,
        before_read: Callable[[], None] | None = None,
    ) -> None:
        if not 0 <= debounce <= MAX_DEBOUNCE:
            raise ValueError(f"debounce must be within 0..{MAX_DEBOUNCE} s, got {debounce}")
        super().__init__(backend, clock)
        self.pin = pin
        self.debounce = debounce
        self.pull_up = pull_up
        self._factory = pin_factory
        self._timer: Timer = timer if timer is not None else RealTimer()
        self._before_read = before_read
        self._device: Button | None = None
        self._debouncer: Debouncer | None = None
        self._lock = threading.Lock()
        # Separate from _lock: edge callbacks run inside a read when the emulator drives the pin.
        self._edges = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"ContactButton(pin={self.pin}, debounce={self.debounce}, pull_up={self.pull_up}, "
            f"backend={self.status.backend.value})"
        )

    def open(self) -> Self:
        """Claim the pin; SensorSettingsError if it is taken, invalid or has a fixed pull
        that contradicts `pull_up` (GPIO2 and GPIO3 carry the I2C pull-ups)."""
        with self._lock:
            self._open_device()
        return self

    def close(self) -> None:
        with self._lock:
            device, self._device, self._debouncer = self._device, None, None
        if device is not None:
            device.close()

    def _open_device(self) -> tuple[Button, Debouncer]:
        from gpiozero import Button

        from edgetwin.hardware import gpio

        if self._device is not None and self._debouncer is not None:
            return self._device, self._debouncer
        with gpio.gpio_errors(self._where()):
            device = Button(
                self.pin,
                pull_up=self.pull_up,
                bounce_time=self.debounce or None,
                hold_time=HOLD_TIME,
                pin_factory=self._factory,
            )
        try:
            if self._before_read is not None:
                self._before_read()  # an emulated contact starts where its signal is
            with gpio.gpio_errors(self._where()):
                level = bool(device.is_active)
        except BaseException:
            device.close()
            raise
        # The level found at open counts as settled: nobody saw it change.
        debouncer = Debouncer(level, self.debounce, self._timer.monotonic())
        self._device, self._debouncer = device, debouncer
        device.when_activated = self._closed
        device.when_deactivated = self._opened
        return device, debouncer

    def _closed(self) -> None:
        self._edge(True)

    def _opened(self) -> None:
        self._edge(False)

    def _edge(self, level: bool) -> None:
        with self._edges:
            if self._debouncer is not None:
                self._debouncer.edge(level, self._timer.monotonic())

    def _measure(self) -> Mapping[str, float]:
        from edgetwin.hardware import gpio

        with self._lock:
            device, debouncer = self._open_device()
            if self._before_read is not None:
                self._before_read()
            limit = SETTLE_PERIODS * self.debounce
            deadline = self._timer.monotonic() + limit
            while True:
                with gpio.gpio_errors(self._where()):
                    level = bool(device.is_active)
                now = self._timer.monotonic()
                with self._edges:
                    # An edge the pin library filtered away (or a callback still on its way)
                    # shows as a level that differs from the last edge seen: count it from now.
                    debouncer.edge(level, now)
                    wait = debouncer.remaining(now)
                    stable = debouncer.stable
                if wait <= 0:
                    return {"contact": 1.0 if stable else 0.0}
                if now + wait > deadline:
                    raise DataError(
                        f"{self._where()}: contact still bouncing after {limit:.2f} s "
                        f"({SETTLE_PERIODS} debounce periods): chattering switch or noise"
                    )
                self._timer.sleep(wait)

    def _where(self) -> str:
        return f"button on GPIO{self.pin}"


def open_button(
    backend: Backend,
    placement: Placement,
    *,
    signals: Mapping[str, SignalModel],
    signals_given: bool,
) -> Sensor:
    """Open a contact at `placement.pins["pin"]` (required: no pin is the obvious one).

    Options: "debounce" in seconds (0..1, default 0.05) and "pull_up" (default true). On an
    emulated back end the pin is driven by a `DigitalOutputEmulator` following the "contact"
    signal (1.0 = closed), wired as `pull_up` says.
    """
    from edgetwin.hardware import gpio

    pin = gpio.resolve_pins("button", ("pin",), placement.pins)["pin"]
    options = DriverOptions("button", placement.options)
    debounce = options.number("debounce", DEFAULT_DEBOUNCE, lo=0.0, hi=MAX_DEBOUNCE)
    pull_up = options.flag("pull_up", True)
    options.check_all_read()
    factory = backend.pin_factory()
    before_read: Callable[[], None] | None = None
    if isinstance(backend, EmulatedBackend):
        # A closed contact pulls a pulled-up input to GND, a pulled-down one to 3.3 V.
        emulator = gpio.DigitalOutputEmulator.on_pin(
            factory,
            pin,
            signals["contact"],
            backend.clock,
            active_low=pull_up,
            what=f"button on GPIO{pin}",
        )
        before_read = emulator.drive
    sensor = ContactButton(
        factory,
        pin,
        debounce=debounce,
        pull_up=pull_up,
        backend=backend.kind,
        clock=backend.clock,
        timer=backend.timer,
        before_read=before_read,
    )
    return sensor.open()


DRIVER: Final = DriverInfo(
    name="button",
    interface="gpio",
    quantities=QUANTITIES,
    description="Contact input (push button, reed switch) on one GPIO, debounced",
    open=open_button,
    pins=("pin",),
)
