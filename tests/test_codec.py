"""Library round trips with the real model, the real coder and real bytes."""

from __future__ import annotations

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings, strategies as st

from nacz import codec, container, engine
from nacz.errors import FormatError, IntegrityError, MismatchError

from conftest import os_text

TEXT = os_text("Apache-2.0", 600)  # short, non-repetitive prose: always coded neurally


def _rt(data: bytes, **kw) -> bytes:
    out = codec.compress(data, codec.Options(**kw))
    assert codec.decompress(out) == data
    return out


@pytest.mark.parametrize("data", [b"", b"a", b"\x00", bytes(range(256)), TEXT,
                                  "Unicode: Καλημέρα, мир, 世界, 😀 — fin.\n".encode() * 3])
def test_round_trip(data):
    _rt(data)


def test_text_is_coded_neurally_and_beats_zstd(english):
    out = _rt(english)
    c = codec.inspect(out)
    assert [s.kind_name for s in c.segments] == ["neural"]
    assert len(out) < 0.75 * len(zstandard.ZstdCompressor(level=19).compress(english))


def test_text_with_binary_inside_is_hybrid(english):
    data = english[:1000] + bytes(range(0, 32)) * 3 + b"\xff\xfe\x00" + english[1000:]
    out = _rt(data)
    kinds = [s.kind_name for s in codec.inspect(out).segments]
    assert kinds == ["neural", "binary", "neural"]


def test_pure_binary_never_much_larger_than_zstd():
    import random
    rnd = random.Random(5)
    for data in (bytes(rnd.getrandbits(8) for _ in range(3000)), bytes(5000),
                 b"\x00\x01\x02\x03" * 700):
        out = _rt(data)
        z = zstandard.ZstdCompressor(level=19).compress(data)
        assert len(out) <= min(len(z), len(data)) + 40  # container overhead only


@pytest.mark.parametrize("streams", [None, 3])
def test_compression_is_deterministic_and_thread_independent(streams):
    """Threads change neither llama.cpp's logits nor the ensemble's probabilities (with
    several streams its predict runs the rows on several threads)."""
    a = codec.compress(TEXT, codec.Options(threads=1, streams=streams))
    b = codec.compress(TEXT, codec.Options(threads=2, streams=streams))
    assert a == b
    assert codec.decompress(a, codec.Options(threads=2)) == TEXT
    assert codec.decompress(b, codec.Options(threads=1)) == TEXT


def test_several_streams_round_trip(english):
    out = _rt(english, streams=4, window=64, slide=32)
    p = codec.inspect(out).params
    assert len(p["streams"]) == 4 and p["context"]["window"] == 64


def test_every_parameter_comes_from_the_header(english):
    # Compress with a non-default window; decompress with default options.
    out = codec.compress(english, codec.Options(window=48, slide=20, sinks=2, streams=2))
    assert codec.inspect(out).params["context"] == {"window": 48, "slide": 20, "sinks": 2}
    assert codec.decompress(out, codec.Options()) == english


def _reseal_with_params(raw: bytes, edit) -> bytes:
    """Rewrite a container's parameter block (with a correct CRC) to simulate a file made
    elsewhere."""
    c = container.read(raw)
    edit(c.params)
    return container.write(c)


def test_another_model_is_refused_before_decoding(other_model, monkeypatch):
    out = codec.compress(TEXT, codec.Options(model=other_model))
    assert codec.decompress(out, codec.Options(model=other_model)) == TEXT

    def no_decoding(*a, **k):
        raise AssertionError("decoding started")

    monkeypatch.setattr(engine, "run", no_decoding)
    with pytest.raises(MismatchError, match="smollm2-q8_0.gguf.*--model"):
        codec.decompress(out)


def test_fingerprint_mismatch_is_refused_before_decoding(monkeypatch):
    out = codec.compress(TEXT)
    bad = _reseal_with_params(out, lambda p: p["backend"].update(
        fingerprint="0" * 32, cpu="SSE3,SSSE3", version="0.0.1"))
    monkeypatch.setattr(engine, "run", lambda *a, **k: pytest.fail("decoding started"))
    with pytest.raises(MismatchError, match="fingerprint.*0.0.1.*SIMD level.*SSSE3 in the file"):
        codec.decompress(bad)


