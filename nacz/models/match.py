"""Match model (LZP-style): predict the token that followed the last occurrence of the
current context, with a confidence that grows with the match length.

History: ONE ring buffer shared by all streams, in the order tokens are seen (step by
step, streams 0..A-1 within a step), so a stream can match text any stream has seen
(streams are contiguous parts of one input: boilerplate repeats across them). Each stored
token links to the previous and next token *of its own stream* (16-bit deltas: in
lockstep, consecutive tokens of a stream are at most 256 positions apart), so a match
follows one stream's text although the buffer interleaves streams. Positions are
absolute (int64); the ring keeps the last ``2**capacity_bits`` tokens and a position
older than that is invalid (its slot was overwritten), which every read checks. The spec
sizes the ring from the input length (no wrap for inputs that fit), within a memory cap.

A hash table maps the hash of the last ``min_len`` tokens of a stream to the most recent
position where that context ended. When a stream has no match, each update looks its
context up; a candidate is verified token by token backwards (up to ``verify`` tokens,
which also gives the initial length) and accepted if at least ``min_len`` agree. A match
then extends by one on every correct prediction and ends on a miss.

The prediction enters the final distribution through a *split* (see
mixer.normalize_split): P(predicted token) = APM2[g, lb](APM1[g](q_mt)), two adaptive
probability maps in a chain applied to the model's own probability q_mt for the token:
the first per group g (with / without LLM), the second per g x length bucket (``edges``)
refining it. An APM is a piecewise-linear function of stretch(p) = log(p / (1 - p)) on
``apm_points`` + 1 points over [-apm_range, apm_range] (interpolated in the stretch
domain, its points moved in the probability domain); it starts as the identity (so it
changes nothing until it has learned) and is moved towards each outcome at the rate
1 / (n + 1.5) of its points' counts n (capped at ``limit``, to keep following changes).
The chain shares what one length bucket learned with the others (a new bucket starts
from the shared map, not from scratch).
Per length bucket hit statistics (integers, over all rows) drive ``confident`` (the
engine's LLM skip, decided before the LLM's q_mt is known).
"""

from __future__ import annotations

import math

import numba
import numpy as np

from ..kernels import bucket
from ..validation import ENSEMBLE as check
from .kernel_cache import refresh_kernel_cache
from .ngram import MAX_ORDER, fmix64, ring_token

MAX_LEN = 65535
MIN_BITS, MAX_BITS = 4, 26
MIN_CAP_BITS, MAX_CAP_BITS = 4, 28
DEFAULT_MIN_LEN = 5
DEFAULT_EDGES = (1, 8, 12, 16, 24, 32, 48, 64, 128)
DEFAULT_MAX_BYTES = 96 << 20
BYTES_PER_TOKEN = 8             # token int32, prv and nxt uint16 deltas
BYTES_PER_SLOT = 8              # int64 position
STATS_HALVE = 1 << 16
DEFAULT_APM_POINTS = 24
DEFAULT_APM_RANGE = 12.0
DEFAULT_LIMIT = 1023
PH_MIN, PH_MAX = 1e-6, 1.0 - 1e-6
STRETCH_MAX = 34.5  # stretch(1 - 1e-15)

_M1 = np.uint64(0x9E3779B97F4A7C15)


@numba.njit(cache=True, nogil=True)
def context_hash(ring, count, s, n):
    h = np.uint64(0)
    for back in range(1, n + 1):
        h = (h + np.uint64(ring_token(ring, count, s, back) + 1)) * _M1
        h = h ^ (h >> np.uint64(29))
    return fmix64(h)


# The confidence context of a match: how many length edges it has reached (the mixer's
# bucket function, under the name this model's callers know).
length_bucket = bucket


@numba.njit(cache=True, nogil=True)
def _valid(pos, n_hist, cap):
    return pos >= 0 and pos >= n_hist - cap and pos < n_hist


@numba.njit(cache=True, nogil=True)
def predicted(hist_tok, n_hist, ptr, mlen, s):
    """The token stream s's match predicts, or -1."""
    cap = hist_tok.shape[0]
    if mlen[s] > 0 and _valid(ptr[s], n_hist[0], cap):
        return hist_tok[ptr[s] & (cap - 1)]
    return -1


