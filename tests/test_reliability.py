"""Proof of reliability: the corruption matrix, fuzzing of the parser and decoder, and
determinism. Everything here is bounded in time; NACZ_FUZZ_EXAMPLES scales the fuzzing up
for a longer run (see README)."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from nacz import cli, codec, container
from nacz.errors import NaczError

from conftest import os_text

FUZZ_EXAMPLES = int(os.environ.get("NACZ_FUZZ_EXAMPLES", "150"))


@pytest.fixture(scope="module")
def small_hybrid() -> tuple[bytes, bytes]:
    """A small file with a neural and a binary segment, compressed with the real model."""
    original = os_text("GPL-2", 300) + bytes(range(32)) * 2 + os_text("MPL-2.0", 280)
    packed = codec.compress(original)
    kinds = [s.kind_name for s in container.read(packed).segments]
    assert "neural" in kinds and "binary" in kinds
    return original, packed


def _cli_decompress(tmp_path, raw: bytes, capsys) -> tuple[int, str]:
    src = tmp_path / "f.nc"
    src.write_bytes(raw)
    with pytest.raises(SystemExit) as e:
        cli.entry(["decompress", "-q", str(src)])
    err = capsys.readouterr().err
    return e.value.code, err


def test_corruption_matrix_every_byte_every_value(small_hybrid):
    """Every single-byte change (all 255 other values at every position) is refused."""
    original, packed = small_hybrid
    refused = 0
    for pos in range(len(packed)):
        for value in range(256):
            if value == packed[pos]:
                continue
            bad = packed[:pos] + bytes([value]) + packed[pos + 1:]
            with pytest.raises(NaczError):
                codec.decompress(bad)
            refused += 1
    assert refused == 255 * len(packed)


def test_corruption_matrix_through_the_cli(tmp_path, small_hybrid, capsys):
    """Through the CLI: every position changed, every truncation: exit 1, one line, no
    output file, no temporary file, input untouched."""
    _, packed = small_hybrid
    cases = [packed[:n] for n in range(len(packed))]
    cases += [packed[:i] + bytes([packed[i] ^ 0xA5]) + packed[i + 1:] for i in range(len(packed))]
    for raw in cases:
        code, err = _cli_decompress(tmp_path, raw, capsys)
        assert code == 1, err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("nacz: ") and "Traceback" not in err
        assert sorted(p.name for p in tmp_path.iterdir()) == ["f.nc"]
        assert (tmp_path / "f.nc").read_bytes() == raw


def _reseal(raw: bytes, mutate) -> bytes:
    """Apply a semantic mutation and write a container whose CRCs are valid again."""
    c = container.read(raw)
    mutate(c)
    return container.write(c)


@settings(max_examples=max(8, FUZZ_EXAMPLES // 10), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.data())
def test_fuzz_resealed_headers_never_give_wrong_bytes(small_hybrid, data):
    """Mutations behind valid CRCs (as a buggy or hostile writer would make): nacz either
    returns exactly the original or raises a one-line NaczError; never anything else."""
    original, packed = small_hybrid

    def mutate(c):
        what = data.draw(st.sampled_from(["param", "segment", "payload", "binary_method"]))
        if what == "param":
            path = data.draw(st.sampled_from([
                ("streams",), ("context", "window"), ("context", "slide"), ("context", "sinks"),
                ("tokenizer", "start_token"), ("tokenizer", "vocab_size"), ("level",),
                ("model", "size"), ("backend", "version")]))
            value = data.draw(st.one_of(st.integers(-5, 1 << 40), st.text(max_size=5),
                                        st.none(), st.lists(st.integers(0, 500), max_size=3)))
            target = c.params
            for key in path[:-1]:
                target = target[key]
            target[path[-1]] = value
        elif what == "segment":
            i = data.draw(st.integers(0, len(c.segments) - 1))
            s = c.segments[i]
            c.segments[i] = container.Segment(
                s.kind, s.orig_len, data.draw(st.integers(0, s.orig_len + 2)), s.digest)
        elif what == "payload":
            buf = bytearray(c.neural_payload)
            if buf:
                buf[data.draw(st.integers(0, len(buf) - 1))] ^= data.draw(st.integers(1, 255))
            c.neural_payload = bytes(buf)
        else:
            c.binary_method = data.draw(st.integers(0, 2))

    try:
        forged = _reseal(packed, mutate)
    except NaczError:
        return  # the writer itself refused an inconsistent container
    try:
        out = codec.decompress(forged)
    except NaczError as e:
        assert "\n" not in str(e)
        return
    assert out == original


@settings(max_examples=FUZZ_EXAMPLES * 4, deadline=None)
@given(st.binary(min_size=0, max_size=200), st.integers(0, 2))
def test_fuzz_parser_with_valid_crcs(body, flags):
    """Arbitrary header bodies sealed with a correct CRC: only FormatError, no allocation
    from a claimed size (the parser bounds every count by the bytes present)."""
    import struct
    import zlib
    head = container.MAGIC + bytes([1, flags]) + body
    raw = head + struct.pack("<I", zlib.crc32(head)) + struct.pack("<I", zlib.crc32(b""))
    try:
        container.read(raw)
    except NaczError:
        pass


def test_compressing_twice_gives_identical_bytes(small_hybrid):
    original, packed = small_hybrid
    assert codec.compress(original) == packed


def test_decompressing_with_other_thread_counts(small_hybrid):
    original, packed = small_hybrid
    for threads in (1, 2, 3):
        assert codec.decompress(packed, codec.Options(threads=threads)) == original
