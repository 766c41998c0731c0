"""The engine link's MQTT codec (gateway/engine/mqtt_wire.py): bytes checked against the MQTT 5
and 3.1.1 specifications, no broker."""

from __future__ import annotations

import pytest

from edgetwin.gateway.engine.mqtt_wire import (
    CONNACK,
    PUBACK,
    PacketReader,
    ProtocolError,
    encode_connect,
    encode_publish,
    parse_connack,
    parse_disconnect,
    parse_puback,
    read_varint,
    remaining_length,
)


@pytest.mark.parametrize(
    ("n", "encoded"),
    [
        (0, b"\x00"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (16_383, b"\xff\x7f"),
        (16_384, b"\x80\x80\x01"),
        (2_097_151, b"\xff\xff\x7f"),
        (2_097_152, b"\x80\x80\x80\x01"),
        (268_435_455, b"\xff\xff\xff\x7f"),
    ],
)
def test_remaining_length_at_each_byte_boundary(n: int, encoded: bytes) -> None:
    # The table of MQTT 5 section 1.5.5 (and 3.1.1 section 2.2.3).
    assert remaining_length(n) == encoded
    assert read_varint(b"\x30" + encoded + b"rest", 1) == (n, 1 + len(encoded))


def test_remaining_length_out_of_range_and_truncated_or_overlong_input() -> None:
    with pytest.raises(ValueError, match="outside"):
        remaining_length(268_435_456)
    with pytest.raises(ValueError, match="outside"):
        remaining_length(-1)
    assert read_varint(b"\x80\x80", 0) is None  # more bytes to come
    assert read_varint(b"", 0) is None
    with pytest.raises(ProtocolError, match="four bytes"):
        read_varint(b"\xff\xff\xff\xff\x01", 0)


def test_connect_in_both_versions() -> None:
    v311 = encode_connect("c1", v5=False, keepalive=30)
    # Fixed header, "MQTT", level 4, clean session, keep-alive 30, client id.
    assert v311 == b"\x10\x0e\x00\x04MQTT\x04\x02\x00\x1e\x00\x02c1"
    v5 = encode_connect("c1", v5=True, keepalive=30)
    # Level 5 and an empty property block before the payload.
    assert v5 == b"\x10\x0f\x00\x04MQTT\x05\x02\x00\x1e\x00\x00\x02c1"


def test_connect_with_username_and_password() -> None:
    packet = encode_connect("c", v5=True, keepalive=10, username="u", password="pw")
    assert packet[9] == 0x80 | 0x40 | 0x02  # user name, password, clean start
    assert packet.endswith(b"\x00\x01c\x00\x01u\x00\x02pw")
    # MQTT 5 allows a password alone; 3.1.1 does not (3.1.2.9).
    assert encode_connect("c", v5=True, keepalive=10, password="pw")[9] == 0x40 | 0x02
    with pytest.raises(ValueError, match=r"3\.1\.1 needs a username"):
        encode_connect("c", v5=False, keepalive=10, password="pw")


def test_publish_in_both_versions_and_qos() -> None:
    assert encode_publish(b"a/b", b"xy", v5=False) == b"\x30\x07\x00\x03a/bxy"
    assert encode_publish(b"a/b", b"xy", v5=True) == b"\x30\x08\x00\x03a/b\x00xy"
    assert encode_publish(b"a/b", b"", v5=True, retain=True) == b"\x31\x06\x00\x03a/b\x00"
    assert encode_publish(b"a/b", b"xy", v5=False, qos=1, packet_id=258) == (
        b"\x32\x09\x00\x03a/b\x01\x02xy"
    )
    assert encode_publish(b"a/b", b"xy", v5=True, qos=1, packet_id=1) == (
        b"\x32\x0a\x00\x03a/b\x00\x01\x00xy"
    )
    big = encode_publish(b"t", bytes(200), v5=False)
    assert big[:3] == b"\x30\xcb\x01"  # 203 = 0x4b + 1 * 128: two length bytes
    with pytest.raises(ValueError, match="packet id"):
        encode_publish(b"t", b"", v5=True, qos=1, packet_id=0)


def test_connack_accepted_and_refused_in_3_1_1() -> None:
    accepted = parse_connack(b"\x01\x00", v5=False)
    assert accepted.accepted
    assert accepted.session_present
    refused = parse_connack(b"\x00\x05", v5=False)
    assert not refused.accepted
    assert refused.describe() == "Not authorized (0x05)"
    assert parse_connack(b"\x00\x04", v5=False).describe() == "Bad user name or password (0x04)"


def test_connack_v5_properties_and_refusal_with_reason_string() -> None:
    # Receive Maximum 20, Server Keep Alive 7, Maximum QoS 1, a user property to step over.
    props = b"\x21\x00\x14\x13\x00\x07\x24\x01\x26\x00\x01k\x00\x01v"
    connack = parse_connack(b"\x00\x00" + bytes((len(props),)) + props, v5=True)
    assert connack.accepted
    assert connack.receive_maximum == 20
    assert connack.server_keepalive == 7
    assert connack.maximum_qos == 1
    plain = parse_connack(b"\x00\x00\x00", v5=True)
    assert plain.receive_maximum == 65_535  # none named: the protocol's maximum
    assert plain.server_keepalive is None

    reason = b"\x1f\x00\x0bno entry ok"
    refused = parse_connack(b"\x00\x87" + bytes((len(reason),)) + reason, v5=True)
    assert not refused.accepted
    assert refused.describe() == "Not authorized (0x87): no entry ok"
    assert parse_connack(b"\x00\x86", v5=True).describe() == "Bad User Name or Password (0x86)"


@pytest.mark.parametrize(
    "body",
    [
        b"\x00",  # too short
        b"\x02\x00\x00",  # reserved flag bits
        b"\x00\x00\x03\x21\x00\x00",  # Receive Maximum 0 is a protocol error
        b"\x00\x00\x05\x21\x00",  # property block longer than the packet
        b"\x00\x00\x02\x7f\x00",  # no such property
    ],
)
def test_malformed_connack_is_a_protocol_error(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_connack(body, v5=True)


def test_puback_with_and_without_reason_code_and_properties() -> None:
    assert parse_puback(b"\x01\x02", v5=False) == (258, 0)
    assert parse_puback(b"\x01\x02", v5=True) == (258, 0)  # reason 0 left out
    assert parse_puback(b"\x00\x07\x10", v5=True) == (7, 0x10)  # no matching subscribers
    reason = b"\x1f\x00\x04deny"
    assert parse_puback(b"\x00\x07\x87" + bytes((len(reason),)) + reason, v5=True) == (7, 0x87)
    with pytest.raises(ProtocolError):
        parse_puback(b"\x07", v5=True)
    with pytest.raises(ProtocolError):
        parse_puback(b"\x00\x07\x87\x09\x1f", v5=True)


def test_server_disconnect() -> None:
    assert parse_disconnect(b"", v5=True) == (0, None)
    assert parse_disconnect(b"\x8b", v5=True) == (0x8B, None)
    reason = b"\x1f\x00\x03bye"
    assert parse_disconnect(b"\x98" + bytes((len(reason),)) + reason, v5=True) == (0x98, "bye")


def test_packet_reader_splits_a_stream_fed_in_any_pieces() -> None:
    big_body = bytes(range(256)) * 2  # 512 bytes: a two-byte remaining length
    stream = b"\x20\x02\x00\x00" + b"\x40\x02\x00\x01" + b"\xd0\x00"
    stream += bytes((PUBACK,)) + remaining_length(len(big_body)) + big_body
    expected = [
        (CONNACK, b"\x00\x00"),
        (PUBACK, b"\x00\x01"),
        (0xD0, b""),
        (PUBACK, big_body),
    ]
    assert PacketReader().feed(stream) == expected
    reader = PacketReader()
    one_by_one = [packet for i in range(len(stream)) for packet in reader.feed(stream[i : i + 1])]
    assert one_by_one == expected
    with pytest.raises(ProtocolError, match="incoming packet"):
        PacketReader(max_packet=100).feed(b"\x40\xff\x01")
