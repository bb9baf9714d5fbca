"""Log-space bias head: one per-token logit bias b (V,) shared by all streams.

It is added to the mixer's logits with weight 1 and learns by online gradient descent on
the code length: ``b -= lr * (p - onehot(y))`` for every active stream, in stream order
(for a row whose match splits the distribution, the gradient of the model q the head is
part of, see mixed.py). It corrects what the LLM and the counts get systematically wrong
for this input (e.g. tokens that are frequent here).

It also keeps token counts: u0 = log(count + alpha0), a KT-style unigram that rows
without the LLM use in its place; there b learns on top of it (at ``lr_free``).
"""

from __future__ import annotations

import math

import numba
import numpy as np

from ..validation import ENSEMBLE as check
from .kernel_cache import refresh_kernel_cache

B_MIN, B_MAX = -30.0, 30.0


@numba.njit(cache=True, nogil=True)
def _row_coefs(p, lr, mt, split, qs, qmt):
    """The step of one row, as coefficients: b -= c * p; b[mt] += fix; b[y] += lr.

    The head learns the model q it is part of: the gradient of -log q_y, (q - onehot(y)).
    For a plain row q = p; for a split row (mixed.py) q = p * qs except q[mt] = qmt."""
    if not split:
        return lr, 0.0
    c = lr * qs
    return c, c * p[mt] - lr * qmt


@numba.njit(cache=True, nogil=True)
def bias_update(b, probs, tokens, A, lr, mix_tok, mix_ph, mix_s, mix_q, has_llm, lr_free):
    """One gradient step per row r = 0..A-1 in order (see _row_coefs), each value kept
    in [B_MIN, B_MAX]; rows without the LLM step with ``lr_free`` (there the head sits on
    the unigram counts and must learn fast; with the LLM it only corrects it). Returns an
    upper bound of max(b) (exact for plain rows); the last row's pass finds it, so one
    stream costs one pass over V."""
    n = b.shape[0]
    for r in range(A):
        p = probs[r]
        y = tokens[r]
        mt = mix_tok[r]
        up = lr if has_llm[r] else lr_free
        c, fix = _row_coefs(p, up, mt, mix_ph[r] > 0.0, mix_s[r], mix_q[r])
        last = r == A - 1
        bmax = -np.inf
        if last:
            for j in range(n):
                x = b[j] - c * p[j]
                if x < B_MIN:
                    x = B_MIN
                b[j] = x
                if x > bmax:
                    bmax = x
        else:
            for j in range(n):
                x = b[j] - c * p[j]
                b[j] = B_MIN if x < B_MIN else x
        if fix != 0.0:
            b[mt] = min(max(b[mt] + fix, B_MIN), B_MAX)
        b[y] = min(b[y] + up, B_MAX)
        if last:
            bmax = max(bmax, b[y])
            if fix > 0.0:
                bmax = max(bmax, b[mt])
            return bmax
    return 0.0


@numba.njit(cache=True, nogil=True)
def unigram_update(counts, u0, alpha0, u0max, tokens, A):
    """Count each row's token; u0[y] = log(count + alpha0) (libm). Returns max(u0)."""
    for r in range(A):
        y = tokens[r]
        counts[y] += 1.0
        x = math.log(counts[y] + alpha0)
        u0[y] = x
        if x > u0max:
            u0max = x
    return u0max


def default_spec(lr: float = 0.002, lr_free: float = 0.02, alpha0: float = 0.02) -> dict:
    return {"lr": lr, "lr_free": lr_free, "alpha0": alpha0}


def validate(spec: object) -> dict:
    d = check.obj(spec, "bias", {"lr", "lr_free", "alpha0"})
    return {"lr": check.number(d["lr"], "lr", 0.0, 1.0),
            "lr_free": check.number(d["lr_free"], "lr_free", 0.0, 1.0),
            "alpha0": check.number(d["alpha0"], "alpha0", 1e-4, 1e4)}


class BiasHead:
    def __init__(self, spec: dict, vocab_size: int):
        self.spec = validate(spec)
        self.lr = self.spec["lr"]
        self.lr_free = self.spec["lr_free"]
        self.alpha0 = self.spec["alpha0"]
        self.b = np.zeros(vocab_size, dtype=np.float64)
        self.bmax = 0.0
        # the unigram: token counts and their logs (the LLM-free rows' dense input)
        self.counts = np.zeros(vocab_size, dtype=np.float64)
        self.u0 = np.zeros(vocab_size, dtype=np.float64)
        self.u0max_arr = np.zeros(1, dtype=np.float64)
        self.reset()

    @property
    def u0max(self) -> float:
        return float(self.u0max_arr[0])

    def reset(self) -> None:
        self.b.fill(0.0)
        self.bmax = 0.0
        self.counts.fill(0.0)
        self.u0.fill(_log(self.alpha0))
        self.u0max_arr[0] = _log(self.alpha0)

    def update(self, probs: np.ndarray, tokens: np.ndarray) -> None:
        """Plain rows only (the ensemble passes its mixture rows to the kernel itself)."""
        A = len(tokens)
        none = np.zeros(A, dtype=np.float64)
        self.bmax = bias_update(self.b, probs, tokens, A, self.lr,
                                np.full(A, -1, dtype=np.int32), none, none, none,
                                np.ones(A, dtype=np.bool_), self.lr_free)

    @property
    def nbytes(self) -> int:
        return int(self.b.nbytes + self.counts.nbytes + self.u0.nbytes)


@numba.njit(cache=True, nogil=True)
def _log(x):
    return math.log(x)  # libm, like every value that feeds a probability


refresh_kernel_cache(globals())
