"""The wire contract: every MQTT topic and payload that agents and gateways exchange.

This module is the only place topics are spelled and payloads are shaped; the gateway imports
it. Payloads are JSON objects carrying a schema version `v` so that readers can refuse what
they do not understand instead of guessing.

The payloads are msgspec Structs rather than pydantic models: the agent must stay within a
quarter of the bare paho-mqtt process's memory on a Pi, and pydantic with these models costs
it 12 MiB against msgspec's 1 MiB; encoding and decoding are also several times faster, which
the simulation engine needs at 50,000 devices. Constructing a Struct in code does not check
its constraints (our own code builds them); `decode`, `from_builtins` and `convert` do, and
every byte that crosses the wire in either direction goes through them.
"""

from __future__ import annotations

import math
import re
import string
import zlib
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Final, Literal, Self

import msgspec

SCHEMA_VERSION: Final = 1
DEFAULT_PREFIX: Final = "edgetwin"

# Underscore is allowed beside '-' because the original simulator names its devices
# device_000, device_001, ... and its consumers must keep working. Both characters are inert
# in MQTT topics; '+', '#', '/' and uppercase stay out (docs/design.md, 'Wire contract').
ID_PATTERN: Final = r"^[a-z0-9][a-z0-9_-]{0,63}$"
_ID_RE: Final = re.compile(ID_PATTERN)

DeviceId = Annotated[str, msgspec.Meta(pattern=ID_PATTERN)]
SensorName = Annotated[str, msgspec.Meta(pattern=ID_PATTERN)]
QuantityName = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
Unit = Annotated[str, msgspec.Meta(min_length=1, max_length=16)]
# Numbers must be JSON numbers: decoding is strict, so a "7" where 7 belongs is refused as the
# producer bug it is. JSON has no NaN or Infinity, and numbers too large for a double are
# refused by the decoder, so every float that arrives is finite.
Int = int
Float = float
# Every integer on the wire is bounded by what every reader can hold exactly: 2**53 - 1, the
# largest integer a JSON number keeps in a double (JavaScript consumers, jq), and far inside
# SQLite's INTEGER (int64), where the agent keeps seq and boot. A larger one is refused at
# decoding: unbounded, a single forged reading with seq 2**64 reached the agent through the
# twin document and killed it at its next commit (OverflowError), again at every start.
# At 1,000 readings a second a stream takes 285,000 years to reach the bound.
MAX_INT: Final = 2**53 - 1
NonNegative = Annotated[int, msgspec.Meta(ge=0, le=MAX_INT)]
Seq = Annotated[int, msgspec.Meta(ge=0, le=MAX_INT)]
JsonInt = Annotated[int, msgspec.Meta(ge=-MAX_INT, le=MAX_INT)]


class ContractError(ValueError):
    """A topic or payload that does not follow the contract."""


_ERROR_AT: Final = re.compile(r" - at (?P<key>`key` in )?`\$\.?(?P<path>[^`]*)`$")


def locate_error(exc: msgspec.ValidationError) -> tuple[str, list[str | int]]:
    """msgspec's reason, and where it lies as keys and indexes ([] for the whole document).

    A dict value's position reads `[...]` in msgspec's message: it is left out of the path.
    """
    message = str(exc)
    match = _ERROR_AT.search(message)
    if match is None:
        return message, []
    path: list[str | int] = [
        int(part) if part.isdigit() else part
        for part in re.findall(r"[^.\[\]]+", match["path"])
        if part != "..."
    ]
    return message[: match.start()], path


def check_id(value: str, what: str = "device id") -> str:
    if not _ID_RE.fullmatch(value):
        raise ContractError(f"invalid {what} {value!r}: expected {ID_PATTERN}")
    return value


class Source(StrEnum):
    """Where a reading came from; the only field that tells simulated data from real data."""

    REAL = "real"  # an agent reading real hardware
    EMULATED = "emulated"  # an agent reading an emulated chip (no hardware attached)
    SIMULATED = "simulated"  # the gateway standing in for a missing device or sensor


