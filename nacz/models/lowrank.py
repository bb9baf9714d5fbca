"""Online low-rank correction of the LLM's logits from its final hidden state.

The bias head (bias.py) corrects the LLM the same way in every context. This part makes
the correction depend on the context through the LLM's own final hidden state h (the
normalised state its output layer reads; llama.cpp returns it next to the logits)::

    u = h / |h|                       (unit length: the scale carries no information here)
    z = B u                           (rank R: B is R x d, seeded, learned)
    delta_j = sum_k A[j, k] z_k       (A is V x R, zero at the start: no change until it
                                       learns; a token's row is stored in the order of
                                       first use)

delta is added to the bias head's b in the row's exponent (mixer.py), so it is part of
the model q the mixer's gradient describes. Both factors learn online by gradient
descent on q's code length, one row at a time in stream order, by both sides alike:
with g = q - onehot(y) (for a split row, the gradient the bias head uses, bias.py),
A -= lr * outer(g, z) and B -= lr_hidden * outer(A^T g, u) (with A before its step).

Sparse by design: a row's step skips the tokens with q_j < min_q (other than the coded
token and the split token), whose step would be tiny, so only tokens the model once
found likely (or saw) ever get a row of A (rows are kept in order of first use, so
they are read in memory order), and delta is computed for those only (every other
token's is exactly 0). That keeps the cost per row to a copy of b, a pass over q and
the tokens used so far, instead of R passes over V (a dense A of rank 8 cost about
0.35 ms per row on a 2-core AMD EPYC: A is 3 MB).

Sums run in a fixed order: over k (R terms) for delta, over i (d terms) for z, over the
selected tokens in index order for A^T g. No fastmath, no libm beyond sqrt (exact in
IEEE). Values are kept in [-CLIP, CLIP] so a header cannot make them overflow.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from ..validation import ENSEMBLE as check
from .kernel_cache import refresh_kernel_cache
from .ssm.seeding import block_key, uniform

DEFAULT_RANK = 8
DEFAULT_LR = 0.02  # 0.002 / 0.01 / 0.02 / 0.03: 0.02 best or within 0.1% on four inputs
DEFAULT_LR_HIDDEN = 0.05  # 0 / 0.001 / 0.05 / 0.1: 0.05 gained 1% on the log
DEFAULT_INIT = 1.0  # B's seeded entries are uniform with this standard deviation
DEFAULT_SEED = 1
DEFAULT_MIN_Q = 1e-4
MAX_RANK = 64
MAX_HIDDEN = 16384
CLIP = 64.0
SPEC_KEYS = {"rank", "lr", "lr_hidden", "init", "seed", "min_q", "hidden"}


def default_spec(hidden: int) -> dict:
    """The defaults for an LLM whose hidden state has ``hidden`` entries."""
    return {"rank": DEFAULT_RANK, "lr": DEFAULT_LR, "lr_hidden": DEFAULT_LR_HIDDEN,
            "init": DEFAULT_INIT, "seed": DEFAULT_SEED, "min_q": DEFAULT_MIN_Q,
            "hidden": hidden}


def validate(spec: object) -> dict:
    d = check.obj(spec, "lowrank", SPEC_KEYS)
    return {"rank": check.integer(d["rank"], "rank", 1, MAX_RANK),
            "lr": check.number(d["lr"], "lr", 0.0, 1.0),
            "lr_hidden": check.number(d["lr_hidden"], "lr_hidden", 0.0, 1.0),
            "init": check.number(d["init"], "init", 0.0, 16.0),
            "seed": check.integer(d["seed"], "seed", 0, (1 << 63) - 1),
            "min_q": check.number(d["min_q"], "min_q", 0.0, 1.0),
            "hidden": check.integer(d["hidden"], "hidden", 1, MAX_HIDDEN)}


def initial_b(spec: dict, hidden: int) -> np.ndarray:
    """B's seeded start: exact float32 uniforms in [-1, 1) (seeding.uniform, the same on
    every platform), times init * sqrt(3) for a standard deviation of ``init``; so z's
    entries start with a standard deviation of about ``init`` for any unit u."""
    R = spec["rank"]
    u = uniform(block_key(spec["seed"], 0), 0, R * hidden).astype(np.float64)
    return (u * (spec["init"] * math.sqrt(3.0))).reshape(R, hidden)


class LowRank:
    """The two factors (shared by all streams), the list of tokens with a row of A, and
    each stream's u and z of this step."""

    def __init__(self, spec: dict, vocab_size: int):
        self.spec = validate(spec)
        s = self.spec
        self.rank, self.lr, self.lr_hidden = s["rank"], s["lr"], s["lr_hidden"]
        self.min_q = s["min_q"]
        self.hidden = s["hidden"]
        self.vocab_size = vocab_size
        self.a = np.zeros((vocab_size, self.rank), dtype=np.float64)
        self.b = np.zeros((self.rank, self.hidden), dtype=np.float64)
        # the tokens with a row of A: slot[j] is token j's row (-1: none, so delta_j = 0),
        # order[i] the token of row i, n_used[0] the number of rows
        self.slot = np.full(vocab_size, -1, dtype=np.int32)
        self.order = np.zeros(vocab_size, dtype=np.int32)
        self.n_used = np.zeros(1, dtype=np.int64)
        self.gz = np.zeros(self.rank, dtype=np.float64)  # scratch: A^T g of one row
        self.sel = np.zeros(vocab_size, dtype=np.int32)  # scratch: a row's selected tokens
        self.lbuf = np.zeros(vocab_size, dtype=np.float64)  # scratch: b + A z of a row
        self.reset(1)

    def reset(self, n_streams: int) -> None:
        self.a.fill(0.0)
        self.b[...] = initial_b(self.spec, self.hidden)
        self.slot.fill(-1)
        self.n_used[0] = 0
        S = max(1, int(n_streams))
        self.u = np.zeros((S, self.hidden), dtype=np.float64)
        self.z = np.zeros((S, self.rank), dtype=np.float64)

    @property
    def nbytes(self) -> int:
        return int(self.a.nbytes + self.b.nbytes + self.u.nbytes + self.z.nbytes
                   + self.lbuf.nbytes + self.sel.nbytes + self.slot.nbytes
                   + self.order.nbytes)


