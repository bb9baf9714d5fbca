"""Sparse n-gram hash tables over tokens, shared by all streams.

One table per context order k. A context (the last k tokens of a stream) is hashed with
integer arithmetic (multiply / xor-shift on uint64, never Python's ``hash``) to a *bucket*
of two adjacent slots; each slot is ``1 + entries`` uint32 words::

    [check, e_0, e_1, ..., e_{E-1}]      e = count << 24 | token   (0 = empty entry)

``check`` is 32 further bits of the context hash; a slot whose check differs belongs to
another context (a miss). Counts saturate at 255: the slot's counts are then halved. A
new token in a full slot replaces the entry with the smallest count (the first such); a
new context in a full bucket replaces the slot with the smaller total count (the first on
ties). The tables never grow: their size is fixed by the spec, and when full they keep
replacing by these rules, which are deterministic, so encoder and decoder (which make
identical inserts in identical order: streams 0..A-1 each step) stay identical.

Prediction for one stream is a *sparse* list: for every order whose context is present,
every token seen there with its feature ``log(1 + count / alpha_k)`` (the log-ratio of a
seen to an unseen token under additive smoothing with pseudo-count alpha_k). The mixer
weighs these features (per order, per context, per confidence bucket of the slot).
"""

from __future__ import annotations

import math

import numba
import numpy as np

from ..validation import ENSEMBLE  # (not 'check': the tables' word for a hash tag)
from .kernel_cache import refresh_kernel_cache

TOKEN_BITS = 24
TOKEN_MASK = (1 << TOKEN_BITS) - 1
MAX_COUNT = 255
MAX_ORDER = 64          # the per-stream ring of recent tokens holds this many
MAX_ORDERS = 16
MAX_ENTRIES = 15
MIN_BITS, MAX_BITS = 4, 26
N_CONF = 10             # confidence buckets of a slot (see conf_bucket)
DEFAULT_ORDERS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
DEFAULT_ENTRIES = 7     # 8 words = 32 bytes per slot
DEFAULT_ALPHA = 0.5
DEFAULT_MAX_BYTES = 160 << 20

_M1 = np.uint64(0x9E3779B97F4A7C15)
_M2 = np.uint64(0xBF58476D1CE4E5B9)
_M3 = np.uint64(0x94D049BB133111EB)


# -- hashing ---------------------------------------------------------------------------
@numba.njit(cache=True, nogil=True)
def fmix64(h):
    """splitmix64's finalizer: a bijective avalanche of a uint64."""
    h = h ^ (h >> np.uint64(30))
    h = h * _M2
    h = h ^ (h >> np.uint64(27))
    h = h * _M3
    h = h ^ (h >> np.uint64(31))
    return h


@numba.njit(cache=True, nogil=True)
def ring_token(ring, count, s, back):
    """The token ``back`` (>= 1) positions before the end of stream s's recent ring."""
    return ring[s, (count[s] - back) & (ring.shape[1] - 1)]


@numba.njit(cache=True, nogil=True)
def context_hashes(ring, count, s, orders, out):
    """Hash of the last k tokens of stream s for every order k; 0 where the stream has
    fewer than k tokens so far (no context of that order yet)."""
    h = np.uint64(0)
    j = 0
    n_orders = orders.shape[0]
    have = count[s]
    for back in range(1, orders[n_orders - 1] + 1):
        if back > have:
            break
        t = np.uint64(ring_token(ring, count, s, back) + 1)
        h = (h + t) * _M1
        h = h ^ (h >> np.uint64(29))
        if back == orders[j]:
            out[j] = fmix64(h ^ (np.uint64(back) << np.uint64(56))) | np.uint64(1)
            j += 1
    while j < n_orders:
        out[j] = np.uint64(0)
        j += 1


# -- tables ----------------------------------------------------------------------------
@numba.njit(cache=True, nogil=True)
def find_slot(tab, base, mask, width, h):
    """Word index of the slot holding context hash h in its bucket, or -1."""
    check = np.uint32(h >> np.uint64(32))
    b = np.int64(h & np.uint64(mask)) & ~np.int64(1)
    for w in range(2):
        at = base + (b + w) * width
        if tab[at] == check:
            return at
    return -1


@numba.njit(cache=True, nogil=True)
def _slot_total(tab, at, width):
    n = 0
    for e in range(1, width):
        n += np.int64(tab[at + e] >> np.uint32(TOKEN_BITS))
    return n


