"""The container on its own: layout round trips and strict validation of hostile input."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings, strategies as st

from nacz import container
from nacz.container import (KIND_NEURAL, KIND_STORED, KIND_ZSTD, MAGIC, Container, Segment,
                            checksum, digest)
from nacz.errors import FormatError

PARAMS = {"ensemble": {"kind": "llm"}, "streams": [3], "note": "x" * 40}


def _stored(data: bytes) -> Container:
    segs = [Segment(KIND_STORED, len(data), len(data), digest(data))] if data else []
    return Container(len(data), checksum(data), segs, [data] if data else [])


def _hybrid() -> Container:
    a, b = b"binary\x00\x01", b"some text here"
    segs = [Segment(KIND_STORED, len(a), len(a), digest(a)),
            Segment(KIND_NEURAL, len(b), 4, digest(b))]
    return Container(len(a) + len(b), checksum(a + b), segs, [a], dict(PARAMS),
                     b"\x01\x02\x03\x04" * 3)


@pytest.mark.parametrize("make", [lambda: _stored(b""), lambda: _stored(b"x"),
                                  lambda: _stored(bytes(range(256))), _hybrid])
def test_round_trip(make):
    c = make()
    raw = container.write(c)
    back = container.read(raw)
    assert back.orig_len == c.orig_len and back.checksum == c.checksum
    assert back.segments == c.segments and back.payloads == c.payloads
    assert back.params == c.params and back.neural_payload == c.neural_payload
    assert raw.startswith(MAGIC)


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


def test_every_byte_flip_is_a_format_error():
    raw = container.write(_hybrid())
    for i in range(len(raw)):
        for mask in (0x01, 0x80, 0xFF):
            bad = bytearray(raw)
            bad[i] ^= mask
            with pytest.raises(FormatError):
                container.read(bytes(bad))


def test_trailing_garbage_is_rejected():
    raw = container.write(_stored(b"hello"))
    with pytest.raises(FormatError):
        container.read(raw + b"\x00")


def test_foreign_files_are_rejected():
    for foreign in (b"", b"\x8f", b"PK\x03\x04 zip file", b"\x28\xb5\x2f\xfd zstd",
                    b"NC06" + bytes(60)):
        with pytest.raises(FormatError, match="not a nacz file|truncated"):
            container.read(foreign)


def test_future_version_is_a_clear_error():
    raw = bytearray(container.write(_stored(b"hello")))
    raw[4] = 99
    with pytest.raises(FormatError, match="newer.*upgrade"):
        container.read(bytes(raw))


def _resealed(head: bytes) -> bytes:
    """A header with a correct CRC, for testing checks behind the CRC."""
    import zlib
    return head + struct.pack("<I", zlib.crc32(head))


def test_hostile_sizes_are_rejected_without_allocation():
    # A header claiming 2^32-1 segments and a huge parameter block: validated against the
    # bytes present before anything is allocated or looped over.
    base = MAGIC + struct.pack("<BBQ", 1, 0, 5) + checksum(b"hello")
    for tail in (struct.pack("<I", 0xFFFFFFFF),  # parameter block size
                 struct.pack("<I", 0) + struct.pack("<I", 0xFFFFFFFF)):  # segment count
        with pytest.raises(FormatError):
            container.read(base + tail + bytes(64))
    # Absurd original size.
    huge = MAGIC + struct.pack("<BBQ", 1, 0, 1 << 60) + bytes(200)
    with pytest.raises(FormatError, match="out of range"):
        container.read(huge)


def test_resealed_header_with_lying_segment_sizes_is_rejected():
    data = b"hello"
    head = (MAGIC + struct.pack("<BBQ", 1, 0, len(data)) + checksum(data)
            + struct.pack("<I", 0) + struct.pack("<I", 1)
            + struct.pack("<BQQ8s", KIND_ZSTD, len(data), 1 << 62, digest(data))
            + struct.pack("<Q", 0))
    with pytest.raises(FormatError):
        container.read(_resealed(head) + b"xx" + digest(b"xx"))
    # A neural segment claiming more tokens than bytes.
    head = (MAGIC + struct.pack("<BBQ", 1, 1, len(data)) + checksum(data)
            + struct.pack("<I", len(container.pack_params({"a": 1})))
            + container.pack_params({"a": 1}) + struct.pack("<I", 1)
            + struct.pack("<BQQ8s", KIND_NEURAL, len(data), 10, digest(data))
            + struct.pack("<Q", 4))
    with pytest.raises(FormatError, match="token count"):
        container.read(_resealed(head) + b"abcd" + digest(b"abcd"))


def test_params_block_is_compact_for_the_default_model():
    params = {"model": {"name": "SmolLM2-135M-Instruct.Q4_1.gguf",
                        "sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
                        "size": 98362432}, "streams": [871]}
    assert len(container.pack_params(params)) < 40
    assert container.unpack_params(container.pack_params(params)) == params


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_never_crash_the_parser(blob):
    for candidate in (blob, MAGIC + bytes([1]) + blob):
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
