"""The token alphabet of LLM-free segments (nacz/alphabet.py): the set of types that occur,
coded as a bitmap with the real range coder ahead of the tokens, and its use in files."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import os_text
from nacz import alphabet, codec, container
from nacz.coder import Decoder, Encoder
from nacz.errors import FormatError, IntegrityError, NaczError
from nacz.params import parse


def _code(types: np.ndarray, V: int, then: np.ndarray | None = None) -> bytes:
    enc = Encoder()
    bits = alphabet.bitmap(types, V)
    got = alphabet.code_bitmap(V, len(types), lambda p, i: enc.bits(bits[i:i + len(p)], p))
    assert np.array_equal(got, types)
    if then is not None:  # tokens after the bitmap, as in a file
        enc(then, np.full((len(then), len(types)), 1.0 / len(types)))
    return enc.finish()


def _decode(payload: bytes, V: int, K: int) -> np.ndarray:
    dec = Decoder(payload, K)
    return alphabet.code_bitmap(V, K, lambda p, i: dec.bits(p))


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 3000).flatmap(
    lambda V: st.tuples(st.just(V), st.sets(st.integers(0, V - 1), min_size=2, max_size=V))))
def test_bitmap_round_trips(case):
    V, members = case
    types = np.array(sorted(members), dtype=np.int32)
    assert np.array_equal(_decode(_code(types, V), V, len(types)), types)


@pytest.mark.parametrize("V,K", [(49152, 2), (49152, 2677), (49152, 20000), (49152, 49152),
                                 (5, 5), (1000, 999)])
def test_bitmap_costs_what_the_set_is_worth(V, K):
    """About log2(C(V, K)) bits: the ideal for a K-subset, plus the coder's few words
    and the loss from freezing the probability per block."""
    rng = np.random.default_rng(K)
    types = np.sort(rng.choice(V, K, replace=False)).astype(np.int32)
    payload = _code(types, V)
    ideal = (math.lgamma(V + 1) - math.lgamma(K + 1) - math.lgamma(V - K + 1)) / math.log(2)
    assert 8 * len(payload) <= ideal * 1.01 + 96
    assert np.array_equal(_decode(payload, V, K), types)


def test_tokens_follow_the_bitmap_in_one_payload():
    V = 49152
    types = np.array([3, 17, 400, 49151], dtype=np.int32)
    toks = np.array([0, 3, 2, 1, 1, 0], dtype=np.int32)
    payload = _code(types, V, toks)
    dec = Decoder(payload, len(types))
    assert np.array_equal(alphabet.code_bitmap(V, 4, lambda p, i: dec.bits(p)), types)
    assert np.array_equal(dec(np.full((6, 4), 0.25)), toks)


def test_a_bitmap_with_the_wrong_count_is_refused():
    V = 4096
    types = np.array([1, 2, 3, 100, 4000], dtype=np.int32)
    payload = _code(types, V)
    for claimed in (4, 6):  # a header that lies about the number of types
        with pytest.raises(IntegrityError):
            _decode(payload, V, claimed)
    rng = np.random.default_rng(0)
    refused = 0
    for _ in range(50):  # random payloads: refused, or some set of the claimed size
        junk = rng.integers(0, 1 << 32, 4, dtype=np.uint64).astype("<u4").tobytes()
        try:
            got = _decode(junk, V, 5)
            assert len(got) == 5 and np.all(np.diff(got) > 0)
        except IntegrityError:
            refused += 1
    assert refused > 0


def test_types_and_indices():
    toks = np.array([7, 7, 3, 9, 3], dtype=np.int32)
    types = alphabet.types_of(toks, 10)
    assert types.tolist() == [3, 7, 9]
    idx = alphabet.to_indices(toks, types)
    assert idx.tolist() == [1, 1, 0, 2, 0]
    assert alphabet.to_tokens(idx, types).tolist() == toks.tolist()
    assert alphabet.types_of(np.array([5, 5, 5]), 10).tolist() == [0, 5]  # padded to 2
    assert alphabet.types_of(np.array([0]), 10).tolist() == [0, 1]
    assert alphabet.types_of(np.array([], dtype=np.int32), 10).tolist() == [0, 1]
    with pytest.raises(ValueError):
        alphabet.to_indices(np.array([4]), types)
    with pytest.raises(ValueError):
        alphabet.types_of(np.array([10]), 10)


# -- in files (the real tokenizer; no LLM weights are evaluated) -------------------------
FREE = codec.Options(model=codec.LLM_FREE)


@pytest.fixture(scope="module")
def packed_prose() -> tuple[bytes, bytes]:
    data = os_text("GPL-3", 4000)
    return data, codec.compress(data, FREE)


def test_llm_free_files_code_tokens_among_the_types_that_occur(packed_prose):
    data, packed = packed_prose
    c = codec.inspect(packed)
    p = parse(c.params)
    assert p.backend_name == "none" and p.level == 1 and len(p.streams) == 1
    assert p.ensemble["mixer"]["preset"] == 3
    rt = codec.load_runtime(codec.LLM_FREE)
    n_types = len(np.unique(rt.tokenizer.tokenize(data)))
    assert p.alphabet == n_types < p.vocab_size
    assert codec.decompress(packed) == data


def _reseal(packed: bytes, mutate) -> bytes:
    c = codec.inspect(packed)
    params = dict(c.params)
    params["tokenizer"] = dict(params["tokenizer"])
    mutate(params)
    c.params = params
    return container.write(c)


@pytest.mark.parametrize("mutate,error", [
    (lambda p: p["tokenizer"].update(alphabet=p["tokenizer"]["alphabet"] + 1), IntegrityError),
    (lambda p: p["tokenizer"].update(alphabet=p["tokenizer"]["alphabet"] - 1), IntegrityError),
    (lambda p: p["tokenizer"].update(alphabet=1), FormatError),
    (lambda p: p["tokenizer"].update(alphabet=49153), FormatError),
    (lambda p: p["tokenizer"].update(alphabet="12"), FormatError),
    (lambda p: p["tokenizer"].pop("alphabet"), NaczError),
])
def test_a_header_that_lies_about_the_alphabet_is_refused(packed_prose, mutate, error):
    """Never wrong bytes: a changed count desynchronises the bitmap (refused there, or
    later by the checksums); without the field the tokens are read against the whole
    vocabulary, which the checksums refuse."""
    data, packed = packed_prose
    with pytest.raises(error):
        codec.decompress(_reseal(packed, mutate))


def test_an_alphabet_next_to_an_llm_is_refused(packed_prose):
    data, packed = packed_prose

    def with_llm(p):
        p["backend"] = dict(p["backend"], name="llama.cpp")

    with pytest.raises(FormatError, match="alphabet"):
        codec.decompress(_reseal(packed, with_llm))