@numba.njit(cache=True, nogil=True)
def match_update(s, y, pred, ring, count, hist_tok, hist_prv, hist_nxt, n_hist, table,
                 last_pos, ptr, mlen, hits, tries, edges, min_len, verify):
    """Stream s saw token y (already pushed into its ring), ``pred`` being what its match
    predicted at this step (-1: none): score it, append y to the history, then extend
    the match or look a new one up."""
    cap = hist_tok.shape[0]
    mask = cap - 1
    if pred >= 0:
        b = length_bucket(mlen[s], edges)
        tries[b] += 1
        if pred == y:
            hits[b] += 1
        if tries[b] >= STATS_HALVE:
            tries[b] >>= 1
            hits[b] >>= 1
    else:
        mlen[s] = 0
    # append to the shared ring
    p = n_hist[0]
    n_hist[0] = p + 1
    n = p + 1
    i = p & mask
    hist_tok[i] = y
    hist_nxt[i] = 0
    hist_prv[i] = 0
    last = last_pos[s]
    if _valid(last, n, cap) and last != p:
        d = p - last
        if d <= 65535:
            hist_prv[i] = d
            hist_nxt[last & mask] = d
    last_pos[s] = p
    # extend or end the current match
    if mlen[s] > 0:
        q = ptr[s]
        ok = pred == y and _valid(q, n, cap)
        if ok:
            d = np.int64(hist_nxt[q & mask])
            ok = d > 0 and _valid(q + d, n, cap)
        if ok:
            ptr[s] = q + d
            if mlen[s] < MAX_LEN:
                mlen[s] += 1
        else:
            mlen[s] = 0
    if count[s] < min_len:
        return
    h = context_hash(ring, count, s, min_len)
    slot = np.int64(h & np.uint64(table.shape[0] - 1))
    if mlen[s] == 0:
        cand = table[slot]
        if _valid(cand, n, cap) and cand != p:
            d = np.int64(hist_nxt[cand & mask])
            if d > 0 and _valid(cand + d, n, cap):
                k = 0
                q = cand
                lim = min(verify, count[s])
                while k < lim and hist_tok[q & mask] == ring_token(ring, count, s, k + 1):
                    k += 1
                    dq = np.int64(hist_prv[q & mask])
                    if dq == 0 or not _valid(q - dq, n, cap):
                        break
                    q -= dq
                if k >= min_len:
                    mlen[s] = k
                    ptr[s] = cand + d
    table[slot] = p


@numba.njit(cache=True, nogil=True)
def apm_init(t, n, points, rng):
    """Every context's map = the identity: t[i] = squash(x_i) (libm exp)."""
    step = 2.0 * rng / points
    for k in range(t.shape[0]):
        x = -rng + (k % (points + 1)) * step
        t[k] = 1.0 / (1.0 + math.exp(-x))
        n[k] = 0


@numba.njit(cache=True, nogil=True)
def apm_lookup(t, ctx, points, rng, x):
    """The map of context ctx at x = stretch(p). Returns the index of the lower point,
    the upper point's weight, and the probability: the points' values are probabilities
    (updated as such, which learns fast), interpolated in the stretch domain (so the
    initial map is exactly the identity)."""
    if not x >= -rng:  # (NaN-safe)
        x = -rng
    elif x > rng:
        x = rng
    pos = (x + rng) * (points / (2.0 * rng))
    i = int(pos)
    if i > points - 1:
        i = points - 1
    w = pos - i
    k = ctx * (points + 1) + i
    z = _stretch(t[k]) * (1.0 - w) + _stretch(t[k + 1]) * w
    ph = 1.0 / (1.0 + math.exp(-z))
    return k, w, min(max(ph, PH_MIN), PH_MAX)


@numba.njit(cache=True, nogil=True)
def _stretch(p):
    if not p > 1e-15:
        return -STRETCH_MAX
    if not p < 1.0 - 1e-15:
        return STRETCH_MAX
    return math.log(p / (1.0 - p))


@numba.njit(cache=True, nogil=True)
def split_prob(t, g, lb, n_lb, points, rng, e_mt, e_other, cells, cell_w):
    """P(predicted token) through the chain, the model giving it e_mt against e_other for
    all other tokens (q_mt = e_mt / (e_mt + e_other)); cells / cell_w get both stages'
    points for the update."""
    x = math.log(e_mt / e_other)  # stretch(q_mt), with no 1 - q_mt to lose precision
    k1, w1, p1 = apm_lookup(t, g, points, rng, x)
    k2, w2, p2 = apm_lookup(t, 2 + g * n_lb + lb, points, rng, math.log(p1 / (1.0 - p1)))
    cells[0] = k1
    cell_w[0] = w1
    cells[1] = k2
    cell_w[1] = w2
    return p2


@numba.njit(cache=True, nogil=True)
def apm_update(t, n, k, w, hit, limit):
    y = 1.0 if hit else 0.0
    t[k] += (y - t[k]) * ((1.0 - w) / (n[k] + 1.5))
    t[k + 1] += (y - t[k + 1]) * (w / (n[k + 1] + 1.5))
    if n[k] < limit:
        n[k] += 1
    if n[k + 1] < limit:
        n[k + 1] += 1


@numba.njit(cache=True, nogil=True)
def confident(A, mlen, hits, tries, edges, min_len, permille, min_tries, out):
    for s in range(A):
        ok = False
        if mlen[s] >= min_len:
            b = length_bucket(mlen[s], edges)
            ok = tries[b] >= min_tries and hits[b] * 1000 >= permille * tries[b]
        out[s] = ok


