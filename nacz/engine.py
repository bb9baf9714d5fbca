"""The one step loop, shared by compression and decompression.

S token streams advance in lockstep. At step t every stream that still has a token left
(the *active* streams, always a prefix 0..A-1 because stream lengths never increase with
the stream index) gets one prediction from the backend and the ensemble, and the coder
callback either encodes the known tokens or decodes the unknown ones. Both directions run
exactly this function; the callback is the only difference.
"""

from __future__ import annotations

from typing import Callable, Protocol, Sequence

import numpy as np


class Backend(Protocol):
    vocab_size: int

    def reset(self, n_streams: int) -> None: ...

    def step(self, tokens: np.ndarray) -> np.ndarray:
        """Feed one token to each of streams 0..len(tokens)-1; return their next-token
        logits as a float32 array of shape (len(tokens), vocab_size)."""


class Ensemble(Protocol):
    def reset(self, n_streams: int) -> None: ...

    def predict(self, logits: np.ndarray) -> np.ndarray:
        """Logits (A, V) of the active streams -> probabilities (A, V) float64."""

    def update(self, tokens: np.ndarray) -> None:
        """The true tokens of the active streams at this step (same order as predict)."""


# coder(probabilities (A, V), step index) -> the A tokens of this step
CoderStep = Callable[[np.ndarray, int], np.ndarray]


def split_streams(n_tokens: int, n_streams: int) -> list[int]:
    """Contiguous stream lengths, longest first, so the active set is always a prefix."""
    if n_tokens == 0:
        return []
    n_streams = max(1, min(n_streams, n_tokens))
    base, extra = divmod(n_tokens, n_streams)
    return [base + (1 if s < extra else 0) for s in range(n_streams)]


def active_counts(lengths: Sequence[int]) -> np.ndarray:
    """How many streams are active at each step."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.size == 0:
        return np.zeros(0, dtype=np.int64)
    if np.any(np.diff(lengths) > 0) or lengths.min() < 1:
        raise ValueError("stream lengths must be positive and non-increasing")
    steps = np.arange(int(lengths[0]))
    return (lengths[None, :] > steps[:, None]).sum(axis=1)


def run(backend: Backend, ensemble: Ensemble, lengths: Sequence[int], start_token: int,
        coder: CoderStep, progress: Callable[[int], None] | None = None) -> list[np.ndarray]:
    """Run the lockstep loop over streams of the given lengths; return each stream's tokens."""
    counts = active_counts(lengths)
    n_streams = len(lengths)
    backend.reset(n_streams)
    ensemble.reset(n_streams)
    out = np.zeros((n_streams, int(counts.size)), dtype=np.int32)
    prev = np.full(n_streams, start_token, dtype=np.int32)
    done = 0
    for t, active in enumerate(counts):
        active = int(active)
        logits = backend.step(prev[:active])
        probs = ensemble.predict(logits)
        tokens = np.asarray(coder(probs, t), dtype=np.int32)
        if tokens.shape != (active,):
            raise AssertionError("coder returned the wrong number of tokens")
        ensemble.update(tokens)
        out[:active, t] = tokens
        prev[:active] = tokens
        done += active
        if progress is not None:
            progress(done)
    return [out[s, :n].copy() for s, n in enumerate(lengths)]