@numba.njit(cache=True, nogil=True)
def features(bm, h, u, z):
    """u = h / |h| (all zero for a zero or non-finite |h|: a NaN or inf entry must not
    reach A and B, where it would stay for the rest of the block) and z = B u, sums in
    index order."""
    d = h.shape[0]
    s = 0.0
    for i in range(d):
        x = np.float64(h[i])
        s += x * x
    inv = 1.0 / math.sqrt(s) if s > 0.0 and s < math.inf else 0.0
    for i in range(d):
        u[i] = np.float64(h[i]) * inv if inv > 0.0 else 0.0
    for k in range(bm.shape[0]):
        t = 0.0
        for i in range(d):
            t += bm[k, i] * u[i]
        z[k] = t


@numba.njit(cache=True, nogil=True)
def corrected_bias(a, order, n_used, z, b, bmax, out):
    """out = b + delta (per token with a row: b, then the R terms in order; every other
    token's delta is zero). Returns an upper bound of max(out) (bmax: one of max(b))."""
    R = a.shape[1]
    for j in range(b.shape[0]):
        out[j] = b[j]
    m = bmax
    for i in range(n_used[0]):
        j = order[i]
        t = b[j]
        for k in range(R):
            t += a[i, k] * z[k]
        out[j] = t
        if t > m:
            m = t
    return m


@numba.njit(cache=True, nogil=True)
def _clip(x):
    return -CLIP if not x >= -CLIP else (CLIP if x > CLIP else x)


@numba.njit(cache=True, nogil=True)
def learn_row(a, bm, slot, order, n_used, sel, u, z, gz, p, c, fix, mt, y, lr, lr_hidden,
              min_q):
    """One row's step. The gradient g of -log q_y with respect to delta, in the bias
    head's coefficients (bias._row_coefs with lr 1): g = c p, g[mt] -= fix, g[y] -= 1,
    taken on the tokens with q_j = c p_j >= min_q, mt and y (in index order)."""
    R = a.shape[1]
    ns = 0
    for j in range(p.shape[0]):
        if c * p[j] >= min_q or j == y or j == mt:
            sel[ns] = j
            ns += 1
    for k in range(R):
        gz[k] = 0.0
    for i in range(ns):
        j = sel[i]
        g = c * p[j]
        if j == mt:
            g -= fix
        if j == y:
            g -= 1.0
        row = slot[j]
        if row < 0:  # its first step: a new row (zero until now)
            row = n_used[0]
            slot[j] = row
            order[row] = j
            n_used[0] = row + 1
        for k in range(R):
            x = a[row, k]
            gz[k] += g * x
            a[row, k] = _clip(x - lr * g * z[k])
    if lr_hidden > 0.0:
        for k in range(R):
            s = lr_hidden * gz[k]
            bk = bm[k]
            for i in range(bk.shape[0]):
                bk[i] = _clip(bk[i] - s * u[i])


refresh_kernel_cache(globals())
