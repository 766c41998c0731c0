"""The MQTT packets an engine worker sends and receives, encoded and decoded without paho.

A worker only publishes: it sends CONNECT, PUBLISH (QoS 0 and 1), PINGREQ and DISCONNECT, and
reads CONNACK, PUBACK, PINGRESP and a server's DISCONNECT. That is small enough to own, and
owning it lets the link write each batch with one `send()` and keep its own QoS 1 window
instead of paho's, which rescans every message it holds at each PUBACK.

MQTT 5 (protocol level 5) and 3.1.1 (level 4); references are to the OASIS specifications.
Pure functions and one stream reader, no I/O: tests/test_engine_wire.py covers them.
"""

from __future__ import annotations

from dataclasses import dataclass

CONNECT = 0x10
CONNACK = 0x20
PUBLISH = 0x30
PUBACK = 0x40
PINGREQ = 0xC0
PINGRESP = 0xD0
DISCONNECT = 0xE0

PINGREQ_PACKET = b"\xc0\x00"
# Both versions: MQTT 5 allows leaving out the reason code (0, normal) and the properties.
DISCONNECT_PACKET = b"\xe0\x00"

MAX_REMAINING_LENGTH = 268_435_455  # four bytes of variable byte integer (MQTT 5, 1.5.5)
NO_RECEIVE_MAXIMUM = 65_535  # MQTT 5's value when CONNACK names none; 3.1.1 has no such bound


class ProtocolError(Exception):
    """The broker sent bytes that are not a packet this client can take."""


def remaining_length(n: int) -> bytes:
    """`n` as a variable byte integer (1 to 4 bytes, 7 bits each, low group first)."""
    if not 0 <= n <= MAX_REMAINING_LENGTH:
        raise ValueError(f"remaining length {n} is outside 0..{MAX_REMAINING_LENGTH}")
    return varint(n)