@numba.njit(cache=True, nogil=True)
def table_insert(tab, base, mask, width, h, token):
    """Count ``token`` in the context with hash h (claiming a slot if needed)."""
    check = np.uint32(h >> np.uint64(32))
    at = find_slot(tab, base, mask, width, h)
    if at < 0:
        b = np.int64(h & np.uint64(mask)) & ~np.int64(1)
        a0 = base + b * width
        a1 = a0 + width
        at = a1 if _slot_total(tab, a1, width) < _slot_total(tab, a0, width) else a0
        tab[at] = check
        for e in range(1, width):
            tab[at + e] = np.uint32(0)
    tok = np.uint32(token)
    empty = -1
    weakest = -1
    weakest_c = np.uint32(MAX_COUNT + 1)
    for e in range(1, width):
        v = tab[at + e]
        if v == np.uint32(0):
            if empty < 0:
                empty = e
            continue
        if (v & np.uint32(TOKEN_MASK)) == tok:
            c = v >> np.uint32(TOKEN_BITS)
            if c == np.uint32(MAX_COUNT):
                for f in range(1, width):
                    w = tab[at + f]
                    if w != np.uint32(0):
                        cf = ((w >> np.uint32(TOKEN_BITS)) + np.uint32(1)) >> np.uint32(1)
                        tab[at + f] = (cf << np.uint32(TOKEN_BITS)) | (w & np.uint32(TOKEN_MASK))
                c = tab[at + e] >> np.uint32(TOKEN_BITS)
            tab[at + e] = ((c + np.uint32(1)) << np.uint32(TOKEN_BITS)) | tok
            return
        c = v >> np.uint32(TOKEN_BITS)
        if c < weakest_c:
            weakest_c = c
            weakest = e
    e = empty if empty >= 0 else weakest
    tab[at + e] = (np.uint32(1) << np.uint32(TOKEN_BITS)) | tok


@numba.njit(cache=True, nogil=True)
def conf_bucket(total, distinct):
    """Confidence of a slot: its total count (1, 2-3, 4-7, 8-15, 16+) x deterministic."""
    q = 0
    n = total
    while n > 1 and q < 4:
        n >>= 1
        q += 1
    return q * 2 + (1 if distinct == 1 else 0)


@numba.njit(cache=True, nogil=True)
def context_slot(tab, bases, masks, width, hashes, j):
    """The table slot of order j's context, or -1 (no context: hash 0; or not stored)."""
    h = hashes[j]
    if h == np.uint64(0):
        return -1
    return find_slot(tab, bases[j], masks[j], width, h)


@numba.njit(cache=True, nogil=True)
def gather(tab, bases, masks, width, hashes, logtab, sp_tok, sp_ord, sp_val, conf, start):
    """Append the sparse features of every present context to the sp_* lists from
    ``start``; set ``conf[j]`` to order j's confidence bucket (-1 when absent). Returns
    the new list length and the index (1-based) of the highest order present (0: none)."""
    n = start
    top = 0
    for j in range(hashes.shape[0]):
        conf[j] = -1
        at = context_slot(tab, bases, masks, width, hashes, j)
        if at < 0:
            continue
        total = 0
        distinct = 0
        for e in range(1, width):
            v = tab[at + e]
            if v == np.uint32(0):
                continue
            c = np.int64(v >> np.uint32(TOKEN_BITS))
            sp_tok[n] = np.int32(v & np.uint32(TOKEN_MASK))
            sp_ord[n] = j
            sp_val[n] = logtab[j, c]
            n += 1
            total += c
            distinct += 1
        if distinct > 0:
            conf[j] = conf_bucket(total, distinct)
            top = j + 1
    return n, top


@numba.njit(cache=True, nogil=True)
def deterministic_guess(tab, bases, masks, width, ring, count, orders, A, hbuf, tok, key):
    """For streams 0..A-1: if the highest-order context present in the tables has seen
    one token only, that token (tok[s]) and its calibration key (key[s] = order index *
    16 + min(count, 15)); else -1 in both. Reads the tables, changes nothing."""
    n_orders = orders.shape[0]
    for s in range(A):
        tok[s] = -1
        key[s] = -1
        context_hashes(ring, count, s, orders, hbuf)
        for j in range(n_orders - 1, -1, -1):
            at = context_slot(tab, bases, masks, width, hbuf, j)
            if at < 0:
                continue
            distinct = 0
            last = np.uint32(0)
            for e in range(1, width):
                v = tab[at + e]
                if v != np.uint32(0):
                    distinct += 1
                    last = v
            if distinct == 1:
                c = np.int64(last >> np.uint32(TOKEN_BITS))
                tok[s] = np.int32(last & np.uint32(TOKEN_MASK))
                key[s] = j * 16 + min(c, 15)
            break


