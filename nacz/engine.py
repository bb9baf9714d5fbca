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
    hidden_size: int

    def reset(self, n_streams: int, hidden: bool = False) -> None:
        """Fresh streams; ``hidden``: keep each step's final hidden states as well."""

    def hidden_states(self, n_active: int) -> np.ndarray:
        """The last step's final hidden states, float32 (n_active, hidden_size)."""

    def step(self, tokens: np.ndarray, want: np.ndarray | None = None) -> np.ndarray:
        """Feed one token to each of streams 0..len(tokens)-1; return their next-token
        logits as a float32 array of shape (len(tokens), vocab_size). Rows where ``want``
        is False are not computed (their contents are undefined)."""


class Ensemble(Protocol):
    hidden_size: int  # > 0: predict takes the LLM's hidden states too

    def reset(self, n_streams: int) -> None: ...

    def wants_llm(self, n_active: int) -> np.ndarray | None:
        """Which active streams need LLM logits at this step (None: all of them)."""

    def predict(self, logits: np.ndarray | None, want: np.ndarray | None = None,
                n_active: int | None = None, hidden: np.ndarray | None = None) -> np.ndarray:
        """Logits (A, V) of the active streams (None without an LLM) and, if it takes
        them, their hidden states -> probabilities (A, V) float64."""

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


def run(backend: Backend | None, ensemble: Ensemble, lengths: Sequence[int], start_token: int,
        coder: CoderStep, progress: Callable[[int], None] | None = None,
        stats: dict | None = None) -> list[np.ndarray]:
    """Run the lockstep loop over streams of the given lengths; return each stream's tokens.
    ``backend`` None means no LLM (the ensemble predicts alone). ``stats``, if given,
    receives counters (LLM rows asked for, rows skipped)."""
    counts = active_counts(lengths)
    n_streams = len(lengths)
    hidden_size = getattr(ensemble, "hidden_size", 0) if backend is not None else 0
    if backend is not None:
        if hidden_size:
            if backend.hidden_size != hidden_size:
                raise ValueError(f"the ensemble reads hidden states of size {hidden_size}, "
                                 f"the model has {backend.hidden_size}")
            backend.reset(n_streams, hidden=True)
        else:
            backend.reset(n_streams)
    ensemble.reset(n_streams)
    asked = skipped = 0
    out = np.zeros((n_streams, int(counts.size)), dtype=np.int32)
    prev = np.full(n_streams, start_token, dtype=np.int32)
    done = 0
    for t, active in enumerate(counts):
        active = int(active)
        logits = want = hidden = None
        if backend is not None:
            want = ensemble.wants_llm(active)
            # Every token enters the LLM's context, wanted or not: only the logits of
            # confident streams are skipped, so both sides keep identical KV caches.
            logits = backend.step(prev[:active], want)
            n_want = active if want is None else int(want.sum())
            asked += n_want
            skipped += active - n_want
            if hidden_size:
                hidden = backend.hidden_states(active)
        probs = ensemble.predict(logits, want, n_active=active, hidden=hidden)
        tokens = np.asarray(coder(probs, t), dtype=np.int32)
        if tokens.shape != (active,):
            raise AssertionError("coder returned the wrong number of tokens")
        ensemble.update(tokens)
        out[:active, t] = tokens
        prev[:active] = tokens
        done += active
        if progress is not None:
            progress(done)
    if stats is not None:
        stats.update(llm_rows=asked, skipped_rows=skipped)
    return [out[s, :n].copy() for s, n in enumerate(lengths)]
