"""The container on its own: layout round trips and strict validation of hostile input."""

from __future__ import annotations

import struct
import zlib

import pytest
from hypothesis import given, settings, strategies as st

from nacz import container
from nacz.container import (KIND_BINARY, KIND_NEURAL, MAGIC, METHOD_STORED, METHOD_ZSTD,
                            Container, Segment, checksum, digest, uvarint)
from nacz.errors import FormatError

PARAMS = {"ensemble": {"kind": "llm"}, "streams": [3], "note": "x" * 40}


def _stored(data: bytes) -> Container:
    segs = [Segment(KIND_BINARY, len(data), 0, digest(data))] if data else []
    return Container(len(data), checksum(data), segs, METHOD_STORED, data)


def _hybrid() -> Container:
    a, b, d = b"binary\x00\x01", b"some text here", b"\xff\xfe"
    segs = [Segment(KIND_BINARY, len(a), 0, digest(a)), Segment(KIND_NEURAL, len(b), 4, digest(b)),
            Segment(KIND_BINARY, len(d), 0, digest(d))]
    return Container(len(a + b + d), checksum(a + b + d), segs, METHOD_STORED, a + d,
                     dict(PARAMS), b"\x01\x02\x03\x04" * 3)


@pytest.mark.parametrize("make", [lambda: _stored(b""), lambda: _stored(b"x"),
                                  lambda: _stored(bytes(range(256))), _hybrid])
def test_round_trip(make):
    c = make()
    raw = container.write(c)
    back = container.read(raw)
    assert back.orig_len == c.orig_len and back.checksum == c.checksum
    assert back.segments == c.segments and back.binary_payload == c.binary_payload
    assert back.params == c.params and back.neural_payload == c.neural_payload
    assert raw.startswith(MAGIC)


def test_overhead_is_small():
    assert len(container.write(_stored(b""))) <= 25
    assert len(container.write(_stored(b"x" * 1000))) - 1000 <= 40


def test_write_refuses_inconsistent_container():
    c = _stored(b"abc")
    c.orig_len = 4
    with pytest.raises(FormatError):
        container.write(c)


def test_every_truncation_is_a_format_error():
    raw = container.write(_hybrid())
    for n in range(len(raw)):
        with pytest.raises(FormatError):
            container.read(raw[:n])


def test_every_byte_change_is_a_format_error():
    raw = container.write(_hybrid())
    for i in range(len(raw)):
        for mask in (0x01, 0x80, 0xFF):
            bad = bytearray(raw)
            bad[i] ^= mask
            with pytest.raises(FormatError):
                container.read(bytes(bad))


def test_trailing_garbage_is_rejected():
    raw = container.write(_stored(b"hello"))
    with pytest.raises(FormatError, match="trailing"):
        container.read(raw + b"\x00")


def test_foreign_files_are_rejected():
    for foreign in (b"", b"PK\x03\x04 zip file", b"\x28\xb5\x2f\xfd zstd",
                    b"NC06" + bytes(60), b"\xfd7zXZ\x00"):
        with pytest.raises(FormatError, match="not a nacz file"):
            container.read(foreign)
    with pytest.raises(FormatError, match="truncated"):
        container.read(MAGIC[:2])


def test_future_version_is_a_clear_error():
    raw = bytearray(container.write(_stored(b"hello")))
    raw[4] = 99
    with pytest.raises(FormatError, match="newer.*upgrade"):
        container.read(bytes(raw))


def _sealed(head: bytes, body: bytes) -> bytes:
    """A file with correct CRCs, for testing the checks behind them."""
    return (head + struct.pack("<I", zlib.crc32(head)) + body
            + struct.pack("<I", zlib.crc32(body)))


def test_hostile_sizes_are_rejected_without_allocation():
    base = MAGIC + bytes([1, 2]) + uvarint(5) + checksum(b"hello")
    # A parameter block claiming 2^60 bytes, a segment count of 2^60, a huge original.
    for tail in (uvarint(1 << 60), uvarint(0) + uvarint(1 << 60)):
        with pytest.raises(FormatError, match="out of range"):
            container.read(base + tail + bytes(64))
    with pytest.raises(FormatError, match="out of range"):
        container.read(MAGIC + bytes([1, 0]) + uvarint(1 << 60) + bytes(64))
    with pytest.raises(FormatError, match="too long"):
        container.read(MAGIC + bytes([1, 0]) + b"\xff" * 12 + bytes(64))


def test_sealed_headers_that_lie_are_rejected():
    data = b"hello"
    seg = bytes([KIND_BINARY]) + uvarint(5) + digest(data)
    # A binary payload size larger than the file.
    head = (MAGIC + bytes([1, 2]) + uvarint(5) + checksum(data) + uvarint(0) + uvarint(1)
            + seg + bytes([METHOD_ZSTD]) + uvarint(1 << 40))
    with pytest.raises(FormatError, match="out of range"):
        container.read(_sealed(head, b"xx"))
    # Stored binary stream whose size differs from the segments'.
    head = (MAGIC + bytes([1, 2]) + uvarint(5) + checksum(data) + uvarint(0) + uvarint(1)
            + seg + bytes([METHOD_STORED]) + uvarint(3))
    with pytest.raises(FormatError, match="stored binary size"):
        container.read(_sealed(head, b"hel"))
    # A neural segment claiming more tokens than bytes.
    pp = container.pack_params({"a": 1})
    head = (MAGIC + bytes([1, 1]) + uvarint(5) + checksum(data) + uvarint(len(pp)) + pp
            + uvarint(1) + bytes([KIND_NEURAL]) + uvarint(5) + uvarint(10))
    with pytest.raises(FormatError, match="token count"):
        container.read(_sealed(head + digest(data) + uvarint(4), b"abcd"))
    # Flags that disagree with the segments.
    head = (MAGIC + bytes([1, 1]) + uvarint(5) + checksum(data) + uvarint(0) + uvarint(1)
            + seg + bytes([METHOD_STORED]) + uvarint(5))
    with pytest.raises(FormatError, match="flags"):
        container.read(_sealed(head, data))


def test_params_block_is_compact_for_the_default_model():
    params = {"model": {"name": "SmolLM2-135M-Instruct.Q4_1.gguf",
                        "sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
                        "size": 98362432}, "streams": [871]}
    assert len(container.pack_params(params)) < 40
    assert container.unpack_params(container.pack_params(params)) == params


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_never_crash_the_parser(blob):
    for candidate in (blob, MAGIC + bytes([1]) + blob, MAGIC + bytes([1, 3]) + blob):
        try:
            container.read(candidate)
        except FormatError:
            pass


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.integers(min_value=0), st.integers(min_value=0, max_value=255))
def test_mutations_of_a_valid_file_are_caught(data, pos, value):
    raw = bytearray(container.write(_stored(data)))
    pos %= len(raw)
    if raw[pos] == value:
        return
    raw[pos] = value
    with pytest.raises(FormatError):
        container.read(bytes(raw))
