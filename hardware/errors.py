"""One root exception for the hardware layer; each also inherits the matching built-in."""


class HardwareError(Exception):
    """Root of every error raised by `hardware`."""


class BusError(HardwareError, OSError):
    """The bus transfer itself failed (EIO, NACK, ...); the chip may still be there."""


class SensorMissingError(HardwareError, OSError):
    """Nothing answers at the configured address or pin (ENXIO, unplugged)."""


class ChipIdError(HardwareError, ValueError):
    """Something answers, but it is not the chip this driver expects."""


class DataError(HardwareError, ValueError):
    """The chip answered with data that fails its own checks (CRC, stuck bits, out of range)."""


class UnknownDriverError(HardwareError, LookupError):
    """No driver is registered under the requested name."""


class SensorTimeoutError(HardwareError, TimeoutError):
    """The chip answers but did not finish a conversion or NVM copy within its datasheet bound."""


class SettingsError(HardwareError, ValueError):
    """A device asked for with settings its driver cannot have; raised before any transfer."""


class SensorSettingsError(SettingsError):
    """A sensor asked for with settings its driver cannot have (address, quantities)."""


class OutputSettingsError(SettingsError):
    """An output asked for with settings its driver cannot have (pin, channel, safe value)."""


class OutputRangeError(HardwareError, ValueError):
    """A value outside the range an output declares; refused, never clamped, and nothing is
    written to the hardware."""
