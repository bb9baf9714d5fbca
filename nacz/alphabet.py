"""The token alphabet of an LLM-free neural segment: the types that occur, coded up front.

Without an LLM nothing can predict a token type the input never uses, so the ensemble
need not span the whole vocabulary (49,152 types for SmolLM2) but only the K types that
occur (a few thousand in 100 KB of prose). The encoder sends that set first, as a
membership bitmap over the vocabulary, and then codes every token as its index in the
sorted set. All per-token passes (mixer, bias head, SSM output, coder) then run over K
entries instead of V, and no probability is spent on types that never come.

What it costs: the bitmap is coded with the range coder, bit i with probability
(types still to place) / (bits left), frozen per block of ``BLOCK`` bits so that a block
codes in one call: about log2(C(V, K)) bits, what the set is worth. In the ideal, the
full-vocabulary form paid the same in another way (each type's first occurrence told from
all unseen types of the vocabulary rather than of the set); measured, the set plus the
flat unigram of mixer preset 3 coded prose in fewer bits than the whole vocabulary did
(bench/results/design-figures.md).

Encoder and decoder run the same loop (``code_bitmap``), with the coder step as the only
difference, like the token loop of engine.py.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .errors import IntegrityError

BLOCK = 512  # bitmap bits per coder call (one probability per block)
MIN_TYPES = 2  # the ensemble needs an alphabet of at least two symbols


def types_of(tokens: np.ndarray, vocab_size: int) -> np.ndarray:
    """The sorted token types of ``tokens`` (int32), padded with the smallest unused
    types to at least MIN_TYPES."""
    types = np.unique(np.asarray(tokens, dtype=np.int64))
    if types.size and (types[0] < 0 or types[-1] >= vocab_size):
        raise ValueError("token outside the vocabulary")
    extra = MIN_TYPES - types.size
    if extra > 0:
        unused = np.setdiff1d(np.arange(min(vocab_size, MIN_TYPES + types.size)), types)
        types = np.sort(np.concatenate([types, unused[:extra]]))
    return types.astype(np.int32)


def to_indices(tokens: np.ndarray, types: np.ndarray) -> np.ndarray:
    """Each token's index in ``types`` (every token must be in it)."""
    idx = np.searchsorted(types, tokens).astype(np.int32)
    if idx.size and (idx.max() >= types.size or np.any(types[idx] != tokens)):
        raise ValueError("token outside the alphabet")
    return idx


def to_tokens(indices: np.ndarray, types: np.ndarray) -> np.ndarray:
    return types[indices]


# coder step: (bit probabilities of one block, offset of the block) -> the block's bits
BitStep = Callable[[np.ndarray, int], np.ndarray]


def code_bitmap(vocab_size: int, n_types: int, step: BitStep) -> np.ndarray:
    """The membership bitmap's loop, shared by both directions; returns the sorted types.

    Each block's bits get the probability that a bit is set given how many types are
    still to place in the bits left (exact at the block's start). Raises IntegrityError
    if the bits decoded do not hold exactly ``n_types`` types (a corrupt payload)."""
    if not MIN_TYPES <= n_types <= vocab_size:
        raise ValueError("alphabet size out of range")
    found = []
    placed = 0
    for start in range(0, vocab_size, BLOCK):
        n = min(BLOCK, vocab_size - start)
        left = max(0, n_types - placed)
        p = min(1.0, left / (vocab_size - start))
        bits = np.asarray(step(np.full(n, p, dtype=np.float64), start))
        ones = np.flatnonzero(bits)
        placed += ones.size
        found.append(ones + start)
    if placed != n_types:
        raise IntegrityError(f"corrupt neural payload (alphabet holds {placed} types, "
                             f"the header says {n_types})")
    return np.concatenate(found).astype(np.int32)


def bitmap(types: np.ndarray, vocab_size: int) -> np.ndarray:
    bits = np.zeros(vocab_size, dtype=np.int32)
    bits[types] = 1
    return bits
