"""The channel between the judge and the program (``sandbox/wire.py``), on its own: what a frame can carry
arrives as the plain value it encodes to; what it cannot carry, or a malformed or oversized frame, is a
``WireError`` and never an object the sender chose."""

from __future__ import annotations

import contextlib
import os
import struct

import pytest

from cai_lightning.sandbox import wire


@pytest.fixture
def ends():
    """Two endpoints on a pair of pipes, as the judge and the program hold them."""
    a_read, b_write = os.pipe()
    b_read, a_write = os.pipe()
    a, b = wire.Endpoint(a_read, a_write), wire.Endpoint(b_read, b_write)
    yield a, b
    for fd in (a_read, a_write, b_read, b_write):
        with contextlib.suppress(OSError):  # a test may have closed one
            os.close(fd)


class Sneaky(int):
    """An int subclass whose equality lies: it must travel as the int it encodes to."""

    def __eq__(self, other):
        return True

    __hash__ = int.__hash__


@pytest.mark.parametrize("value", [
    None, True, False, 0, -1, 2**100, -(2**70) + 3, 1.5, float("inf"), 2 - 3j, "", "naïve ✓", "\ud800", b"\x00\xff",
    range(2, 11, 3), (1, ("a", None)), frozenset({1, "x"}), [1, [2, [3]]], {"k": [1, 2], 3: (4,)}, {1, 2},
    bytearray(b"ab"), ValueError, KeyError("missing"), len, sorted, int,
])
def test_plain_values_round_trip(ends, value):
    a, b = ends
    a.send(("value", value))
    kind, received = b.receive()
    assert kind == "value"
    if isinstance(value, BaseException):
        assert type(received) is type(value) and received.args == value.args
    else:
        assert received == value and type(received) is type(value)


def test_a_subclass_of_a_plain_type_arrives_as_the_plain_value(ends):
    a, b = ends
    a.send(("value", Sneaky(3), type("S", (str,), {"__str__": lambda self: "lie"})("truth")))
    _, number, text = b.receive()
    assert type(number) is int and number == 3 and not (number == 4)
    assert type(text) is str and text == "truth"  # the characters, not what __str__ says


@pytest.mark.parametrize("value", [object(), lambda: 0, type("Custom", (), {}), eval, open, getattr])
def test_what_is_not_plain_data_is_refused_by_the_base_endpoint(ends, value):
    a, _ = ends
    with pytest.raises(wire.WireError, match="cannot send"):
        a.send(("value", value))


def _frame(payload: bytes) -> bytes:
    return struct.pack("<I", len(payload)) + payload


@pytest.mark.parametrize(("payload", "message"), [
    (b"?", "unknown tag"),
    (wire.TUPLE + struct.pack("<I", 1) + wire.STR + struct.pack("<I", 1) + b"ok" + wire.NONE, "trailing bytes"),
    (wire.STR + struct.pack("<I", 50) + b"short", "cut short"),  # a length past the frame's end
    (wire.TUPLE + struct.pack("<I", 1) + wire.RANGE + (wire.INT + struct.pack("<I", 1) + b"\x00") * 3, "a bad range"),
    (wire.TUPLE + struct.pack("<I", 2) + wire.STR + struct.pack("<I", 1) + b"k" + wire.DICT + struct.pack("<I", 0)
     + struct.pack("<I", 1) + wire.LIST + struct.pack("<II", 0, 0) + wire.NONE, "hashable|unhashable"),
    (wire.TUPLE + struct.pack("<I", 1) + wire.BUILTIN + struct.pack("<I", 4) + b"eval", "'eval' is not a builtin"),
    (wire.TUPLE + struct.pack("<I", 1) + wire.EXC_CLASS + struct.pack("<I", 6) + b"Custom", "not a builtin exception"),
    (wire.TUPLE + struct.pack("<I", 1) + wire.HANDLE + struct.pack("<I", 1) + wire.OBJECT, "unexpected handle"),
    (wire.NONE, "a message must be a tuple"),
])
def test_a_malformed_frame_is_a_wire_error(ends, payload, message):
    a, b = ends
    os.write(a.write_fd, _frame(payload))
    with pytest.raises(wire.WireError, match=message):
        b.receive()


def test_nesting_past_the_limit_is_refused(ends):
    a, b = ends
    deep = wire.TUPLE + struct.pack("<I", 1)
    payload = wire.TUPLE + struct.pack("<I", 1) + deep * (wire.MAX_DEPTH + 2) + wire.NONE
    os.write(a.write_fd, _frame(payload))
    with pytest.raises(wire.WireError, match="nested too deep"):
        b.receive()


def test_an_oversized_frame_is_refused_before_it_is_read(ends):
    a, b = ends
    b.receive_limit = 64
    os.write(a.write_fd, struct.pack("<I", 10**6))  # announced, never sent: reading it would block
    with pytest.raises(wire.FrameTooLarge, match="1,000,000 bytes, over the limit of 64"):
        b.receive()
    a.send_limit = 16
    with pytest.raises(wire.FrameTooLarge):
        a.send(("value", "x" * 100))


def test_a_closed_end_is_channel_closed_not_a_hang(ends):
    a, b = ends
    os.write(a.write_fd, struct.pack("<I", 8) + wire.NONE)  # a frame announced, then the sender dies
    os.close(a.write_fd)
    with pytest.raises(wire.ChannelClosed):
        b.receive()
    os.close(a.read_fd)
    with pytest.raises(wire.ChannelClosed):
        b.send(("value", 1))  # its reader is gone: a broken pipe
