"""Outputs on the Pi's own GPIO pins through gpiozero: on/off (a relay, an LED) and PWM (a fan),
and the emulated load on a mock pin that shows what the pin does.

gpiozero is imported when an output is opened, not with this module: the registry imports
every driver, and validating a desired value must not cost gpiozero's 0.2 s import.

What a released pin does matters for outputs, so here it is, for gpiozero 2 with lgpio (the
default on every Pi): `close()` drives the safe value, then closes the gpiozero device, which
gives the line back as an input with no pull (`LGPIOPin.close`: `gpio_claim_input(...,
SET_PULL_NONE)`). From then on only the board holds the load: an output whose load must stay
off after the agent stops needs a pull resistor to its off level (pull-down for an active-high
input, pull-up for an active-low one; most relay modules with active-low inputs have one). A
PWM pin stops pulsing first and is low when released, which is off for the active-high loads
`pwm_output` drives; it cannot hold a duty cycle above 0 without the process, so a load that
must keep running uncontrolled belongs on a PCA9685 channel, which keeps its registers.

gpiozero's mock pins model the same: a released `MockPin` keeps its last level as an input
(a line held by its pull resistor), a released `MockPWMPin` drops to 0.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Final, Self

from edgetwin.hardware.backends import Backend, EmulatedBackend
from edgetwin.hardware.drivers import OptionValue
from edgetwin.hardware.errors import HardwareError, OutputSettingsError
from edgetwin.hardware.output import (
    DIGITAL_RANGE,
    DUTY_RANGE,
    Output,
    OutputDriverInfo,
    OutputKind,
    OutputOptions,
    OutputPlacement,
    OutputSpec,
    check_pin,
)
from edgetwin.hardware.sensor import BackendKind

if TYPE_CHECKING:
    from gpiozero import Factory
    from gpiozero.pins.mock import MockFactory, MockPin

DEFAULT_PWM_FREQUENCY: Final = 100.0
"""Hz; gpiozero's PWMOutputDevice default. A 4-wire PC fan wants 25 kHz, which software PWM
cannot give; a fan switched by a MOSFET is happy at 100 Hz."""

PWM_FREQUENCY_RANGE: Final = (1.0, 10_000.0)
"""Hz; lgpio's software PWM (`tx_pwm`) takes 0.1..10000 Hz, and below 1 Hz it is a blinker."""


# -- what each driver accepts, without hardware ------------------------------------------------


def digital_spec(options: Mapping[str, OptionValue]) -> OutputSpec:
    parsed = OutputOptions("digital_output", options)
    active_high = parsed.flag("active_high", True)
    safe = parsed.safe_value(DIGITAL_RANGE, 0.0)
    parsed.check_all_read()
    return OutputSpec(DIGITAL_RANGE, safe, {"active_high": active_high, "safe_value": safe})


def pwm_spec(options: Mapping[str, OptionValue]) -> OutputSpec:
    parsed = OutputOptions("pwm_output", options)
    lo, hi = PWM_FREQUENCY_RANGE
    frequency = parsed.number("frequency", DEFAULT_PWM_FREQUENCY, lo=lo, hi=hi)
    safe = parsed.safe_value(DUTY_RANGE, 0.0)
    parsed.check_all_read()
    return OutputSpec(DUTY_RANGE, safe, {"frequency": frequency, "safe_value": safe})


# -- the drivers -------------------------------------------------------------------------------


class _GPIOOutput(Output):
    """One gpiozero output device on one pin, built by `_build` at `open()`."""

    default_name: ClassVar[str]

    def __init__(
        self,
        pin_factory: Factory,
        pin: int,
        *,
        spec: OutputSpec,
        backend: BackendKind,
        name: str | None,
    ) -> None:
        super().__init__(
            value_range=spec.value_range,
            safe_value=spec.safe_value,
            backend=backend,
            name=name or f"{self.driver_name} on GPIO{pin}",
        )
        self.pin = pin
        self._factory = pin_factory
        self._device: Any = None

    def open(self) -> Self:
        """Claim the pin as an output already at the safe value; OutputSettingsError if the pin
        is taken or invalid."""
        from edgetwin.hardware import gpio

        with self._lock, gpio.gpio_errors(self.name, OutputSettingsError):
            if self._device is None:
                self._device = self._build()
                self.applied = float(self._device.value)
        return self

    @abstractmethod
    def _build(self) -> Any:
        """Make the gpiozero device on `self.pin`, at the safe value."""

    def _open_device(self) -> Any:
        if self._device is None:
            raise HardwareError(f"{self.name} is not open")
        return self._device

    def _write(self, value: float) -> float:
        from edgetwin.hardware import gpio

        device = self._open_device()
        with gpio.gpio_errors(self.name, OutputSettingsError):
            device.value = value
            return float(device.value)

    def _read(self) -> float:
        from edgetwin.hardware import gpio

        device = self._open_device()
        with gpio.gpio_errors(self.name, OutputSettingsError):
            return float(device.value)

    def _release(self) -> None:
        device, self._device = self._device, None
        if device is not None:
            device.close()