def test_bad_parameters_are_format_errors():
    out = codec.compress(TEXT)
    edits = [lambda p: p.update(extra=1), lambda p: p["context"].update(window=1),
             lambda p: p.update(streams=[1, 5]), lambda p: p.update(streams=[10**6]),
             lambda p: p["ensemble"].update(kind="future"), lambda p: p.pop("coder")]
    for edit in edits:
        with pytest.raises(FormatError):
            codec.decompress(_reseal_with_params(out, edit))


def test_the_default_reads_the_llm_hidden_state_and_says_so_in_the_header():
    """With an LLM the default ensemble is preset 5 (the low-rank correction from the
    hidden state), whose header names the model's hidden size; a wrong size is a format
    error and a file claiming preset 4 instead fails its fingerprint, both before
    decoding."""
    out = codec.compress(TEXT)
    mixer = codec.inspect(out).params["ensemble"]["mixer"]
    assert mixer["preset"] == 5 and mixer["hidden"] == 576
    assert codec.decompress(out) == TEXT
    for size in (575, 577, 0, "576"):
        bad = _reseal_with_params(out, lambda p: p["ensemble"]["mixer"].update(hidden=size))
        with pytest.raises(FormatError):
            codec.decompress(bad)

    def preset_4(p):
        del p["ensemble"]["mixer"]["hidden"]
        p["ensemble"]["mixer"]["preset"] = 4

    with pytest.raises(MismatchError, match="fingerprint"):
        codec.decompress(_reseal_with_params(out, preset_4))


def test_absurd_token_count_is_refused_before_decoding(monkeypatch):
    c = container.read(codec.compress(TEXT))
    seg = c.segments[0]
    assert seg.kind_name == "neural"
    claim = 10**6  # a million tokens from a payload of a few hundred bytes
    c.segments[0] = container.Segment(seg.kind, claim, claim, seg.digest)
    c.orig_len = claim
    c.params["streams"] = [claim]
    monkeypatch.setattr(engine, "run", lambda *a, **k: pytest.fail("decoding started"))
    with pytest.raises(FormatError, match="more tokens than the payload"):
        codec.decompress(container.write(c))


def test_wrong_result_is_never_returned():
    # A payload that passes the container checks but decodes to other tokens: forge the
    # neural payload and reseal the file (as an attacker or a bug would).
    out = codec.compress(TEXT)
    c = container.read(out)
    payload = bytearray(c.neural_payload)
    payload[0] ^= 0x55
    c.neural_payload = bytes(payload)
    with pytest.raises(IntegrityError):
        codec.decompress(container.write(c))


@pytest.mark.parametrize("data", [bytes(4000), bytes(range(256)) * 40])
def test_corrupt_binary_stream_is_a_format_error(data):
    c = container.read(codec.compress(data))
    assert c.binary_method != container.METHOD_STORED
    c.binary_payload = bytes(len(c.binary_payload))
    with pytest.raises((FormatError, IntegrityError)):
        codec.decompress(container.write(c))


@pytest.mark.parametrize("data", [bytes(100000), bytes(range(256)) * 400])
def test_decompression_bombs_are_bounded(data):
    # A binary stream that holds more than the header claims must not be trusted.
    c = container.read(codec.compress(data))
    seg = c.segments[0]
    c.segments[0] = container.Segment(seg.kind, 10, 0, container.digest(data[:10]))
    c.orig_len = 10
    c.checksum = container.checksum(data[:10])
    with pytest.raises(FormatError, match="more data than declared|wrong decompressed size"):
        codec.decompress(container.write(c))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=90).map(str.encode),
    st.binary(max_size=40)), max_size=4).map(b"".join))
def test_property_round_trip(data):
    assert codec.decompress(codec.compress(data)) == data