def varint(n: int) -> bytes:
    """`n` as a variable byte integer, unchecked: the PUBLISH hot path, where a packet the
    broker finds too large is its to refuse."""
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def read_varint(data: bytes | bytearray | memoryview, pos: int) -> tuple[int, int] | None:
    """The variable byte integer at `pos` and the position after it; None when `data` ends
    before it does. Raises ProtocolError past four bytes."""
    value = 0
    for i in range(4):
        if pos + i >= len(data):
            return None
        byte = data[pos + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value, pos + i + 1
    raise ProtocolError("variable byte integer longer than four bytes")


def _utf8(text: str) -> bytes:
    raw = text.encode()
    if len(raw) > 0xFFFF:
        raise ValueError(f"string of {len(raw)} bytes: MQTT strings hold at most 65535")
    return len(raw).to_bytes(2, "big") + raw


def _binary(data: bytes) -> bytes:
    if len(data) > 0xFFFF:
        raise ValueError(f"binary field of {len(data)} bytes: at most 65535")
    return len(data).to_bytes(2, "big") + data


def encode_connect(
    client_id: str,
    *,
    v5: bool,
    keepalive: int,
    username: str | None = None,
    password: str | None = None,
) -> bytes:
    """CONNECT with a clean start (the engine keeps no session: it never resends), no will."""
    if not 0 <= keepalive <= 0xFFFF:
        raise ValueError(f"keepalive {keepalive} is outside 0..65535")
    flags = 0x02  # clean start / clean session
    payload = _utf8(client_id)
    if username is not None:
        flags |= 0x80
        payload += _utf8(username)
    if password is not None:
        # MQTT 3.1.1 allows a password only with a user name (3.1.2.9); MQTT 5 allows it alone.
        if not v5 and username is None:
            raise ValueError("MQTT 3.1.1 needs a username to send a password")
        flags |= 0x40
        payload += _binary(password.encode())
    variable = b"\x00\x04MQTT" + bytes((5 if v5 else 4, flags)) + keepalive.to_bytes(2, "big")
    if v5:
        variable += b"\x00"  # no properties
    body = variable + payload
    return bytes((CONNECT,)) + remaining_length(len(body)) + body


def encode_publish(
    topic: bytes,
    payload: bytes,
    *,
    v5: bool,
    qos: int = 0,
    retain: bool = False,
    packet_id: int = 0,
) -> bytes:
    """One PUBLISH; `topic` already UTF-8. The link inlines the QoS 0 case for speed; this is
    the reference it is tested against."""
    if qos not in (0, 1):
        raise ValueError(f"qos {qos}: the engine publishes at 0 or 1")
    if qos and not 1 <= packet_id <= 0xFFFF:
        raise ValueError(f"packet id {packet_id} is outside 1..65535")
    header = PUBLISH | (qos << 1) | (1 if retain else 0)
    variable = len(topic).to_bytes(2, "big") + topic
    if qos:
        variable += packet_id.to_bytes(2, "big")
    if v5:
        variable += b"\x00"  # no properties
    return bytes((header,)) + remaining_length(len(variable) + len(payload)) + variable + payload


# -- reason codes ---------------------------------------------------------------------------

# MQTT 3.1.1 CONNACK return codes (3.2.2.3).
CONNACK_RETURN_CODES_311 = {
    0: "Connection accepted",
    1: "Unacceptable protocol version",
    2: "Identifier rejected",
    3: "Server unavailable",
    4: "Bad user name or password",
    5: "Not authorized",
}

# MQTT 5 reason codes a CONNACK, PUBACK or DISCONNECT may carry (2.4).
REASON_CODES_5 = {
    0x00: "Success",
    0x04: "Disconnect with Will Message",
    0x10: "No matching subscribers",
    0x80: "Unspecified error",
    0x81: "Malformed Packet",
    0x82: "Protocol Error",
    0x83: "Implementation specific error",
    0x84: "Unsupported Protocol Version",
    0x85: "Client Identifier not valid",
    0x86: "Bad User Name or Password",
    0x87: "Not authorized",
    0x88: "Server unavailable",
    0x89: "Server busy",
    0x8A: "Banned",
    0x8B: "Server shutting down",
    0x8C: "Bad authentication method",
    0x8D: "Keep Alive timeout",
    0x8E: "Session taken over",
    0x90: "Topic Name invalid",
    0x93: "Receive Maximum exceeded",
    0x94: "Topic Alias invalid",
    0x95: "Packet too large",
    0x97: "Quota exceeded",
    0x98: "Administrative action",
    0x99: "Payload format invalid",
    0x9A: "Retain not supported",
    0x9B: "QoS not supported",
    0x9C: "Use another server",
    0x9D: "Server moved",
    0x9F: "Connection rate exceeded",
}


def reason_name(code: int, *, v5: bool) -> str:
    names = REASON_CODES_5 if v5 else CONNACK_RETURN_CODES_311
    return names.get(code, f"reason code 0x{code:02X}")


# -- properties -----------------------------------------------------------------------------

_BYTE, _TWO, _FOUR, _VARINT, _STRING, _BINARY, _PAIR = range(7)
# Every MQTT 5 property identifier (2.2.2.2) and its type: a reader must be able to step over
# any of them, even those it does not use.
_PROPERTY_TYPES = {
    0x01: _BYTE,  # Payload Format Indicator
    0x02: _FOUR,  # Message Expiry Interval
    0x03: _STRING,  # Content Type
    0x08: _STRING,  # Response Topic
    0x09: _BINARY,  # Correlation Data
    0x0B: _VARINT,  # Subscription Identifier
    0x11: _FOUR,  # Session Expiry Interval
    0x12: _STRING,  # Assigned Client Identifier
    0x13: _TWO,  # Server Keep Alive
    0x15: _STRING,  # Authentication Method
    0x16: _BINARY,  # Authentication Data
    0x17: _BYTE,  # Request Problem Information
    0x18: _FOUR,  # Will Delay Interval
    0x19: _BYTE,  # Request Response Information
    0x1A: _STRING,  # Response Information
    0x1C: _STRING,  # Server Reference
    0x1F: _STRING,  # Reason String
    0x21: _TWO,  # Receive Maximum
    0x22: _TWO,  # Topic Alias Maximum
    0x23: _TWO,  # Topic Alias
    0x24: _BYTE,  # Maximum QoS
    0x25: _BYTE,  # Retain Available
    0x26: _PAIR,  # User Property
    0x27: _FOUR,  # Maximum Packet Size
    0x28: _BYTE,  # Wildcard Subscription Available
    0x29: _BYTE,  # Subscription Identifier Available
    0x2A: _BYTE,  # Shared Subscription Available
}
RECEIVE_MAXIMUM = 0x21
SERVER_KEEP_ALIVE = 0x13
MAXIMUM_QOS = 0x24
MAXIMUM_PACKET_SIZE = 0x27
REASON_STRING = 0x1F
ASSIGNED_CLIENT_ID = 0x12

PropertyValue = int | str | bytes | tuple[str, str]


def _take(body: bytes, pos: int, n: int) -> bytes:
    if pos + n > len(body):
        raise ProtocolError("packet ends inside a field")
    return body[pos : pos + n]


def _take_string(body: bytes, pos: int) -> tuple[bytes, int]:
    n = int.from_bytes(_take(body, pos, 2), "big")
    return _take(body, pos + 2, n), pos + 2 + n


def parse_properties(body: bytes, pos: int) -> tuple[dict[int, PropertyValue], int]:
    """The property block at `pos` and the position after it. A property given twice keeps
    its last value, except User Property, which this client does not use."""
    found = read_varint(body, pos)
    if found is None:
        raise ProtocolError("packet ends inside the property length")
    length, pos = found
    end = pos + length
    if end > len(body):
        raise ProtocolError("property block longer than the packet")
    props: dict[int, PropertyValue] = {}
    while pos < end:
        ident = body[pos]
        kind = _PROPERTY_TYPES.get(ident)
        if kind is None:
            raise ProtocolError(f"unknown property 0x{ident:02X}")
        props[ident], pos = _property_value(kind, body, pos + 1)
    if pos != end:
        raise ProtocolError("a property runs past its block")
    return props, end


def _property_value(kind: int, body: bytes, pos: int) -> tuple[PropertyValue, int]:
    if kind in (_BYTE, _TWO, _FOUR):
        size = {_BYTE: 1, _TWO: 2, _FOUR: 4}[kind]
        return int.from_bytes(_take(body, pos, size), "big"), pos + size
    if kind == _VARINT:
        varint = read_varint(body, pos)
        if varint is None:
            raise ProtocolError("packet ends inside a property")
        return varint
    if kind == _BINARY:
        return _take_string(body, pos)
    if kind == _STRING:
        raw, pos = _take_string(body, pos)
        return raw.decode(errors="replace"), pos
    key, pos = _take_string(body, pos)
    value, pos = _take_string(body, pos)
    return (key.decode(errors="replace"), value.decode(errors="replace")), pos


def _int_property(props: dict[int, PropertyValue], ident: int) -> int | None:
    value = props.get(ident)
    return value if isinstance(value, int) else None


def _str_property(props: dict[int, PropertyValue], ident: int) -> str | None:
    value = props.get(ident)
    return value if isinstance(value, str) else None


# -- incoming packets -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Connack:
    session_present: bool
    reason_code: int
    v5: bool
    receive_maximum: int = NO_RECEIVE_MAXIMUM
    server_keepalive: int | None = None
    maximum_qos: int = 2
    maximum_packet_size: int | None = None
    reason_string: str | None = None

    @property
    def accepted(self) -> bool:
        return self.reason_code == 0

    def describe(self) -> str:
        """Why the broker refused, for an error message."""
        text = f"{reason_name(self.reason_code, v5=self.v5)} (0x{self.reason_code:02X})"
        if self.reason_string:
            text += f": {self.reason_string}"
        return text


def parse_connack(body: bytes, *, v5: bool) -> Connack:
    if len(body) < 2:
        raise ProtocolError(f"CONNACK of {len(body)} bytes")
    if body[0] & 0xFE:
        raise ProtocolError("CONNACK with reserved flags set")
    session_present, code = bool(body[0] & 1), body[1]
    if not v5:
        return Connack(session_present, code, v5)
    if len(body) == 2:
        # A refusal may leave out the properties (some brokers do), success must not; accept.
        return Connack(session_present, code, v5)
    props, _ = parse_properties(body, 2)
    receive_maximum = _int_property(props, RECEIVE_MAXIMUM)
    if receive_maximum == 0:
        raise ProtocolError("CONNACK with a Receive Maximum of 0")
    maximum_qos = _int_property(props, MAXIMUM_QOS)
    return Connack(
        session_present,
        code,
        v5,
        receive_maximum=NO_RECEIVE_MAXIMUM if receive_maximum is None else receive_maximum,
        server_keepalive=_int_property(props, SERVER_KEEP_ALIVE),
        maximum_qos=2 if maximum_qos is None else maximum_qos,
        maximum_packet_size=_int_property(props, MAXIMUM_PACKET_SIZE),
        reason_string=_str_property(props, REASON_STRING),
    )


def parse_puback(body: bytes, *, v5: bool) -> tuple[int, int]:
    """(packet id, reason code). MQTT 5 leaves out the reason code when it is 0 and the
    properties when there are none (3.4.2.1); 3.1.1 has neither."""
    if len(body) < 2:
        raise ProtocolError(f"PUBACK of {len(body)} bytes")
    packet_id = int.from_bytes(body[:2], "big")
    if not v5 or len(body) == 2:
        return packet_id, 0
    if len(body) > 3:
        parse_properties(body, 3)  # checked, unused: a reason string at most
    return packet_id, body[2]


def parse_disconnect(body: bytes, *, v5: bool) -> tuple[int, str | None]:
    """A server's DISCONNECT (MQTT 5 only): its reason code and reason string."""
    if not v5 or not body:
        return 0, None
    if len(body) == 1:
        return body[0], None
    props, _ = parse_properties(body, 1)
    return body[0], _str_property(props, REASON_STRING)


class PacketReader:
    """Splits a byte stream into (first byte, body) packets; keeps an incomplete tail."""

    def __init__(self, max_packet: int = 1 << 20) -> None:
        self._buf = bytearray()
        # The broker sends this client acknowledgements only: anything huge is a broken stream.
        self._max_packet = max_packet

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        buf = self._buf
        buf += data
        packets = []
        pos = 0
        while len(buf) - pos >= 2:
            found = read_varint(buf, pos + 1)
            if found is None:
                break
            length, start = found
            if length > self._max_packet:
                raise ProtocolError(f"incoming packet of {length} bytes")
            if len(buf) - start < length:
                break
            packets.append((buf[pos], bytes(buf[start : start + length])))
            pos = start + length
        del buf[:pos]
        return packets