class DigitalOutput(_GPIOOutput):
    """On or off through gpiozero's DigitalOutputDevice: a relay module, an LED, a buzzer.

    `active_high=False` for loads that are on when the pin is low (most relay modules with
    optocouplers): the value is the load's state, not the pin's. The device is created at the
    safe value (gpiozero's `initial_value`, set as the pin becomes an output), so opening never
    flashes the load on.
    """

    driver_name = "digital_output"
    kind = OutputKind.DIGITAL

    def __init__(
        self,
        pin_factory: Factory,
        pin: int,
        *,
        active_high: bool = True,
        safe_value: float = 0.0,
        backend: BackendKind = BackendKind.REAL,
        name: str | None = None,
    ) -> None:
        spec = digital_spec({"active_high": active_high, "safe_value": safe_value})
        super().__init__(pin_factory, pin, spec=spec, backend=backend, name=name)
        self.active_high = active_high

    def _build(self) -> Any:
        from gpiozero import DigitalOutputDevice

        return DigitalOutputDevice(
            self.pin,
            active_high=self.active_high,
            initial_value=bool(self.safe_value),
            pin_factory=self._factory,
        )


class PWMOutput(_GPIOOutput):
    """A duty cycle 0..1 through gpiozero's PWMOutputDevice (software PWM under lgpio).

    Active-high only: a PWM line is low whenever the PWM is stopped (closing, a crash of the
    process), which is off only for an active-high load. The duty applied is the one asked:
    gpiozero passes it to lgpio as a float, with no step to round to.
    """

    driver_name = "pwm_output"
    kind = OutputKind.PWM

    def __init__(
        self,
        pin_factory: Factory,
        pin: int,
        *,
        frequency: float = DEFAULT_PWM_FREQUENCY,
        safe_value: float = 0.0,
        backend: BackendKind = BackendKind.REAL,
        name: str | None = None,
    ) -> None:
        spec = pwm_spec({"frequency": frequency, "safe_value": safe_value})
        super().__init__(pin_factory, pin, spec=spec, backend=backend, name=name)
        self.frequency = frequency

    def _build(self) -> Any:
        from gpiozero import PWMOutputDevice

        return PWMOutputDevice(
            self.pin,
            active_high=True,
            initial_value=self.safe_value,
            frequency=self.frequency,
            pin_factory=self._factory,
        )

    def read_frequency(self) -> float:
        """The PWM frequency the pin runs at, in Hz, as the pin factory reports it."""
        from edgetwin.hardware import gpio

        with self._lock, gpio.gpio_errors(self.name, OutputSettingsError):
            self._check_open()
            return float(self._open_device().frequency)


# -- the emulated load -------------------------------------------------------------------------


class OutputPinEmulator:
    """The load wired to one mock output pin: what a relay coil, an LED or a fan's driver sees.

    `level` is the pin's level (0 or 1, or the fraction of each period a PWM pin is high),
    `power` the load's state after its polarity (`active_high`), `driven` whether the pin is
    still an output. Tests assert the physical state through these, not through the driver.
    """

    def __init__(self, pin: MockPin, *, active_high: bool = True) -> None:
        self.pin = pin
        self.active_high = active_high

    @classmethod
    def on_pin(
        cls, factory: MockFactory, pin: int, *, pwm: bool, active_high: bool = True, what: str
    ) -> Self:
        """The load on BCM `pin` of `factory`, made PWM-capable when `pwm`.

        A MockFactory fixes a pin's class when the pin is first used, so a pin once used
        without PWM (a sensor's input, a digital output) cannot become a PWM pin in the same
        back end: that, an invalid pin and a pin in use are OutputSettingsError.
        """
        from gpiozero.pins.mock import MockPin, MockPWMPin

        from edgetwin.hardware import gpio

        with gpio.gpio_errors(what, OutputSettingsError):
            try:
                mock_pin = factory.pin(pin, pin_class=MockPWMPin if pwm else MockPin)
            except ValueError as exc:  # MockFactory: "pin GPIOn is already in use as a ..."
                raise OutputSettingsError(f"{what}: {exc}") from exc
        return cls(mock_pin, active_high=active_high)

    def __repr__(self) -> str:
        return f"OutputPinEmulator({self.pin!r}, level={self.level}, driven={self.driven})"

    @property
    def level(self) -> float:
        return float(self.pin.state)

    @property
    def power(self) -> float:
        return self.level if self.active_high else 1.0 - self.level

    @property
    def driven(self) -> bool:
        return bool(self.pin.function == "output")

    @property
    def frequency(self) -> float | None:
        frequency = self.pin.frequency
        return None if frequency is None else float(frequency)

    def levels(self) -> list[float]:
        """Every level the pin has had since it was made, oldest first (gpiozero's record)."""
        return [float(state.state) for state in self.pin.states]


