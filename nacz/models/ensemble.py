"""Ensembles: turn backend logits into coding probabilities, learning as they go.

An ensemble is described by a plain dict (``spec``) that travels in the container header;
the decoder rebuilds the identical ensemble from it, never from its own defaults.
"""

from __future__ import annotations

import numpy as np

from ..errors import FormatError
from ..kernels import softmax_rows


class LLMOnly:
    """The LLM's own distribution: softmax of its logits. Learns nothing."""

    kind = "llm"

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size
        self._buf = np.zeros((0, vocab_size), dtype=np.float64)

    @property
    def spec(self) -> dict:
        return {"kind": self.kind}

    def reset(self, n_streams: int) -> None:
        self._buf = np.zeros((n_streams, self.vocab_size), dtype=np.float64)

    def predict(self, logits: np.ndarray) -> np.ndarray:
        out = self._buf[:logits.shape[0]]
        softmax_rows(logits, out)
        return out

    def update(self, tokens: np.ndarray) -> None:
        pass


def default_spec() -> dict:
    return {"kind": LLMOnly.kind}


def make_ensemble(spec: object, vocab_size: int) -> LLMOnly:
    """Build the ensemble a header describes; unknown kinds or keys are a format error."""
    if not isinstance(spec, dict) or spec.get("kind") != LLMOnly.kind or set(spec) != {"kind"}:
        raise FormatError(f"unsupported ensemble in header: {spec!r:.80}")
    return LLMOnly(vocab_size)