# -- spec ------------------------------------------------------------------------------
def default_spec(n_tokens: int, min_len: int = DEFAULT_MIN_LEN, edges=DEFAULT_EDGES,
                 max_bytes: int = DEFAULT_MAX_BYTES) -> dict:
    """A ring that holds the whole input when it fits, a table of about as many slots,
    both shrunk (table first, down to half the ring) until they fit ``max_bytes``."""
    cap_bits = max(MIN_CAP_BITS, min(MAX_CAP_BITS, (max(1, n_tokens) - 1).bit_length()))
    bits = max(MIN_BITS, min(MAX_BITS, cap_bits))
    while (BYTES_PER_TOKEN << cap_bits) + (BYTES_PER_SLOT << bits) > max_bytes:
        if bits >= cap_bits and bits > MIN_BITS:
            bits -= 1
        elif cap_bits > MIN_CAP_BITS:
            cap_bits -= 1
        else:
            break
    return {"min_len": min_len, "verify": MAX_ORDER, "capacity_bits": cap_bits,
            "bits": bits, "edges": list(edges), "apm_points": DEFAULT_APM_POINTS,
            "apm_range": DEFAULT_APM_RANGE, "limit": DEFAULT_LIMIT}


def validate(spec: object) -> dict:
    d = check.obj(spec, "match", {"min_len", "verify", "capacity_bits", "bits", "edges",
                                   "apm_points", "apm_range", "limit"})
    out = {
        "min_len": check.integer(d["min_len"], "min_len", 1, MAX_ORDER),
        "verify": check.integer(d["verify"], "verify", 1, MAX_ORDER),
        "capacity_bits": check.integer(d["capacity_bits"], "capacity_bits", MIN_CAP_BITS,
                                       MAX_CAP_BITS),
        "bits": check.integer(d["bits"], "bits", MIN_BITS, MAX_BITS),
        "edges": check.increasing(check.integers(d["edges"], "edges", 1, MAX_LEN, 1, 32),
                                  "match edges"),
        "apm_points": check.integer(d["apm_points"], "apm_points", 1, 256),
        "apm_range": check.number(d["apm_range"], "apm_range", 0.5, 30.0),
        "limit": check.integer(d["limit"], "limit", 1, 1 << 30),
    }
    if out["verify"] < out["min_len"]:
        raise check.error("match verify shorter than min_len")
    return out


def table_bytes(spec: dict) -> int:
    return (BYTES_PER_TOKEN << spec["capacity_bits"]) + (BYTES_PER_SLOT << spec["bits"])


class MatchModel:
    """The shared history ring and hash table, and each stream's current match."""

    def __init__(self, spec: dict):
        self.spec = validate(spec)
        s = self.spec
        self.edges = np.array(s["edges"], dtype=np.int64)
        self.n_buckets = len(s["edges"]) + 1
        self.apm_points = s["apm_points"]
        self.apm_range = s["apm_range"]
        self.limit = s["limit"]
        self.n_apm = (2 + 2 * self.n_buckets) * (s["apm_points"] + 1)
        self.min_len = s["min_len"]
        self.verify = s["verify"]
        self.hist_tok = np.zeros(0, dtype=np.int32)
        self.n_hist = np.zeros(1, dtype=np.int64)
        self.reset(1)

    def reset(self, n_streams: int) -> None:
        s = self.spec
        cap = 1 << s["capacity_bits"]
        if self.hist_tok.size != cap:
            self.hist_tok = np.zeros(cap, dtype=np.int32)
            self.hist_prv = np.zeros(cap, dtype=np.uint16)
            self.hist_nxt = np.zeros(cap, dtype=np.uint16)
            self.table = np.empty(1 << s["bits"], dtype=np.int64)
        # stale ring contents are harmless: every read checks the position against n_hist
        self.table.fill(-1)
        self.n_hist[0] = 0
        self.last_pos = np.full(n_streams, -1, dtype=np.int64)
        self.ptr = np.zeros(n_streams, dtype=np.int64)
        self.mlen = np.zeros(n_streams, dtype=np.int32)
        self.hits = np.zeros(self.n_buckets, dtype=np.int64)
        self.tries = np.zeros(self.n_buckets, dtype=np.int64)
        self.apm_t = np.zeros(self.n_apm, dtype=np.float64)
        self.apm_n = np.zeros(self.n_apm, dtype=np.int64)
        apm_init(self.apm_t, self.apm_n, self.apm_points, self.apm_range)

    @property
    def nbytes(self) -> int:
        return int(self.hist_tok.nbytes + self.hist_prv.nbytes + self.hist_nxt.nbytes
                   + self.table.nbytes)


refresh_kernel_cache(globals())
