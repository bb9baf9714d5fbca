"""The real constriction range coder, batched as the engine uses it."""

from __future__ import annotations

import numpy as np
import pytest

from nacz.coder import Decoder, Encoder, min_bits_per_symbol
from nacz.errors import FormatError


def test_batched_round_trip_and_cost():
    rng = np.random.default_rng(1)
    V, steps = 1000, 50
    encoder = Encoder()
    rows, symbols = [], []
    for t in range(steps):
        A = 4 if t < 40 else 2  # the active set shrinks at the end, as in the engine
        probs = rng.random((A, V)) ** 8
        probs /= probs.sum(axis=1, keepdims=True)
        sym = np.array([rng.choice(V, p=p) for p in probs], dtype=np.int32)
        encoder(sym, probs)
        rows.append(probs)
        symbols.append(sym)
    payload = encoder.finish()
    assert len(payload) % 4 == 0
    decoder = Decoder(payload, V)
    for probs, sym in zip(rows, symbols):
        assert np.array_equal(decoder(probs), sym)
    info = sum(-np.log2(p[np.arange(len(s)), s]).sum() for p, s in zip(rows, symbols))
    assert 8 * len(payload) <= info + 64  # within a few words of the information content


def test_min_bits_bound_is_positive_for_large_vocabularies():
    assert min_bits_per_symbol(49152) > 0.004
    assert min_bits_per_symbol(2) > 0


def test_payload_of_odd_length_is_rejected():
    with pytest.raises(FormatError):
        Decoder(b"\x00\x01\x02", 256)


def test_decoding_past_the_payload_is_stopped():
    """A header claiming far more tokens than a payload holds: decoding stops, loudly."""
    from nacz.errors import IntegrityError
    V = 49152
    probs = np.full((16, V), 1.0 / V)
    probs[:, 7] = 1.0  # very predictable symbols: each costs little
    probs /= probs.sum(axis=1, keepdims=True)
    enc = Encoder()
    enc(np.full(16, 7, dtype=np.int32), probs)
    dec = Decoder(enc.finish(), V)
    with pytest.raises(IntegrityError, match="more tokens|corrupt neural payload"):
        for _ in range(100000):
            dec(probs)
