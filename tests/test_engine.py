"""Stream layout of the step loop (the loop itself runs in test_codec with the real LLM)."""

from __future__ import annotations

import numpy as np
import pytest

from nacz import engine


def test_split_streams_is_contiguous_and_non_increasing():
    for n in (1, 2, 7, 100, 4097):
        for s in (1, 2, 3, 16):
            lengths = engine.split_streams(n, s)
            assert sum(lengths) == n
            assert all(a >= b for a, b in zip(lengths, lengths[1:]))
            assert len(lengths) == min(s, n)
    assert engine.split_streams(0, 4) == []


def test_active_counts_form_a_shrinking_prefix():
    assert engine.active_counts([3, 3, 2]).tolist() == [3, 3, 2]
    with pytest.raises(ValueError):
        engine.active_counts([2, 3])


class _Counting:
    """A deterministic stand-in *backend* (not the thing under test: the loop is) whose
    logits favour the previous token + 1, so the coded stream is checkable."""

    vocab_size = 50

    def reset(self, n):
        self.calls = []

    def step(self, tokens, want=None):
        self.calls.append(len(tokens))
        logits = np.zeros((len(tokens), self.vocab_size), dtype=np.float32)
        logits[np.arange(len(tokens)), (tokens + 1) % self.vocab_size] = 5.0
        return logits


def test_one_loop_two_directions_with_the_real_coder():
    from nacz.coder import Decoder, Encoder
    from nacz.models.ensemble import LLMOnly

    lengths = [5, 5, 4]
    streams = [np.array([3, 4, 5, 9, 1]), np.array([7, 8, 9, 10, 11]), np.array([0, 0, 1, 2])]
    matrix = np.zeros((3, 5), dtype=np.int32)
    for s, toks in enumerate(streams):
        matrix[s, :len(toks)] = toks
    enc, backend = Encoder(), _Counting()
    out = engine.run(backend, LLMOnly(50), lengths, 0,
                     lambda probs, t: enc(matrix[:probs.shape[0], t], probs))
    assert backend.calls == [3, 3, 3, 3, 2]
    dec = Decoder(enc.finish(), 50)
    back = engine.run(_Counting(), LLMOnly(50), lengths, 0, lambda probs, t: dec(probs))
    for a, b, c in zip(out, back, streams):
        assert a.tolist() == b.tolist() == c.tolist()
