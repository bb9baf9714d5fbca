"""The context-selected, online-learned logit mixer (and the spec helpers all parts share).

Final logits of one stream at one step (the model ``q``)::

    z = w_llm[cw] * llm + sum_d w_dense[cw, d] * dense_d        (dense inputs, all of V)
        + b                                                      (the bias head)
        + sum_k (u[c, k] + v[g, k, q_k]) * ngram_k               (sparse: seen tokens only)
    q = softmax(z)

``llm`` is the LLM's logits (softmax is shift-invariant, so this is log_softmax(llm) up
to a constant); each ``dense_d`` is another model's log-probabilities (<= 0), e.g. the
SSM of a later issue. Weight sets are selected by small contexts:

* the n-gram weights ``u`` by ``c`` = this step's entropy bucket x match-length bucket.
  The entropy is that of the dense part softmax(w_llm*llm + b + ...), i.e. about the
  LLM's own, computed in the same pass over V that computes the dense exponentials (no
  pass of its own); so the per-order n-gram weights scale with the LLM's uncertainty
  (trust the counts more when the LLM is unsure);
* the dense weights (``w_llm``, ``w_dense``), needed *before* that pass, by ``cw`` = the
  stream's previous-step entropy bucket x match-length bucket;
* rows without the LLM (LLM-free mode, or the engine skipped it) use their own sets for
  both, one per match-length bucket, with no LLM input; in its place the log unigram
  counts of the bias head (a KT-style order-0 model).

``v[g, k, q]`` (g: with / without LLM) adds a per-order weight selected by the
confidence bucket q of the order's slot (total count x deterministic), shared by all c.

When the stream has a match, the final distribution *splits* q (``normalize_split``):
the predicted token gets the probability ph that adaptive probability maps (match.py;
per with/without LLM and match length) make of q's own probability for it, and the other
tokens share 1 - ph in proportion to q. The maps start as the identity and learn the hit
rates fast (count-based rates), where a learned logit boost for the match would need
hundreds of steps to grow.

Weights learn online by gradient descent on q's code length -log q_y (the split stage is
a post-processor with counts of its own); for an input f, d/dw = E_q[f] - f[y] (cheap for
sparse inputs; for dense inputs E_q[f] is accumulated in the same pass that computes q).
Weights are clamped to a fixed range.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from ..kernels import bucket  # noqa: F401  (the mixer's entropy buckets; re-exported)
from ..validation import ENSEMBLE as check
from .kernel_cache import refresh_kernel_cache

# Exponents are kept in [EXP_FLOOR, EXP_CEIL]: the ceiling is only reachable with absurd
# sparse boosts; together they keep every probability >= exp(-600) / V > 0 (normal, never
# zero) and every sum finite. exp(-300) is far below what the coder can resolve anyway.
EXP_FLOOR = -300.0
EXP_CEIL = 300.0


# -- the mixer's spec and weights ------------------------------------------------------
DEFAULT_ENT_EDGES = (0.25, 0.75, 1.5, 2.5, 4.0)  # nats: 6 entropy buckets
MAX_EDGES = 32
MAX_DENSE = 8


def default_spec(n_dense: int = 0) -> dict:
    return {
        "ent_edges": list(DEFAULT_ENT_EDGES),
        "lr": 0.01,
        "lr_llm": 0.001,
        "init_llm": 1.0,
        "init_ngram": 0.05,
        "init_ngram_free": 0.5,
        "init_dense": 0.5,
        "w_min": -2.0,
        "w_max": 8.0,
        "dense": n_dense,
    }


MIXER_KEYS = set(default_spec())


def validate(spec: object) -> dict:
    d = check.obj(spec, "mixer", MIXER_KEYS)
    out = {
        "ent_edges": check.increasing(check.numbers(d["ent_edges"], "ent_edges", 0.0, 20.0, 0,
                                                    MAX_EDGES),
                                "entropy edges"),
        "lr": check.number(d["lr"], "lr", 0.0, 1.0),
        "lr_llm": check.number(d["lr_llm"], "lr_llm", 0.0, 1.0),
        "init_llm": check.number(d["init_llm"], "init_llm", 0.0, 16.0),
        "init_ngram": check.number(d["init_ngram"], "init_ngram", -16.0, 16.0),
        "init_ngram_free": check.number(d["init_ngram_free"], "init_ngram_free", -16.0, 16.0),
        "init_dense": check.number(d["init_dense"], "init_dense", 0.0, 16.0),
        "w_min": check.number(d["w_min"], "w_min", -64.0, 0.0),
        "w_max": check.number(d["w_max"], "w_max", 0.0, 64.0),
        "dense": check.integer(d["dense"], "dense", 0, MAX_DENSE),
    }
    if not out["w_min"] <= out["init_ngram"] <= out["w_max"] or \
            not out["w_min"] <= out["init_ngram_free"] <= out["w_max"] or \
            not out["init_llm"] <= out["w_max"] or not out["init_dense"] <= out["w_max"]:
        raise check.error("initial mixer weights outside [w_min, w_max]")
    return out


class MixerWeights:
    """All learned mixer weights; shapes follow from the spec and the parts present."""

    def __init__(self, spec: dict, n_orders: int, n_conf: int, n_match_buckets: int):
        self.spec = validate(spec)
        s = self.spec
        self.ent_edges = np.array(s["ent_edges"], dtype=np.float64)
        self.n_ent = len(s["ent_edges"]) + 1
        self.n_mb = n_match_buckets
        self.n_llm_ctx = self.n_ent * self.n_mb
        self.n_ctx = self.n_llm_ctx + self.n_mb  # + the LLM-free contexts
        self.n_orders = max(1, n_orders)
        self.n_conf = n_conf
        self.n_dense = s["dense"]
        self.reset()

    def reset(self) -> None:
        s = self.spec
        self.w_llm = np.full(self.n_ctx, s["init_llm"], dtype=np.float64)
        self.w_llm[self.n_llm_ctx:] = 0.0
        self.w_dense = np.full((self.n_ctx, max(1, self.n_dense)), s["init_dense"])
        self.u = np.zeros((self.n_ctx, self.n_orders), dtype=np.float64)
        self.v = np.empty((2, self.n_orders, self.n_conf), dtype=np.float64)
        self.v[0] = s["init_ngram"]
        self.v[1] = s["init_ngram_free"]  # without the LLM the counts carry more

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.w_llm, self.w_dense, self.u, self.v))


# -- kernels ---------------------------------------------------------------------------
@numba.njit(cache=True, nogil=True)
def floored(z):
    """An exponent at least EXP_FLOOR (a NaN gets the floor)."""
    return z if z >= EXP_FLOOR else EXP_FLOOR


@numba.njit(cache=True, nogil=True)
def bounded(z):
    """An exponent within [EXP_FLOOR, EXP_CEIL] (a NaN gets the floor; the ceiling is
    reached only if a dense input is not a log-probability)."""
    if not z >= EXP_FLOOR:
        return EXP_FLOOR
    return EXP_CEIL if z > EXP_CEIL else z


@numba.njit(cache=True, nogil=True)
def clamp(x, lo, hi):
    """x within [lo, hi]; NaN gives lo (weights stay finite whatever the inputs)."""
    return lo if not x >= lo else (hi if x > hi else x)


@numba.njit(cache=True, nogil=True)
def row_max(row):
    m = -math.inf
    for j in range(row.shape[0]):
        x = np.float64(row[j])
        if x > m:
            m = x
    return m


@numba.njit(cache=True, nogil=True)
def _dense_z(llm, use_llm, wl, lmax, b, bmax, u0, u0max, dense, r, wd, n_dense, j):
    """The dense part of one exponent: (b - bmax) + wl*(llm - lmax) with the LLM, else
    (b - bmax) + (u0 - u0max) (u0: log unigram counts), then + sum_d wd*dense."""
    z = b[j] - bmax
    if use_llm:
        z += wl * (np.float64(llm[j]) - lmax)
    else:
        z += u0[j] - u0max
    for d in range(n_dense):
        z += wd[d] * np.float64(dense[d, r, j])
    return z


@numba.njit(cache=True, nogil=True)
def dense_pass(out, llm, use_llm, wl, lmax, b, bmax, u0, u0max, dense, r, wd, n_dense,
               mark, acc):
    """out[j] = exp(dense exponent of j) for all j (one pass, one exp per token).

    Exponents are shifted by an upper bound of their maximum (llm <= lmax, b <= bmax,
    dense inputs are log-probabilities <= 0 with weights >= 0), so none overflows; they
    are floored at EXP_FLOOR so none is zero. Returns the entropy (nats) of this dense
    distribution, softmax(wl*llm + b + sum_d wd*dense), which selects the sparse weights.
    acc gets the sums over the tokens *not* marked (the sparse pass adds the marked ones):
    acc[0] = sum e, acc[1] = sum e*llm, acc[2 + d] = sum e*dense_d."""
    n = out.shape[0]
    t_all = 0.0
    ez = 0.0
    t_rest = 0.0
    el = 0.0
    for d in range(n_dense):
        acc[2 + d] = 0.0
    if n_dense == 0 and use_llm:
        for j in range(n):
            x = np.float64(llm[j])
            z = wl * (x - lmax) + (b[j] - bmax)
            z = floored(z)
            e = math.exp(z)
            out[j] = e
            t_all += e
            ez += e * z
            if mark[j] == 0:
                t_rest += e
                el += e * x
    elif n_dense == 0:
        for j in range(n):
            z = (b[j] - bmax) + (u0[j] - u0max)
            z = floored(z)
            e = math.exp(z)
            out[j] = e
            t_all += e
            ez += e * z
            if mark[j] == 0:
                t_rest += e
    elif n_dense == 1:  # (e.g. the SSM) the general loop below, with scalar sums
        w0 = wd[0]
        d0 = dense[0, r]
        s0 = 0.0
        for j in range(n):
            y0 = np.float64(d0[j])
            z = b[j] - bmax
            x = 0.0
            if use_llm:
                x = np.float64(llm[j])
                z += wl * (x - lmax)
            else:
                z += u0[j] - u0max
            z += w0 * y0
            z = bounded(z)
            e = math.exp(z)
            out[j] = e
            t_all += e
            ez += e * z
            if mark[j] == 0:
                t_rest += e
                el += e * x
                s0 += e * y0
        acc[2] = s0
    else:
        for j in range(n):
            z = _dense_z(llm, use_llm, wl, lmax, b, bmax, u0, u0max, dense, r, wd, n_dense, j)
            z = bounded(z)
            e = math.exp(z)
            out[j] = e
            t_all += e
            ez += e * z
            if mark[j] == 0:
                t_rest += e
                if use_llm:
                    el += e * np.float64(llm[j])
                for d in range(n_dense):
                    acc[2 + d] += e * np.float64(dense[d, r, j])
    acc[0] = t_rest
    acc[1] = el
    return math.log(t_all) - ez / t_all


@numba.njit(cache=True, nogil=True)
def bias_exp(b, bmax, u0, u0max, ebuf):
    """ebuf = exp((b - bmax) + (u0 - u0max)), floored: the dense part of every row
    without the LLM and without dense inputs. It is the same for all such rows of a step
    (b only changes in update), so a step computes it once: LLM-free rows then cost no exp
    of their own."""
    for j in range(b.shape[0]):
        z = (b[j] - bmax) + (u0[j] - u0max)
        ebuf[j] = math.exp(floored(z))


@numba.njit(cache=True, nogil=True)
def copy_pass(out, ebuf, mark, acc):
    """dense_pass for a row without LLM or dense inputs, from bias_exp's ebuf: the same
    values and the same sums in the same order (so bit-identical), without the exps."""
    t_rest = 0.0
    for j in range(out.shape[0]):
        e = ebuf[j]
        out[j] = e
        if mark[j] == 0:
            t_rest += e
    acc[0] = t_rest
    acc[1] = 0.0


@numba.njit(cache=True, nogil=True)
def sparse_pass(out, llm, use_llm, wl, lmax, b, bmax, u0, u0max, dense, r, wd, n_dense, add,
                toks, n_toks, mark, acc, held):
    """Exact probabilities of the marked tokens: their dense exponent plus their sparse
    boost ``add``; each token once (mark 1 -> 2), in list order. Adds them to acc, except
    token ``held`` (-1: none), whose value is only written (normalize_split needs the
    other tokens' sum on its own)."""
    for i in range(n_toks):
        t = toks[i]
        if mark[t] != 1:
            continue
        mark[t] = 2
        z = _dense_z(llm, use_llm, wl, lmax, b, bmax, u0, u0max, dense, r, wd, n_dense,
                     t) + add[t]
        e = math.exp(bounded(z))
        out[t] = e
        if t == held:
            continue
        acc[0] += e
        if use_llm:
            acc[1] += e * np.float64(llm[t])
        for d in range(n_dense):
            acc[2 + d] += e * np.float64(dense[d, r, t])


@numba.njit(cache=True, nogil=True)
def normalize(out, acc, n_dense, sums):
    """out /= total; sums[0] = 1, sums[1] = E_p[llm], sums[2 + d] = E_p[dense_d]."""
    inv = 1.0 / acc[0]
    for j in range(out.shape[0]):
        out[j] *= inv
    sums[0] = 1.0
    sums[1] = acc[1] * inv
    for d in range(n_dense):
        sums[2 + d] = acc[2 + d] * inv


@numba.njit(cache=True, nogil=True)
def normalize_split(out, acc, llm, use_llm, dense, r, n_dense, sums, mt, ph):
    """The split: p[mt] = ph, every other token (1 - ph) * q / (1 - q[mt]).

    acc holds the sums over the tokens other than mt and out[mt] its exponential (see
    sparse_pass's ``held``), so 1 - q[mt] comes from a sum of the others, never from a
    difference. sums get E_q (q learns on its own code length). Returns q[mt] and
    1 - q[mt] (computed as the others' share, again no difference)."""
    e_mt = out[mt]
    other = acc[0]
    total = other + e_mt
    inv = 1.0 / total
    scale = (1.0 - ph) / other
    for j in range(out.shape[0]):
        out[j] *= scale
    out[mt] = ph
    sums[0] = 1.0
    el = acc[1]
    if use_llm:
        el += e_mt * np.float64(llm[mt])
    sums[1] = el * inv
    for d in range(n_dense):
        sums[2 + d] = (acc[2 + d] + e_mt * np.float64(dense[d, r, mt])) * inv
    return e_mt * inv, other * inv


refresh_kernel_cache(globals())
