"""Secondary estimation (SSE/APM, as in paq and cmix) of the LLM's favourite token.

The mixer's distribution q is calibrated as a whole (per-context weights on the LLM, the
counts and the bias head), but not per situation: how often the LLM's top token is right
after this token, or for this candidate, is something only counts can see. On a row with
the LLM and without a match prediction (the match model has its own split, match.py),
this stage takes the LLM's argmax token c, reads q's probability for it, and maps
stretch(q_c) to ph through two adaptive probability maps in a chain:

1. selected by the step's entropy bucket (the mixer's own context);
2. selected by a hash of (previous token, c), ``ctx_bits`` bits: per candidate and
   per situation.

The final probability is q_c + weight * (ph - q_c), the maps' estimate averaged with the
input as paq does with its APMs (weight 1, the maps alone, cost 0.1-0.7% on every input
measured; 0.25 gained 0.1-0.2% on all four: bench/results/2026-12-04-ratio.md); the
other tokens share the rest in proportion to q (the same split as the match model's,
mixer.normalize_split). The maps start as the identity (no change until they learn) and
learn count-based hit rates, shared by all streams, updated in stream order by both sides
alike.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from ..validation import ENSEMBLE as check
from .kernel_cache import refresh_kernel_cache
from .match import apm_init, apm_lookup

DEFAULT_POINTS = 24
DEFAULT_RANGE = 12.0
DEFAULT_LIMIT = 255  # a faster-moving rate than the match maps': the LLM's misses drift
DEFAULT_CTX_BITS = 12
DEFAULT_WEIGHT = 0.25  # the share of the maps' estimate in the final probability
MAX_CTX_BITS = 20
SPEC_KEYS = {"points", "range", "limit", "ctx_bits", "weight"}


def default_spec() -> dict:
    return {"points": DEFAULT_POINTS, "range": DEFAULT_RANGE, "limit": DEFAULT_LIMIT,
            "ctx_bits": DEFAULT_CTX_BITS, "weight": DEFAULT_WEIGHT}


def validate(spec: object) -> dict:
    d = check.obj(spec, "sse", SPEC_KEYS)
    return {"points": check.integer(d["points"], "points", 1, 256),
            "range": check.number(d["range"], "range", 0.5, 30.0),
            "limit": check.integer(d["limit"], "limit", 1, 1 << 30),
            "ctx_bits": check.integer(d["ctx_bits"], "ctx_bits", 1, MAX_CTX_BITS),
            "weight": check.number(d["weight"], "weight", 0.0, 1.0)}


class SseMaps:
    """The two stages' maps: n_ent entropy contexts, then 2**ctx_bits hashed ones."""

    def __init__(self, spec: dict, n_ent: int):
        self.spec = validate(spec)
        s = self.spec
        self.points = s["points"]
        self.range = s["range"]
        self.limit = s["limit"]
        self.weight = s["weight"]
        self.n_ent = int(n_ent)
        self.mask = (1 << s["ctx_bits"]) - 1
        n = (self.n_ent + (1 << s["ctx_bits"])) * (self.points + 1)
        self.t = np.zeros(n, dtype=np.float64)
        self.n = np.zeros(n, dtype=np.int64)
        self.reset()

    def reset(self) -> None:
        apm_init(self.t, self.n, self.points, self.range)

    @property
    def nbytes(self) -> int:
        return int(self.t.nbytes + self.n.nbytes)


@numba.njit(cache=True, nogil=True)
def row_top(row):
    """max(row) and the first index that has it (ties: the lowest token id)."""
    m = -math.inf
    k = 0
    for j in range(row.shape[0]):
        x = np.float64(row[j])
        if x > m:
            m = x
            k = j
    return m, k


@numba.njit(cache=True, nogil=True)
def context(prev, cand, mask):
    """Stage 2's context: a multiplicative hash of (previous token, candidate)."""
    h = (np.uint64(prev + 1) * np.uint64(0x9E3779B97F4A7C15)) ^ \
        (np.uint64(cand) * np.uint64(0xC2B2AE3D27D4EB4F))
    h ^= h >> np.uint64(29)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(32)
    return np.int64(h & np.uint64(mask))


@numba.njit(cache=True, nogil=True)
def sse_prob(t, n_ent, eb, ctx2, points, rng, weight, e_c, e_other, cells, cell_w):
    """P(candidate) through the chain, q giving it e_c against e_other for all other
    tokens; cells / cell_w get both stages' points for the update."""
    x = math.log(e_c / e_other)  # stretch(q_c), with no 1 - q_c to lose precision
    k1, w1, p1 = apm_lookup(t, eb, points, rng, x)
    k2, w2, p2 = apm_lookup(t, n_ent + ctx2, points, rng, math.log(p1 / (1.0 - p1)))
    cells[0] = k1
    cell_w[0] = w1
    cells[1] = k2
    cell_w[1] = w2
    q_c = e_c / (e_c + e_other)
    return q_c + weight * (p2 - q_c)


refresh_kernel_cache(globals())