# -- opening through the registry --------------------------------------------------------------


def open_digital_output(
    backend: Backend, placement: OutputPlacement, *, name: str | None
) -> DigitalOutput:
    """Open a digital output at `placement.pin`; options "active_high", "safe_value".

    On an emulated back end an `OutputPinEmulator` is the load (`emulator_for` finds it).
    """
    pin = check_pin("digital_output", placement.pin)
    _refuse_i2c_placement("digital_output", placement)
    spec = digital_spec(placement.options)
    active_high = bool(spec.settings["active_high"])
    factory = backend.pin_factory()
    if isinstance(backend, EmulatedBackend):
        OutputPinEmulator.on_pin(
            factory, pin, pwm=False, active_high=active_high, what=f"digital_output on GPIO{pin}"
        )
    output = DigitalOutput(
        factory,
        pin,
        active_high=active_high,
        safe_value=spec.safe_value,
        backend=backend.kind,
        name=name,
    )
    return output.open()


def open_pwm_output(backend: Backend, placement: OutputPlacement, *, name: str | None) -> PWMOutput:
    """Open a PWM output at `placement.pin`; options "frequency" (Hz), "safe_value"."""
    pin = check_pin("pwm_output", placement.pin)
    _refuse_i2c_placement("pwm_output", placement)
    spec = pwm_spec(placement.options)
    factory = backend.pin_factory()
    if isinstance(backend, EmulatedBackend):
        OutputPinEmulator.on_pin(factory, pin, pwm=True, what=f"pwm_output on GPIO{pin}")
    output = PWMOutput(
        factory,
        pin,
        frequency=float(spec.settings["frequency"]),
        safe_value=spec.safe_value,
        backend=backend.kind,
        name=name,
    )
    return output.open()


def emulator_for(backend: EmulatedBackend, output: Output) -> OutputPinEmulator:
    """The emulated load on a GPIO `output`'s pin: the pin itself, seen from the circuit's
    side. TypeError for an output that is not on a GPIO pin."""
    if not isinstance(output, DigitalOutput | PWMOutput):
        raise TypeError(f"{output!r} is not on a GPIO pin")
    digital = isinstance(output, DigitalOutput)
    return OutputPinEmulator.on_pin(
        backend.pin_factory(),
        output.pin,
        pwm=not digital,
        active_high=output.active_high if isinstance(output, DigitalOutput) else True,
        what=output.name,
    )


def _refuse_i2c_placement(driver: str, placement: OutputPlacement) -> None:
    if placement.address is not None or placement.channel is not None:
        raise OutputSettingsError(f"{driver} is a GPIO output and takes no I2C address or channel")


DIGITAL_DRIVER: Final = OutputDriverInfo(
    name="digital_output",
    kind=OutputKind.DIGITAL,
    interface="gpio",
    description="on/off on one GPIO pin (relay module, LED) through gpiozero DigitalOutputDevice",
    value_range=DIGITAL_RANGE,
    default_safe_value=0.0,
    options=("active_high", "safe_value"),
    spec=digital_spec,
    open=open_digital_output,
)

PWM_DRIVER: Final = OutputDriverInfo(
    name="pwm_output",
    kind=OutputKind.PWM,
    interface="gpio",
    description="duty cycle on one GPIO pin (fan through a MOSFET) through gpiozero "
    "PWMOutputDevice",
    value_range=DUTY_RANGE,
    default_safe_value=0.0,
    options=("frequency", "safe_value"),
    spec=pwm_spec,
    open=open_pwm_output,
)
