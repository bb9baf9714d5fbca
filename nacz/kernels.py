"""Small numba kernels shared by several models (softmax of the LLM logits, buckets).

Everything whose result feeds the coder is computed here rather than with numpy: numpy
dispatches SIMD code by CPU, so its transcendental functions can differ between machines
(docs/design.md). No fastmath; reductions run in a fixed sequential order, single-threaded, so
results do not depend on the thread count or CPU features.
"""

from __future__ import annotations

import math

import numba
import numpy as np


@numba.njit(cache=True, fastmath=False, nogil=True)
def softmax_rows(logits: np.ndarray, out: np.ndarray) -> None:
    """Row-wise softmax of float32 logits (A, V) into float64 probabilities ``out``."""
    rows, cols = logits.shape
    for r in range(rows):
        m = -math.inf
        for j in range(cols):
            v = np.float64(logits[r, j])
            if v > m:
                m = v
        total = 0.0
        for j in range(cols):
            e = math.exp(np.float64(logits[r, j]) - m)
            out[r, j] = e
            total += e
        inv = 1.0 / total
        for j in range(cols):
            out[r, j] *= inv


@numba.njit(cache=True, nogil=True)
def bucket(x, edges):
    """Number of edges <= x (edges increasing): 0..len(edges)."""
    b = 0
    while b < edges.shape[0] and x >= edges[b]:
        b += 1
    return b