class Presence(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"


_ENCODER: Final = msgspec.json.Encoder()


class Struct(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A contract document: immutable, refusing unknown fields, checked when decoded."""

    _decoders: ClassVar[dict[type, msgspec.json.Decoder[Any]]] = {}

    def encode(self) -> bytes:
        return _ENCODER.encode(self)

    @classmethod
    def decode(cls, payload: bytes | str) -> Self:
        """Parse and validate; raises ContractError with the reason and where it lies."""
        decoder = cls._decoders.get(cls)
        if decoder is None:
            decoder = cls._decoders[cls] = msgspec.json.Decoder(cls)
        try:
            return decoder.decode(payload)  # type: ignore[no-any-return]
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise ContractError(f"invalid {cls.__name__} payload: {exc}") from exc

    @classmethod
    def from_builtins(cls, data: Any) -> Self:
        """Validate plain Python data (as parsed JSON or TOML) into this document."""
        try:
            return msgspec.convert(data, cls)
        except msgspec.ValidationError as exc:
            raise ContractError(f"invalid {cls.__name__}: {exc}") from exc

    def to_builtins(self) -> dict[str, Any]:
        """The document as JSON-ready dicts, lists and scalars."""
        return msgspec.to_builtins(self)  # type: ignore[no-any-return]

    def replace(self, **changes: Any) -> Self:
        return msgspec.structs.replace(self, **changes)


# Optional fields that are None stay off the wire (`omit_defaults`); `v` is the tag, which
# msgspec always writes and checks when present.
class _Payload(Struct, frozen=True, tag_field="v", tag=SCHEMA_VERSION, omit_defaults=True):
    pass


def _finite(value: float, what: str) -> None:
    # Code may build documents from computed floats; a NaN must not reach the wire as null.
    if not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number, not {value}")


class Value(Struct, frozen=True):
    value: Float
    unit: Unit

    def __post_init__(self) -> None:
        _finite(self.value, "value")


class Anomaly(Struct, frozen=True, omit_defaults=True):
    """Ground-truth label of an injected anomaly, so detectors downstream can be scored."""

    type: Annotated[str, msgspec.Meta(pattern=r"^[a-z_]{1,32}$")]
    id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    start: Float
    end: Float | None = None


class FaultLabel(_Payload, frozen=True):
    """Ground truth on the labels topic: one document when an injected fault starts and one
    when it ends, so a detector can be scored on the whole fault, not only on the readings
    that carry its `anomaly`. `sensor` is absent for a fault of the whole device (offline)."""

    event: Literal["start", "end"]
    id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    type: Annotated[str, msgspec.Meta(pattern=r"^[a-z_]{1,32}$")]
    device: DeviceId
    start: Float
    sensor: SensorName | None = None
    end: Float | None = None
    params: dict[str, float | JsonInt | str | list[str]] = msgspec.field(default_factory=dict)


class Telemetry(_Payload, frozen=True):
    """One reading of one sensor stream. `seq` counts per (device, sensor) across restarts."""

    device: DeviceId
    sensor: SensorName
    ts: Annotated[float, msgspec.Meta(gt=0, description="seconds since the Unix epoch, UTC")]
    seq: Seq
    source: Source
    values: Annotated[dict[QuantityName, Value], msgspec.Meta(min_length=1)]
    anomaly: Anomaly | None = None

    def __post_init__(self) -> None:
        _finite(self.ts, "ts")


class FlatReading(Struct, frozen=True):
    """The original simulator's payload, for consumers written against it (`[mqtt] payload =
    "flat"`): one object per device and period, no schema version, sequence or source.

    `timestamp` is seconds since the Unix epoch, as a float, like the original's
    `time.time()`; temperature (°C) and humidity (%RH) are rounded to two decimals, as the
    original's were.
    """

    device_id: DeviceId
    timestamp: Annotated[float, msgspec.Meta(gt=0)]
    temperature: Float
    humidity: Float

    QUANTITIES: ClassVar[frozenset[str]] = frozenset({"temperature", "humidity"})
    DECIMALS: ClassVar[int] = 2
    """The original's rounding, kept whatever the quantities' own resolution."""


# A random id an agent draws at every start. Unlike `boot`, which lives on the device's disk,
# no wiped or replaced disk can make a new life repeat an old one's.
SessionId = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{16,32}$")]


class Status(_Payload, frozen=True):
    """Presence, retained. Birth on connect, the broker's last will on loss.

    `boot` grows by one at every agent start, so a reader can discard a late last will of an
    earlier connection that arrives after a fresh birth. `session` is drawn at random at every
    start: a session not seen before is a new life of the device, whatever its boot (a wiped
    state directory, a re-imaged or replaced board start again at boot 1). Absent in the
    statuses of agents older than it, which boot alone orders.
    """

    device: DeviceId
    state: Presence
    ts: Float
    boot: NonNegative
    agent_version: str
    reason: Literal["birth", "shutdown", "connection_lost"]
    session: SessionId | None = None


class SensorBackend(StrEnum):
    REAL = "real"
    EMULATED = "emulated"
    AUTO = "auto"


PinRole = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
GpioPin = Annotated[int, msgspec.Meta(ge=0, le=53)]


class SensorSettings(Struct, frozen=True):
    """How one sensor is attached and polled; shared by agent config files and desired config.

    Every field is written out, defaults included: a desired document read by a person shows
    what the device will run.
    """

    driver: Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9_]{1,32}$")]
    interval: Annotated[
        float, msgspec.Meta(gt=0, le=86_400, description="seconds between readings")
    ] = 5.0
    bus: Annotated[int, msgspec.Meta(ge=0, le=255, description="I2C adapter number")] = 1
    address: Annotated[int, msgspec.Meta(ge=0x03, le=0x77, description="I2C address")] | None = None
    pins: Annotated[
        dict[PinRole, GpioPin], msgspec.Meta(description="GPIO pins (BCM numbers) by role")
    ] = msgspec.field(default_factory=dict)
    device: (
        Annotated[
            str,
            msgspec.Meta(
                pattern=r"^[A-Za-z0-9_.:-]{1,64}$",
                description="sysfs device, e.g. a 1-Wire id or thermal_zone0",
            ),
        ]
        | None
    ) = None
    options: Annotated[
        dict[PinRole, bool | JsonInt | float | str],
        msgspec.Meta(description="driver settings, e.g. an ADC gain"),
    ] = msgspec.field(default_factory=dict)
    backend: SensorBackend = SensorBackend.AUTO
    enabled: bool = True


OutputName = Annotated[str, msgspec.Meta(pattern=ID_PATTERN)]


class OutputSettings(Struct, frozen=True):
    """One output: where it is attached, its driver's options, and the value wanted now.

    What a driver takes (`pin` for a GPIO output; `bus`, `address` and `channel` for a channel
    of an I2C chip), the options it knows and the range of `value` are the output registry's
    (`hardware.registry.check_output`, `check_output_value`): a document that breaks them is
    refused whole, never clamped (agent/desired.py `check_outputs`). Every field is written
    out, as for sensors.
    """

    driver: Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9_]{1,32}$")]
    value: Annotated[
        float,
        msgspec.Meta(
            description="the value wanted: 0 or 1 for a digital output, a duty 0..1 for PWM"
        ),
    ]
    pin: Annotated[GpioPin, msgspec.Meta(description="GPIO output (BCM number)")] | None = None
    bus: Annotated[int, msgspec.Meta(ge=0, le=255, description="I2C adapter number")] = 1
    address: (
        Annotated[int, msgspec.Meta(ge=0x03, le=0x7F, description="I2C address of the chip")] | None
    ) = None
    channel: (
        Annotated[int, msgspec.Meta(ge=0, le=255, description="output of a multi-channel chip")]
        | None
    ) = None
    options: Annotated[
        dict[PinRole, bool | JsonInt | float | str],
        msgspec.Meta(description="driver settings, e.g. a PWM frequency or safe_value"),
    ] = msgspec.field(default_factory=dict)
    backend: SensorBackend = SensorBackend.AUTO

    def __post_init__(self) -> None:
        _finite(self.value, "value")


class DesiredConfig(_Payload, frozen=True):
    """What the gateway wants a device to run. Retained; only the gateway writes it.

    One version covers sensors and outputs. `outputs` is left off the wire when empty, so a
    document without outputs reads as it did before outputs existed.
    """

    device: DeviceId
    version: Annotated[int, msgspec.Meta(ge=1, le=MAX_INT)]
    sensors: dict[SensorName, SensorSettings]
    outputs: dict[OutputName, OutputSettings] = msgspec.field(default_factory=dict)


OutputReason = Annotated[str, msgspec.Meta(max_length=1024)]


class AppliedOutput(Struct, frozen=True, omit_defaults=True):
    """What one output does now, as its agent drove it.

    `value` is the value applied (as the hardware quantised it: a PCA9685 has 4096 steps), or
    None when the output could not be opened. `reason` says why it is not the desired value:
    "safe: shutdown", "safe: crash recovery", "safe: broker away 30 s" (held at its safe value),
    "unavailable: ..." (the hardware refused); absent when it is the desired value.
    `backend` is "simulated" for an output of a device the gateway plays while its agent is
    away (gateway/simulated.py).
    """

    value: Float | None
    backend: Literal["real", "emulated", "simulated"] | None = None
    reason: OutputReason | None = None


class ReportedConfig(_Payload, frozen=True):
    """What the agent applied, or why it refused. Retained; only the agent writes it.

    `status` says how the last desired document fared; `applied_version` is what runs either
    way (a refused document leaves the last good one running). `rejected_version` is absent
    when the refused document had no readable version. `reason` is the document's rejection;
    why an output is not at its desired value is that output's own `reason`.
    """

    device: DeviceId
    ts: Float
    status: Literal["applied", "rejected"]
    applied_version: NonNegative
    rejected_version: NonNegative | None = None
    reason: Annotated[str, msgspec.Meta(max_length=1024)] | None = None
    outputs: dict[OutputName, AppliedOutput] = msgspec.field(default_factory=dict)
    """Each output of the applied document, as it is now; absent when there are none."""

    def __post_init__(self) -> None:
        if self.status == "rejected" and self.reason is None:
            raise ValueError("a rejection carries its reason")
        if self.status == "applied" and (
            self.reason is not None or self.rejected_version is not None
        ):
            raise ValueError("an applied report carries no rejection")


class SensorHealth(StrEnum):
    OK = "ok"
    FAULTED = "faulted"
    MISSING = "missing"


class SensorState(Struct, frozen=True, omit_defaults=True):
    health: SensorHealth
    backend: Literal["real", "emulated"]
    reason: str | None = None


class DeviceState(_Payload, frozen=True, omit_defaults=False):
    """The agent's own account of itself. Retained; only the agent writes it.

    Every field is written, zeros included: "dropped: 0" is news to whoever reads it.
    """

    device: DeviceId
    ts: Float
    agent_version: str
    uptime_s: Annotated[float, msgspec.Meta(ge=0)]
    sensors: dict[SensorName, SensorState]
    outbox_depth: NonNegative = 0
    dropped: NonNegative = 0
    # Why the outbox cannot write (disk full, I/O error), None while it can; and the readings
    # published since the agent started without reaching it. Defaults: older agents' documents
    # still decode.
    storage_error: Annotated[str, msgspec.Meta(max_length=1024)] | None = None
    unstored: NonNegative = 0


class Server(StrEnum):
    AGENT = "agent"
    SIMULATION = "simulation"


Site = Annotated[str, msgspec.Meta(max_length=64)]
LabelKey = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
LabelValue = Annotated[str, msgspec.Meta(max_length=256)]


GatewayId = Annotated[str, msgspec.Meta(pattern=ID_PATTERN)]


class StreamServing(Struct, frozen=True):
    served_by: Server
    seq: Annotated[
        int, msgspec.Meta(ge=0, le=MAX_INT, description="last seq the gateway saw on this stream")
    ] = 0


class OutputResponse(Struct, frozen=True):
    """How one simulated quantity of a device answers its outputs: a first-order lag with
    `time_constant` seconds towards the sum of each output's value times its gain (the
    manifest's `[[devices.responses]]`, gateway/scenario/model.py `ResponseSpec`), carried in
    the twin document so that every gateway that may play the device plays it the same."""

    sensor: SensorName
    quantity: QuantityName
    time_constant: Annotated[float, msgspec.Meta(gt=0, le=MAX_INT)]
    gains: Annotated[dict[OutputName, Float], msgspec.Meta(min_length=1, max_length=16)]

    def __post_init__(self) -> None:
        for name, gain in self.gains.items():
            _finite(gain, f"gain of {name}")


class TwinSummary(_Payload, frozen=True):
    """The gateway's record of one manifest device: where it sits, and who serves each of its
    sensors now. Retained; only the gateway writes it, and a restarted gateway rebuilds its
    manifest from these.

    When the gateway hands a stream back to the agent, `seq` carries the simulation's last
    number, so the agent continues after it and consumers see one unbroken stream; `boot` tells
    the agent that this document answers its own birth, not an earlier one.
    """

    device: DeviceId
    ts: Float
    presence: Literal["online", "offline", "unknown"]
    sensors: dict[SensorName, StreamServing]
    boot: (
        Annotated[
            int,
            msgspec.Meta(
                ge=0, le=MAX_INT, description="the agent boot whose status this document answers"
            ),
        ]
        | None
    ) = None
    site: Site | None = None
    labels: dict[LabelKey, LabelValue] = msgspec.field(default_factory=dict)
    session: SessionId | None = None
    """The agent session whose status this document answers; `boot` alone is ambiguous once a
    wiped disk restarts the count."""
    responses: Annotated[list[OutputResponse], msgspec.Meta(max_length=64)] = msgspec.field(
        default_factory=list
    )
    """How the device's simulated signals answer its outputs; absent when they do not."""
    gateway: GatewayId | None = None
    """The gateway that writes this document and plays the streams it marks `simulation`;
    None once that gateway has handed the device to another (its release, with the last seq
    it played on each stream), and in documents of gateways that predate several gateways on
    a prefix. The next owner starts only after the release, or once the claimant is gone
    (docs/design.md, "Several gateways")."""


class RebirthRequest(_Payload, frozen=True):
    """The gateway's question to every agent, after each of its connections to the broker:
    who is really online? Each live agent answers by publishing its birth status again.

    A retained "online" status proves nothing after a broker crash: the broker neither kept
    nor sent the last wills of the connections it lost, and with persistence it replays the
    births of agents that are gone. Only an answer heard live is proof (Sparkplug's rebirth
    request does the same for its edge nodes).
    """

    ts: Float


TWIN_INDEX_SHARDS: Final = 64


def twin_index_shard(device: str) -> int:
    """The twin index document that lists `device`: stable across processes and versions."""
    return zlib.crc32(device.encode()) % TWIN_INDEX_SHARDS


class TwinIndex(_Payload, frozen=True):
    """One shard of the list of devices the twin knows, retained by the gateway at
    `{prefix}/_index/{shard}` (`twin_index_shard`). A restarted gateway reads the index first,
    then each device's documents in portions: subscribing to every device's documents by
    wildcard has the broker send them all at once, and a stock mosquitto drops what a client
    has not read beyond 1,000 queued messages (README, "Broker limits that matter")."""

    shard: Annotated[int, msgspec.Meta(ge=0, lt=TWIN_INDEX_SHARDS)]
    devices: list[DeviceId]


class GatewayLease(_Payload, frozen=True):
    """One gateway's membership of its prefix, retained at `{prefix}/_gateways/{gateway}`:
    its birth on every connection, and its last will (the same document, offline) when the
    broker loses it. Only that gateway writes it. Sparkplug's primary-host STATE, with a
    session so that readers can order the lives of one gateway id.

    `session` is drawn at random at every start; `since` is that start's wall-clock time, the
    same in every lease of the session (the will's included, which is fixed at start), so a
    reader can tell a later life from a late will of an earlier one (gateway/membership.py).
    `api` is where this gateway's HTTP API is reached, for forwarding, when configured.
    """

    gateway: GatewayId
    state: Presence
    session: SessionId
    since: Annotated[float, msgspec.Meta(gt=0)]
    ts: Float
    version: Annotated[str, msgspec.Meta(max_length=64)]
    reason: Literal["birth", "shutdown", "connection_lost"]
    api: Annotated[str, msgspec.Meta(max_length=256)] | None = None

    def __post_init__(self) -> None:
        _finite(self.since, "since")
        _finite(self.ts, "ts")


# -- commands: MQTT 5 request/response ---------------------------------------------------------

CommandName = Annotated[str, msgspec.Meta(pattern=ID_PATTERN)]
# A caller's id of one command: the device runs a command once per id (agent/commands.py). Wide
# enough for a UUID in any spelling, narrow enough to stay a plain token in logs.
CommandId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]
ArgName = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
ArgValue = bool | JsonInt | float | Annotated[str, msgspec.Meta(max_length=256)]
MAX_COMMAND_BYTES: Final = 16 * 1024
"""Largest command request or answer read from the wire; a larger one is refused unread."""
_RESULT_DEPTH: Final = 8


def _check_result(value: object, depth: int = 0) -> None:
    """A command's result is free-form JSON; it still keeps the contract's number bounds."""
    if depth > _RESULT_DEPTH:
        raise ValueError(f"result nested deeper than {_RESULT_DEPTH} levels")
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return
    if isinstance(value, int):
        if not -MAX_INT <= value <= MAX_INT:
            raise ValueError(f"result integer {value} is outside ±(2**53 - 1)")
    elif isinstance(value, float):
        _finite(value, "result number")
    elif isinstance(value, dict):
        for item in value.values():
            _check_result(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_result(item, depth + 1)
    else:
        raise ValueError(f"result holds a {type(value).__name__}, which JSON has not")


class CommandRequest(_Payload, frozen=True):
    """A command for one device, published by a gateway (or any caller the broker lets) on
    `{prefix}/{device}/commands/{name}`. MQTT 5 carries where to answer and what to quote: the
    PUBLISH's Response Topic (`{prefix}/{device}/responses/{requester}`) and Correlation Data.

    `id` makes the command idempotent: the device runs an id once and answers a repeat (a QoS 1
    redelivery, a caller's retry) with the stored answer. `deadline` is the caller's wall-clock
    time after which the command must not run at all: its caller has stopped waiting.
    """

    device: DeviceId
    id: CommandId
    deadline: Annotated[float, msgspec.Meta(gt=0, description="seconds since the Unix epoch")]
    args: Annotated[dict[ArgName, ArgValue], msgspec.Meta(max_length=16)] = msgspec.field(
        default_factory=dict
    )

    def __post_init__(self) -> None:
        _finite(self.deadline, "deadline")


CommandStatus = Literal["ok", "rejected", "failed"]


class CommandResponse(_Payload, frozen=True):
    """A device's answer to one command, published on the request's Response Topic with its
    Correlation Data, not retained.

    `ok`: the command ran, `result` says what it did or read. `rejected`: it did not run, and
    `reason` says why (unknown command, bad arguments, expired, busy). `failed`: it ran and the
    hardware or the agent failed it, `reason` says how.
    """

    device: DeviceId
    id: CommandId
    name: CommandName
    status: CommandStatus
    ts: Float
    result: dict[str, Any] | None = None
    reason: Annotated[str, msgspec.Meta(max_length=1024)] | None = None

    def __post_init__(self) -> None:
        if (self.status == "ok") != (self.reason is None):
            raise ValueError("a rejected or failed answer carries its reason, an ok one none")
        if self.result is not None:
            _check_result(self.result)


MAX_SHARDS: Final = 100_000
RunName = Annotated[str, msgspec.Meta(pattern=ID_PATTERN)]


class ShardLease(_Payload, frozen=True):
    """One simulation replica's claim of a shard of a fleet, retained at
    `{prefix}/_shards/{run}/{session}`, where replicas that no orchestrator numbers
    (`edgetwin simulate --shard auto/N`) split the fleet between them
    (gateway/scenario/claims.py). Only that replica writes it, and its last will clears it;
    a lease that no live replica answers for at a roll call (`{prefix}/_shards/{run}/roll-call`,
    its replica gone without a will) is cleared by the replica that called the roll.

    `count` and `devices`, the number of shards and the fleet's size, are the same in every
    lease of one run; `host` names the replica for whoever reads the leases."""

    run: RunName
    shard: Annotated[int, msgspec.Meta(ge=0)]
    count: Annotated[int, msgspec.Meta(ge=1, le=MAX_SHARDS)]
    devices: NonNegative
    session: SessionId
    ts: Float
    host: Annotated[str, msgspec.Meta(max_length=253)]

    def __post_init__(self) -> None:
        if self.shard >= self.count:
            raise ValueError(f"shard {self.shard} of {self.count}: shards count from 0")
        _finite(self.ts, "ts")


TopicKind = Literal[
    "status",
    "twin",
    "telemetry",
    "desired",
    "reported",
    "state",
    "labels",
    "rebirth",
    "index",
    "gateway",
    "command",
    "response",
    "shard",
    "output_set",
]


@dataclass(frozen=True, slots=True)
class ParsedTopic:
    kind: TopicKind
    device: str | None
    """None only for telemetry on a topic that every device shares (a template without
    {device_id}, e.g. ``sensors/data``): the payload names the device."""
    sensor: str | None = None
    name: str | None = None
    """A command's name, or on a response topic the requester's id."""


_TEMPLATE_FIELDS: Final = frozenset({"prefix", "device_id", "sensor"})


@dataclass(frozen=True, slots=True)
class Topics:
    """Topic builders and parsers for one prefix and an optional telemetry template.

    The template (original simulator style, e.g. ``sensors/{device_id}``) moves telemetry only;
    presence, config and state keep their place under the prefix. It may use {prefix},
    {device_id} and {sensor}; without {sensor}, all of a device's sensors share one topic and
    the payload's `sensor` field tells them apart. Without {device_id} (the original
    simulator's code publishes every device on ``sensors/data``), all devices share the topic
    and the payload's `device` (or a flat payload's `device_id`) tells them apart.
    """

    prefix: str = DEFAULT_PREFIX
    telemetry_template: str | None = None

    def __post_init__(self) -> None:
        if not self.prefix or any(c in self.prefix for c in "+#") or self.prefix.endswith("/"):
            raise ContractError(f"invalid topic prefix {self.prefix!r}")
        if self.telemetry_template is not None:
            fields = {f for _, f, _, _ in string.Formatter().parse(self.telemetry_template) if f}
            unknown = fields - _TEMPLATE_FIELDS
            if unknown:
                raise ContractError(
                    f"telemetry topic template {self.telemetry_template!r} may use only "
                    f"{sorted('{' + f + '}' for f in _TEMPLATE_FIELDS)}, not "
                    f"{sorted('{' + f + '}' for f in unknown)}"
                )
            if any(c in self.telemetry_template for c in "+#"):
                raise ContractError("telemetry topic template may not contain wildcards")
            if not self.telemetry_template or self.telemetry_template.startswith("$"):
                raise ContractError(
                    f"telemetry topic template {self.telemetry_template!r} is not a topic"
                )

    def status(self, device: str) -> str:
        return f"{self.prefix}/{device}/status"

    def twin(self, device: str) -> str:
        return f"{self.prefix}/{device}/twin"

    def desired(self, device: str) -> str:
        return f"{self.prefix}/{device}/config/desired"

    def reported(self, device: str) -> str:
        return f"{self.prefix}/{device}/config/reported"

    def state(self, device: str) -> str:
        return f"{self.prefix}/{device}/state"

    def telemetry(self, device: str, sensor: str) -> str:
        if self.telemetry_template is None:
            return f"{self.prefix}/{device}/telemetry/{sensor}"
        return self.telemetry_template.format(prefix=self.prefix, device_id=device, sensor=sensor)

    def labels(self) -> str:
        """Where simulations publish the ground truth of their injected faults (FaultLabel)."""
        return f"{self.prefix}/labels"

    def rebirth(self) -> str:
        """Where the gateway asks every agent to publish its birth again (RebirthRequest)."""
        return f"{self.prefix}/rebirth"

    def twin_index(self, shard: int) -> str:
        """Where the gateway keeps one shard of the list of devices it knows (TwinIndex). A
        device id never starts with '_', so no device's topics can be taken for it."""
        return f"{self.prefix}/_index/{shard}"

    def all_twin_index(self) -> str:
        return f"{self.prefix}/_index/+"

    def gateway(self, gateway: str) -> str:
        """Where `gateway` keeps its lease (GatewayLease), retained; '_' keeps it clear of
        every device's topics."""
        return f"{self.prefix}/_gateways/{gateway}"

    def all_gateways(self) -> str:
        return f"{self.prefix}/_gateways/+"

    def shard_lease(self, run: str, session: str) -> str:
        """Where a simulation replica keeps its claim of a shard of `run` (ShardLease),
        retained: a topic per replica, so that each retained lease has one writer."""
        return f"{self.prefix}/_shards/{run}/{session}"

    def all_shard_leases(self, run: str) -> str:
        return f"{self.prefix}/_shards/{run}/+"

    def probe(self, client_id: str) -> str:
        """A topic only `client_id` subscribes to: its own messages sent back mark a point
        in the order of what the broker sends it (MqttLink.fetch_retained)."""
        return f"{self.prefix}/_probe/{client_id}"

    def command(self, device: str, name: str) -> str:
        """Where `device` receives the command `name` (CommandRequest)."""
        return f"{self.prefix}/{device}/commands/{name}"

    def commands(self, device: str = "+") -> str:
        return f"{self.prefix}/{device}/commands/+"

    def output_set(self, device: str, output: str) -> str:
        """Where a plain MQTT client (Home Assistant's switch or number) asks for a new value
        of one output of `device`: the gateway that owns the device makes it the next desired
        version. Not retained."""
        return f"{self.prefix}/{device}/outputs/{output}/set"

    def all_output_sets(self) -> str:
        return f"{self.prefix}/+/outputs/+/set"

    def response(self, device: str, requester: str) -> str:
        """Where `device` answers `requester`'s commands (CommandResponse): under the device's
        own id, so the broker's ACL lets each device answer only for itself."""
        return f"{self.prefix}/{device}/responses/{requester}"

    def all_responses(self, requester: str) -> str:
        return f"{self.prefix}/+/responses/{requester}"

    def all_status(self) -> str:
        return f"{self.prefix}/+/status"

    def all_state(self) -> str:
        return f"{self.prefix}/+/state"

    def all_twin(self) -> str:
        return f"{self.prefix}/+/twin"

    def all_desired(self) -> str:
        return f"{self.prefix}/+/config/desired"

    def all_reported(self) -> str:
        return f"{self.prefix}/+/config/reported"

    def all_telemetry(self) -> str:
        if self.telemetry_template is None:
            return f"{self.prefix}/+/telemetry/+"
        return self.telemetry_template.format(prefix=self.prefix, device_id="+", sensor="+")

    def parse(self, topic: str) -> ParsedTopic:
        """Tell what a topic is and whose; ContractError for anything outside the contract."""
        parsed = self._parse_prefixed(topic) or self._parse_template(topic)
        if parsed is None:
            raise ContractError(f"topic {topic!r} is not part of the edgetwin contract")
        if parsed.device is not None:
            check_id(parsed.device)
        if parsed.sensor is not None:
            check_id(parsed.sensor, "sensor name")
        if parsed.name is not None:
            what = {"command": "command name", "output_set": "output name"}
            check_id(parsed.name, what.get(parsed.kind, "requester id"))
        return parsed

    def _parse_prefixed(self, topic: str) -> ParsedTopic | None:  # noqa: PLR0912
        head = self.prefix + "/"
        if not topic.startswith(head):
            return None
        parts = topic[len(head) :].split("/")
        match parts:
            case ["labels"]:
                return ParsedTopic("labels", None)
            case ["rebirth"]:
                return ParsedTopic("rebirth", None)
            case ["_index", _]:
                return ParsedTopic("index", None)
            case ["_gateways", gateway]:
                # Before `[device, "status"]`: a gateway called "status" is still a gateway.
                check_id(gateway, "gateway id")
                return ParsedTopic("gateway", None)
            case ["_shards", run, _]:
                check_id(run, "run name")
                return ParsedTopic("shard", None)
            case [device, "status"]:
                return ParsedTopic("status", device)
            case [device, "twin"]:
                return ParsedTopic("twin", device)
            case [device, "state"]:
                return ParsedTopic("state", device)
            case [device, "config", "desired"]:
                return ParsedTopic("desired", device)
            case [device, "config", "reported"]:
                return ParsedTopic("reported", device)
            case [device, "commands" | "responses" as kind, name]:
                # One case for both: a command's name, or the requester a response is for.
                kind_of: TopicKind = "command" if kind == "commands" else "response"
                return ParsedTopic(kind_of, device, name=name)
            case [device, "outputs", output, "set"]:
                return ParsedTopic("output_set", device, name=output)
            case [device, "telemetry", sensor] if self.telemetry_template is None:
                return ParsedTopic("telemetry", device, sensor)
        return None

    def _parse_template(self, topic: str) -> ParsedTopic | None:
        if self.telemetry_template is None:
            return None
        pattern = re.escape(self.telemetry_template)
        pattern = pattern.replace(r"\{prefix\}", re.escape(self.prefix))
        pattern = pattern.replace(r"\{device_id\}", r"(?P<device>[^/]+)")
        pattern = pattern.replace(r"\{sensor\}", r"(?P<sensor>[^/]+)")
        match = re.fullmatch(pattern, topic)
        if match is None:
            return None
        groups = match.groupdict()
        return ParsedTopic("telemetry", groups.get("device"), groups.get("sensor"))