@numba.njit(cache=True, nogil=True)
def log_table(alphas, out):
    """out[j, c] = log(1 + c / alpha_j), with libm's log (never numpy's SIMD log)."""
    for j in range(out.shape[0]):
        for c in range(out.shape[1]):
            out[j, c] = math.log(1.0 + c / alphas[j])


# -- the spec --------------------------------------------------------------------------
def slot_bits_for(n_tokens: int, order: int, vocab_size: int, max_bits: int) -> int:
    """Slots for one order: 1-2 per distinct context the input can hold (at most
    n_tokens, at most vocab_size ** order), a power of two within the cap (more slots
    gained next to nothing: bench/results/design-figures.md)."""
    distinct = max(1, n_tokens)
    if order * math.log2(max(2, vocab_size)) < 62:
        distinct = min(distinct, vocab_size ** order)
    bits = max(MIN_BITS, (distinct - 1).bit_length())
    return min(bits, max_bits)


def default_spec(n_tokens: int, vocab_size: int = 49152, orders=DEFAULT_ORDERS,
                 entries: int = DEFAULT_ENTRIES, alpha: float = DEFAULT_ALPHA,
                 max_bytes: int = DEFAULT_MAX_BYTES) -> dict:
    """Tables sized from the input length, all of them together within ``max_bytes``."""
    orders = list(orders)
    width_bytes = 4 * (entries + 1)
    bits = []
    for k in orders:
        bits.append(slot_bits_for(n_tokens, k, vocab_size, MAX_BITS))
    # shrink the largest tables until the total fits
    while sum((1 << b) * width_bytes for b in bits) > max_bytes:
        i = max(range(len(bits)), key=lambda j: (bits[j], j))
        if bits[i] <= MIN_BITS:
            break
        bits[i] -= 1
    return {"orders": orders, "bits": bits, "entries": entries,
            "alpha": [float(alpha)] * len(orders)}


def validate(spec: object) -> dict:
    d = ENSEMBLE.obj(spec, "ngram", {"orders", "bits", "entries", "alpha"})
    orders = ENSEMBLE.integers(d["orders"], "orders", 1, MAX_ORDER, 1, MAX_ORDERS)
    if any(a >= b for a, b in zip(orders, orders[1:])):
        raise ENSEMBLE.error("n-gram orders not increasing")
    bits = ENSEMBLE.integers(d["bits"], "bits", MIN_BITS, MAX_BITS, len(orders), len(orders))
    entries = ENSEMBLE.integer(d["entries"], "entries", 1, MAX_ENTRIES)
    alpha = d["alpha"]
    if not isinstance(alpha, list) or len(alpha) != len(orders):
        raise ENSEMBLE.error("bad n-gram alpha")
    alphas = [ENSEMBLE.number(a, "a", 1e-3, 1e3) for a in alpha]
    return {"orders": orders, "bits": bits, "entries": entries, "alpha": alphas}


def table_bytes(spec: dict) -> int:
    return sum((1 << b) * 4 * (spec["entries"] + 1) for b in spec["bits"])


class NGramTables:
    """The shared tables of all orders and their per-order lookup parameters."""

    def __init__(self, spec: dict):
        self.spec = validate(spec)
        s = self.spec
        self.orders = np.array(s["orders"], dtype=np.int64)
        self.n_orders = len(s["orders"])
        self.width = s["entries"] + 1
        sizes = np.array([1 << b for b in s["bits"]], dtype=np.int64)
        self.masks = (sizes - 1).astype(np.uint64)
        self.bases = np.zeros(self.n_orders, dtype=np.int64)
        self.bases[1:] = np.cumsum(sizes * self.width)[:-1]
        self.n_words = int((sizes * self.width).sum())
        self.logtab = np.empty((self.n_orders, MAX_COUNT + 1), dtype=np.float64)
        log_table(np.array(s["alpha"], dtype=np.float64), self.logtab)
        self.max_features = self.n_orders * s["entries"]
        self.tab = np.zeros(0, dtype=np.uint32)

    def reset(self) -> None:
        if self.tab.size != self.n_words:
            self.tab = np.zeros(self.n_words, dtype=np.uint32)
        else:
            self.tab.fill(0)

    @property
    def nbytes(self) -> int:
        return int(self.tab.nbytes)


refresh_kernel_cache(globals())
