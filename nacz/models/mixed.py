"""The mixed ensemble: LLM + sparse n-grams + match model + bias head, mixed online.

Per step the engine calls ``predict(logits, has_llm)`` then, after coding,
``update(tokens)``; both sides make the same calls in the same order, so the learned state
is identical. ``confident()`` (state after the previous update only) says for which
streams the match side alone is sure enough that the engine may skip the LLM; such rows
(``has_llm`` False) are predicted without it: LLM-free weight sets, the unigram counts in
its place, and the match's own learned split (which carries them).

Parts: ngram.py (shared sparse count tables), match.py (shared-history match model and
its split maps), bias.py (bias head and unigram counts), mixer.py (weights, contexts and
the passes over V). Any part but the mixer can be switched off (``null`` in the spec).

All per-token work runs in two numba kernels (one per call, all active rows in order
0..A-1): no fastmath, sequential reductions, libm exp/log, integer hashing. The spec
(``spec``) holds every parameter that changes a probability; ``from_spec`` rebuilds an
identical ensemble from it alone and rejects anything it does not know.

Memory: the n-gram and match tables are sized from the input length within
``max_bytes`` (default 256 MiB, split 5/8 n-gram, 3/8 match); besides them the ensemble
holds the bias vector (V float64), the mixer weights (a few KiB) and per-stream buffers,
chiefly the returned probabilities (streams x V float64).
"""

from __future__ import annotations

import copy

import numba
import numpy as np

from ..errors import FormatError
from . import bias as bias_mod
from . import match as match_mod
from . import mixer as mixer_mod
from . import ngram as ngram_mod
from .bias import BiasHead, bias_update, unigram_update
from .match import MatchModel, apm_update, length_bucket, match_update, predicted, split_prob
from .mixer import (MixerWeights, bad, bias_exp, bucket, check_keys, clamp, copy_pass,
                    dense_pass, get_int, normalize, normalize_split, refresh_kernel_cache,
                    row_max, sparse_pass)
from .ngram import (MAX_ORDER, N_CONF, NGramTables, context_hashes, deterministic_guess,
                    gather, table_insert)

KIND = "mixed"
VERSION = 1
MAX_VOCAB = 1 << ngram_mod.TOKEN_BITS
DEFAULT_MAX_BYTES = 256 << 20
HARD_MAX_BYTES = 1 << 30  # a header may not make the decoder allocate more tables than this
SPEC_KEYS = {"kind", "version", "ngram", "match", "bias", "mixer", "skip"}


# -- spec ------------------------------------------------------------------------------
def default_spec(n_tokens: int, vocab_size: int = 49152, *, max_bytes: int = DEFAULT_MAX_BYTES,
                 n_dense: int = 0, ngram: bool = True, match: bool = True,
                 bias: bool = True, skip: bool = True, det_skip: bool = True) -> dict:
    """The default ensemble for an input of ``n_tokens`` tokens; the n-gram and match
    tables together stay within ``max_bytes``."""
    n_tokens = max(1, int(n_tokens))
    if not 1 << 20 <= max_bytes <= HARD_MAX_BYTES:
        raise ValueError("max_bytes out of range")
    return {
        "kind": KIND,
        "version": VERSION,
        "ngram": ngram_mod.default_spec(n_tokens, vocab_size,
                                        max_bytes=max_bytes * 5 // 8) if ngram else None,
        "match": match_mod.default_spec(n_tokens, max_bytes=max_bytes * 3 // 8)
        if match else None,
        "bias": bias_mod.default_spec() if bias else None,
        "mixer": mixer_mod.default_spec(n_dense),
        "skip": skip_spec(ngram and det_skip) if (skip and match) else None,
    }


def skip_spec(deterministic: bool) -> dict:
    """Skip the LLM where a long match has been right >= 99% of the time at its length;
    with ``deterministic``, also where the highest-order n-gram context present has only
    ever seen one token and such contexts (same order and count) were right >= 99.5% of
    the time (both after enough tries). The second rule is what fires on logs and other
    templated text, whose matches are short."""
    spec = {"min_len": 32, "permille": 990, "min_tries": 256}
    if deterministic:
        spec.update(det_permille=995, det_min_tries=256)
    return spec


SKIP_KEYS = {"min_len", "permille", "min_tries"}
DET_SKIP_KEYS = {"det_permille", "det_min_tries"}  # optional (absent in preset 1)


def validate_skip(spec: object) -> dict:
    keys = SKIP_KEYS | DET_SKIP_KEYS if isinstance(spec, dict) and "det_permille" in spec \
        else SKIP_KEYS
    d = check_keys(spec, "skip", keys)
    out = {"min_len": get_int(d, "min_len", 1, match_mod.MAX_LEN),
           "permille": get_int(d, "permille", 0, 1000),
           "min_tries": get_int(d, "min_tries", 0, 1 << 30)}
    if keys is not SKIP_KEYS:
        out["det_permille"] = get_int(d, "det_permille", 0, 1000)
        out["det_min_tries"] = get_int(d, "det_min_tries", 0, 1 << 30)
    return out


def validate(spec: object) -> dict:
    """A normalised copy of ``spec``; FormatError on anything unknown or out of range."""
    d = check_keys(spec, "ensemble", SPEC_KEYS)
    if d["kind"] != KIND or type(d["version"]) is not int or d["version"] != VERSION:
        raise bad("unknown ensemble kind or version")
    out = {"kind": KIND, "version": VERSION,
           "ngram": None if d["ngram"] is None else ngram_mod.validate(d["ngram"]),
           "match": None if d["match"] is None else match_mod.validate(d["match"]),
           "bias": None if d["bias"] is None else bias_mod.validate(d["bias"]),
           "mixer": mixer_mod.validate(d["mixer"]),
           "skip": None if d["skip"] is None else validate_skip(d["skip"])}
    if out["skip"] is not None and out["match"] is None:
        raise bad("skip needs the match model")
    if out["skip"] is not None and "det_permille" in out["skip"] and out["ngram"] is None:
        raise bad("deterministic skip needs the n-gram tables")
    if tables_bytes(out) > HARD_MAX_BYTES:
        raise bad("tables too large")
    return out


# -- presets: the compact form of a spec for the header -----------------------------------
# The full spec is ~600 bytes of JSON (~300 deflated): a real cost for small inputs. A
# preset names a FROZEN function from (n_tokens, vocab size, dense inputs) to the full
# spec; the header then stores {"kind", "version", "preset", "n_tokens", "dense"} (~70
# bytes) and the decoder expands it. A preset's expansion may never change (old files
# name it): tests pin it. Tuning the defaults means adding a preset, not editing one.
PRESET_KEYS = {"kind", "version", "preset", "n_tokens", "dense"}
MAX_PRESET_TOKENS = 1 << 48


def _preset_1(n_tokens: int, vocab_size: int, n_dense: int) -> dict:
    return default_spec(n_tokens, vocab_size, n_dense=n_dense, det_skip=False)


def _preset_2(n_tokens: int, vocab_size: int, n_dense: int) -> dict:
    """Preset 1 plus the deterministic-context skip rule."""
    return default_spec(n_tokens, vocab_size, n_dense=n_dense, det_skip=True)


def _preset_3(n_tokens: int, vocab_size: int, n_dense: int) -> dict:
    """Preset 2 with a flat unigram (alpha0 = 10,000 makes log(count + alpha0) nearly
    constant), for the LLM-free mode: there the SSM's own count prior already carries the
    counts, and a sharp unigram next to it cost bits. LLM-free -1 on 100 KB, bits/byte
    with alpha0 0.02 -> 10,000: prose 2.247 -> 2.090, source 1.743 -> 1.630, JSON log
    0.360 -> 0.351 (16 streams, with the token alphabet of alphabet.py)."""
    spec = default_spec(n_tokens, vocab_size, n_dense=n_dense, det_skip=True)
    spec["bias"]["alpha0"] = 10000.0
    return spec


PRESETS = {1: _preset_1, 2: _preset_2, 3: _preset_3}
LATEST_PRESET = 2  # with an LLM
LLM_FREE_PRESET = 3


def preset_spec(n_tokens: int, n_dense: int = 0, preset: int = LATEST_PRESET) -> dict:
    """The compact spec naming ``preset`` for an input of ``n_tokens`` tokens."""
    if preset not in PRESETS:
        raise ValueError(f"no ensemble preset {preset}")
    return {"kind": KIND, "version": VERSION, "preset": preset,
            "n_tokens": max(1, int(n_tokens)), "dense": int(n_dense)}


def expand(spec: object, vocab_size: int) -> dict:
    """The full, validated spec of a full or compact (preset) spec; FormatError if bad."""
    if isinstance(spec, dict) and "preset" in spec:
        d = check_keys(spec, "ensemble", PRESET_KEYS)
        if d["kind"] != KIND or type(d["version"]) is not int or d["version"] != VERSION:
            raise bad("unknown ensemble kind or version")
        if type(d["preset"]) is not int or d["preset"] not in PRESETS:
            raise bad("unknown ensemble preset")
        n_tokens = get_int(d, "n_tokens", 1, MAX_PRESET_TOKENS)
        n_dense = get_int(d, "dense", 0, mixer_mod.MAX_DENSE)
        spec = PRESETS[d["preset"]](n_tokens, vocab_size, n_dense)
    return validate(spec)


def tables_bytes(spec: dict) -> int:
    """Bytes of the n-gram and match tables a (validated) spec allocates."""
    n = 0
    if spec["ngram"] is not None:
        n += ngram_mod.table_bytes(spec["ngram"])
    if spec["match"] is not None:
        n += match_mod.table_bytes(spec["match"])
    return n


# -- kernels ---------------------------------------------------------------------------
@numba.njit(cache=True, nogil=True)
def _predict(A, logits, has_llm, dense, n_dense,
             ng_on, tab, bases, masks, width, orders, logtab, hashes, ring, rcount,
             sp_tok, sp_ord, sp_val, sp_n, conf,
             m_on, hist_tok, n_hist, mptr, mlen, medges, apm_t, apm_points, apm_range,
             b, bmax, u0, u0max, ent_edges, n_mb, n_llm_ctx, w_llm, w_dense, u, v,
             add, mark, touch, acc, ebuf, ctx, wctx, prev_ent, cur_ent, mtok, cell, cell_w,
             mix_ph, mix_q, mix_s, sums, out):
    """Probabilities of rows 0..A-1, one after the other:
    1. sparse features: n-gram lists and the match prediction (from the tables as left
       by the previous update);
    2. one dense pass over V: exp of the LLM / dense / bias part, with weights chosen by
       the stream's *previous* entropy bucket x match bucket; gives this step's entropy;
    3. the sparse boosts, with weights chosen by this entropy bucket x match bucket,
       recomputed exactly for the few touched tokens; 4. normalisation.
    5. a row with a match splits q: the predicted token gets the probability its APM
       maps q's own to (match.py).
    Rows without the LLM and dense inputs share their dense part, computed once."""
    ebuf_ready = False
    for r in range(A):
        n = 0
        if ng_on:
            context_hashes(ring, rcount, r, orders, hashes[r])
            n, _top = gather(tab, bases, masks, width, hashes[r], logtab, sp_tok[r],
                             sp_ord[r], sp_val[r], conf[r], 0)
        sp_n[r] = n
        mb = 0
        mt = -1
        if m_on:
            mt = predicted(hist_tok, n_hist, mptr, mlen, r)
            mb = length_bucket(mlen[r], medges)
        mtok[r] = mt
        nt = 0
        for i in range(n):
            touch[nt] = sp_tok[r, i]
            nt += 1
        if mt >= 0:
            touch[nt] = mt
            nt += 1
        for i in range(nt):
            mark[touch[i]] = 1
        use_llm = has_llm[r]
        if use_llm:
            row = logits[r]
            lmax = row_max(row)
            cw = prev_ent[r] * n_mb + mb
            wl = w_llm[cw]
        else:
            row = logits[0]  # not read
            lmax = 0.0
            cw = n_llm_ctx + mb
            wl = 0.0
        wctx[r] = cw
        ent = 0.0
        if use_llm or n_dense > 0:
            ent = dense_pass(out[r], row, use_llm, wl, lmax, b, bmax, u0, u0max, dense, r,
                             w_dense[cw], n_dense, mark, acc)
        else:
            if not ebuf_ready:
                bias_exp(b, bmax, u0, u0max, ebuf)
                ebuf_ready = True
            copy_pass(out[r], ebuf, mark, acc)
        if use_llm:
            eb = bucket(ent, ent_edges)
            cur_ent[r] = eb  # becomes prev_ent[r] in update (predict changes no state)
            c = eb * n_mb + mb
            g = 0
        else:
            c = n_llm_ctx + mb
            g = 1
        ctx[r] = c
        for i in range(n):
            j = sp_ord[r, i]
            add[sp_tok[r, i]] += (u[c, j] + v[g, j, conf[r, j]]) * sp_val[r, i]
        sparse_pass(out[r], row, use_llm, wl, lmax, b, bmax, u0, u0max, dense, r, w_dense[cw],
                    n_dense, add, touch, nt, mark, acc, mt)
        for i in range(nt):
            add[touch[i]] = 0.0
            mark[touch[i]] = 0
        if mt >= 0:
            ph = split_prob(apm_t, g, mb, n_mb, apm_points, apm_range, out[r, mt], acc[0],
                            cell[r], cell_w[r])
            qm, rest = normalize_split(out[r], acc, row, use_llm, dense, r, n_dense, sums[r],
                                       mt, ph)
            mix_ph[r] = ph
            mix_q[r] = qm
            mix_s[r] = rest / (1.0 - ph)  # q = p * mix_s away from mt
        else:
            cell[r, 0] = -1
            mix_ph[r] = 0.0
            normalize(out[r], acc, n_dense, sums[r])


@numba.njit(cache=True, nogil=True)
def _update(A, tokens, logits, has_llm, dense, n_dense, probs,
            ng_on, tab, bases, masks, width, hashes, sp_tok, sp_ord, sp_val, sp_n, conf,
            ring, rcount,
            m_on, hist_tok, hist_prv, hist_nxt, n_hist, table, last_pos, mptr, mlen,
            hits, tries, medges, min_len, verify, apm_t, apm_n, apm_limit,
            b_on, b, lr_b, lr_bf, counts, u0, alpha0, u0max,
            lr, lr_l, w_min, w_max, w_llm, w_dense, u, v,
            ctx, wctx, prev_ent, cur_ent, mtok, cell, cell_w, mix_ph, mix_q, mix_s, sums,
            gbuf):
    n_orders = gbuf.shape[0]
    rmask = ring.shape[1] - 1
    for r in range(A):
        y = tokens[r]
        c = ctx[r]
        cw = wctx[r]
        p = probs[r]
        g = 0 if has_llm[r] else 1
        mt = mtok[r]
        split = mix_ph[r] > 0.0
        qs = mix_s[r] if split else 1.0  # q = p * qs away from mt, q[mt] = mix_q
        # mixer weights: d(-log q_y)/dw = E_q[f] - f[y] (sums hold E_q)
        if has_llm[r]:
            prev_ent[r] = cur_ent[r]
            gl = sums[r, 1] - np.float64(logits[r, y])
            w_llm[cw] = clamp(w_llm[cw] - lr_l * gl, 0.0, w_max)
        for d in range(n_dense):
            gd = sums[r, 2 + d] - np.float64(dense[d, r, y])
            w_dense[cw, d] = clamp(w_dense[cw, d] - lr_l * gd, 0.0, w_max)
        if ng_on:
            for j in range(n_orders):
                gbuf[j] = 0.0
            for i in range(sp_n[r]):
                t = sp_tok[r, i]
                j = sp_ord[r, i]
                pt = p[t] * qs
                if split and t == mt:
                    pt = mix_q[r]
                gbuf[j] += pt * sp_val[r, i]
                if t == y:
                    gbuf[j] -= sp_val[r, i]
            for j in range(n_orders):
                q = conf[r, j]
                if q >= 0:
                    u[c, j] = clamp(u[c, j] - lr * gbuf[j], w_min, w_max)
                    v[g, j, q] = clamp(v[g, j, q] - lr * gbuf[j], w_min, w_max)
            for j in range(n_orders):
                if hashes[r, j] != np.uint64(0):
                    table_insert(tab, bases[j], masks[j], width, hashes[r, j], y)
        if cell[r, 0] >= 0:
            for st in range(2):
                apm_update(apm_t, apm_n, cell[r, st], cell_w[r, st], mt == y, apm_limit)
        ring[r, rcount[r] & rmask] = y
        rcount[r] += 1
        if m_on:
            match_update(r, y, mt, ring, rcount, hist_tok, hist_prv, hist_nxt, n_hist, table,
                         last_pos, mptr, mlen, hits, tries, medges, min_len, verify)
    if b_on:
        u0max[0] = unigram_update(counts, u0, alpha0, u0max[0], tokens, A)
        return bias_update(b, probs, tokens, A, lr_b, mtok, mix_ph, mix_s, mix_q, has_llm,
                           lr_bf)
    return 0.0


# -- the ensemble ----------------------------------------------------------------------
class MixedEnsemble:
    """LLM + n-grams + match + bias head behind a learned, context-selected mixer."""

    kind = KIND

    def __init__(self, spec: object, vocab_size: int):
        if type(vocab_size) is not int or not 2 <= vocab_size <= MAX_VOCAB:
            raise FormatError(f"vocabulary size {vocab_size!r} unsupported by the ensemble")
        self._spec = expand(spec, vocab_size)
        # what the header stores: the compact form when built from one
        self._header_spec = copy.deepcopy(spec) if "preset" in spec else self._spec
        s = self._spec
        self.vocab_size = vocab_size
        self.ngram = NGramTables(s["ngram"]) if s["ngram"] is not None else None
        self.match = MatchModel(s["match"]) if s["match"] is not None else None
        self.bias = BiasHead(s["bias"], vocab_size) if s["bias"] is not None else None
        n_orders = self.ngram.n_orders if self.ngram else 1
        n_mb = self.match.n_buckets if self.match else 1
        self.mixer = MixerWeights(s["mixer"], n_orders, N_CONF, n_mb)
        m = s["mixer"]
        self._lr, self._lr_l = m["lr"], m["lr_llm"]
        self._w_min, self._w_max = m["w_min"], m["w_max"]
        self.n_dense = m["dense"]
        self._skip = s["skip"]
        # stand-ins for absent parts (never read: their flag is off)
        self._none_u32 = np.zeros(1, dtype=np.uint32)
        self._none_i32 = np.zeros(1, dtype=np.int32)
        self._none_u16 = np.zeros(1, dtype=np.uint16)
        self._none_i64 = np.zeros(1, dtype=np.int64)
        self._none_u64 = np.zeros(1, dtype=np.uint64)
        self._none_f64 = np.zeros(1, dtype=np.float64)
        self._no_logits = np.zeros((1, vocab_size), dtype=np.float32)
        self._no_dense = np.zeros((1, 1, 1), dtype=np.float32)
        self._zero_b = np.zeros(vocab_size, dtype=np.float64)
        self._add = np.zeros(vocab_size, dtype=np.float64)
        self._mark = np.zeros(vocab_size, dtype=np.uint8)
        self._ebuf = np.zeros(vocab_size, dtype=np.float64)
        self.n_streams = 0
        self._pending = None
        self.reset(1)

    # -- spec ---------------------------------------------------------------------------
    @property
    def spec(self) -> dict:
        """The full spec: every parameter that changes a probability."""
        return copy.deepcopy(self._spec)

    @property
    def header_spec(self) -> dict:
        """What the header should store: the compact (preset) spec this ensemble was
        built from, or else the full spec. Either rebuilds it through from_spec."""
        return copy.deepcopy(self._header_spec)

    @classmethod
    def from_spec(cls, spec: object, vocab_size: int) -> "MixedEnsemble":
        """The ensemble a full or compact spec describes (FormatError if invalid)."""
        return cls(spec, vocab_size)

    @property
    def nbytes(self) -> int:
        """Bytes held by tables, weights and per-stream buffers."""
        n = self.mixer.nbytes + self._add.nbytes + self._ebuf.nbytes + self._mark.nbytes
        n += self._probs.nbytes + self._ring.nbytes
        n += self._sp_tok.nbytes + self._sp_ord.nbytes + self._sp_val.nbytes
        if self.ngram:
            n += self.ngram.nbytes
        if self.match:
            n += self.match.nbytes
        if self.bias:
            n += self.bias.nbytes
        return int(n)

    # -- lifecycle ----------------------------------------------------------------------
    def reset(self, n_streams: int) -> None:
        S = max(1, int(n_streams))
        V = self.vocab_size
        self.n_streams = S
        no = self.ngram.n_orders if self.ngram else 1
        nf = max(1, self.ngram.max_features if self.ngram else 1)
        if self.ngram:
            self.ngram.reset()
        if self.match:
            self.match.reset(S)
        if self.bias:
            self.bias.reset()
        self.mixer.reset()
        self._probs = np.zeros((S, V), dtype=np.float64)
        self._ring = np.zeros((S, MAX_ORDER), dtype=np.int32)
        self._rcount = np.zeros(S, dtype=np.int64)
        self._hashes = np.zeros((S, no), dtype=np.uint64)
        self._sp_tok = np.zeros((S, nf), dtype=np.int32)
        self._sp_ord = np.zeros((S, nf), dtype=np.int64)
        self._sp_val = np.zeros((S, nf), dtype=np.float64)
        self._sp_n = np.zeros(S, dtype=np.int64)
        self._conf = np.full((S, no), -1, dtype=np.int64)
        self._ctx = np.zeros(S, dtype=np.int64)
        self._wctx = np.zeros(S, dtype=np.int64)
        # entropy bucket of each stream's previous step; "unsure" before the first
        self._prev_ent = np.full(S, self.mixer.n_ent - 1, dtype=np.int64)
        self._cur_ent = np.zeros(S, dtype=np.int64)
        self._touch = np.zeros(nf + 1, dtype=np.int32)
        self._acc = np.zeros(2 + max(1, self.n_dense), dtype=np.float64)
        self._mtok = np.full(S, -1, dtype=np.int32)
        self._mix_ph = np.zeros(S, dtype=np.float64)
        self._mix_q = np.zeros(S, dtype=np.float64)
        self._mix_s = np.zeros(S, dtype=np.float64)
        self._cell = np.full((S, 2), -1, dtype=np.int64)
        self._cell_w = np.zeros((S, 2), dtype=np.float64)
        self._sums = np.zeros((S, 2 + max(1, self.n_dense)), dtype=np.float64)
        self._gbuf = np.zeros(no, dtype=np.float64)
        # deterministic-context skip: this step's guesses and their calibration counts
        self._guess_tok = np.full(S, -1, dtype=np.int32)
        self._guess_key = np.full(S, -1, dtype=np.int64)
        self._hbuf = np.zeros(no, dtype=np.uint64)
        self._det_hits = np.zeros(no * 16, dtype=np.int64)
        self._det_tries = np.zeros(no * 16, dtype=np.int64)
        self._add.fill(0.0)
        self._mark.fill(0)
        self._pending = None

    # -- the engine's calls -------------------------------------------------------------
    def confident(self, n_active: int | None = None) -> np.ndarray:
        """Streams whose match alone is sure enough to skip the LLM at this step (from
        the state after the last update, so both sides agree before predicting)."""
        A = self.n_streams if n_active is None else int(n_active)
        if not 0 <= A <= self.n_streams:
            raise ValueError(f"{A} active streams, but reset for {self.n_streams}")
        out = np.zeros(A, dtype=np.bool_)
        if self._skip is not None and self.match is not None and A > 0:
            k = self._skip
            m = self.match
            match_mod.confident(A, m.mlen, m.hits, m.tries, m.edges, k["min_len"],
                                k["permille"], k["min_tries"], out)
            if "det_permille" in k:
                ng = self.ngram
                deterministic_guess(ng.tab, ng.bases, ng.masks, ng.width, self._ring,
                                    self._rcount, ng.orders, A, self._hbuf,
                                    self._guess_tok, self._guess_key)
                key = self._guess_key[:A]
                has = key >= 0
                kk = np.where(has, key, 0)
                tries, hits = self._det_tries[kk], self._det_hits[kk]
                out |= has & (tries >= k["det_min_tries"]) & \
                    (hits * 1000 >= k["det_permille"] * tries)
        return out

    def predict(self, logits: np.ndarray | None, has_llm: np.ndarray | None = None,
                dense=None, n_active: int | None = None) -> np.ndarray:
        """Probabilities (A, V) float64 of the active streams. ``logits`` (A, V) float32
        or None (no LLM); rows where ``has_llm`` is False are predicted without the LLM
        (their logits are ignored). ``dense``: the extra log-probability inputs (<= 0,
        e.g. the SSM's), (D, A, V) or a list of D arrays (A, V), float32 or float64, D as
        in the spec; they are used in every row. ``n_active``: A when there are no logits
        and no has_llm. The arrays must stay unchanged until ``update``."""
        V = self.vocab_size
        if logits is None:
            if has_llm is not None:
                A = len(has_llm)
            elif n_active is not None:
                A = int(n_active)
            else:
                raise ValueError("predict without logits needs has_llm or n_active")
            if has_llm is not None and np.any(has_llm):
                raise ValueError("has_llm is set but no logits were given")
            lg = self._no_logits
            hl = np.zeros(A, dtype=np.bool_)
        else:
            lg = logits
            if lg.dtype != np.float32 or not lg.flags.c_contiguous:
                lg = np.ascontiguousarray(lg, dtype=np.float32)
            if lg.ndim != 2 or lg.shape[1] != V:
                raise ValueError(f"logits must have shape (A, {V})")
            A = lg.shape[0]
            if has_llm is None:
                hl = np.ones(A, dtype=np.bool_)
            else:
                hl = np.ascontiguousarray(has_llm, dtype=np.bool_)
                if hl.shape != (A,):
                    raise ValueError("has_llm must have one entry per active stream")
        if not 0 < A <= self.n_streams:
            raise ValueError(f"{A} active streams, but reset for {self.n_streams}")
        dn = self._dense_input(dense, A)
        ng, m, mx = self.ngram, self.match, self.mixer
        b = self.bias.b if self.bias else self._zero_b
        bmax = self.bias.bmax if self.bias else 0.0
        u0 = self.bias.u0 if self.bias else self._zero_b
        u0max = self.bias.u0max if self.bias else 0.0
        _predict(A, lg, hl, dn, self.n_dense,
                 ng is not None,
                 ng.tab if ng else self._none_u32,
                 ng.bases if ng else self._none_i64,
                 ng.masks if ng else self._none_u64,
                 ng.width if ng else 1,
                 ng.orders if ng else self._none_i64,
                 ng.logtab if ng else self._none_f64.reshape(1, 1),
                 self._hashes, self._ring, self._rcount,
                 self._sp_tok, self._sp_ord, self._sp_val, self._sp_n, self._conf,
                 m is not None,
                 m.hist_tok if m else self._none_i32,
                 m.n_hist if m else self._none_i64,
                 m.ptr if m else self._none_i64,
                 m.mlen if m else self._none_i32,
                 m.edges if m else self._none_i64,
                 m.apm_t if m else self._none_f64,
                 m.apm_points if m else 1,
                 m.apm_range if m else 1.0,
                 b, bmax, u0, u0max, mx.ent_edges, mx.n_mb, mx.n_llm_ctx, mx.w_llm, mx.w_dense,
                 mx.u, mx.v,
                 self._add, self._mark, self._touch, self._acc, self._ebuf, self._ctx,
                 self._wctx,
                 self._prev_ent, self._cur_ent, self._mtok, self._cell, self._cell_w,
                 self._mix_ph, self._mix_q, self._mix_s, self._sums, self._probs)
        self._pending = (A, lg, hl, dn)
        return self._probs[:A]

    def update(self, tokens: np.ndarray) -> None:
        if self._pending is None:
            raise RuntimeError("update without a prediction")
        A, lg, hl, dn = self._pending
        self._pending = None
        toks = np.ascontiguousarray(tokens, dtype=np.int32)
        if toks.shape != (A,):
            raise ValueError(f"expected {A} tokens")
        if A and (int(toks.min()) < 0 or int(toks.max()) >= self.vocab_size):
            raise ValueError("token outside the vocabulary")
        if self._skip is not None and "det_permille" in self._skip:
            # calibrate the guesses confident() made for this step (both sides alike)
            key = self._guess_key[:A]
            has = key >= 0
            np.add.at(self._det_tries, key[has], 1)
            np.add.at(self._det_hits, key[has],
                      (toks[has] == self._guess_tok[:A][has]).astype(np.int64))
            self._guess_key[:A] = -1
        ng, m, mx = self.ngram, self.match, self.mixer
        bmax = _update(
            A, toks, lg, hl, dn, self.n_dense, self._probs,
            ng is not None,
            ng.tab if ng else self._none_u32,
            ng.bases if ng else self._none_i64,
            ng.masks if ng else self._none_u64,
            ng.width if ng else 1,
            self._hashes, self._sp_tok, self._sp_ord, self._sp_val, self._sp_n, self._conf,
            self._ring, self._rcount,
            m is not None,
            m.hist_tok if m else self._none_i32,
            m.hist_prv if m else self._none_u16,
            m.hist_nxt if m else self._none_u16,
            m.n_hist if m else self._none_i64,
            m.table if m else self._none_i64,
            m.last_pos if m else self._none_i64,
            m.ptr if m else self._none_i64,
            m.mlen if m else self._none_i32,
            m.hits if m else self._none_i64,
            m.tries if m else self._none_i64,
            m.edges if m else self._none_i64,
            m.min_len if m else 1,
            m.verify if m else 1,
            m.apm_t if m else self._none_f64,
            m.apm_n if m else self._none_i64,
            m.limit if m else 1,
            self.bias is not None,
            self.bias.b if self.bias else self._zero_b,
            self.bias.lr if self.bias else 0.0,
            self.bias.lr_free if self.bias else 0.0,
            self.bias.counts if self.bias else self._none_f64,
            self.bias.u0 if self.bias else self._none_f64,
            self.bias.alpha0 if self.bias else 1.0,
            self.bias.u0max_arr if self.bias else self._none_f64,
            self._lr, self._lr_l, self._w_min, self._w_max,
            mx.w_llm, mx.w_dense, mx.u, mx.v,
            self._ctx, self._wctx, self._prev_ent, self._cur_ent, self._mtok, self._cell,
            self._cell_w, self._mix_ph, self._mix_q, self._mix_s, self._sums, self._gbuf)
        if self.bias:
            self.bias.bmax = bmax

    def _dense_input(self, dense, A: int) -> np.ndarray:
        """(D, A, V) float32 or float64, without a copy where possible (one (A, V)
        array, e.g. the SSM's float64 log-probabilities, becomes a view)."""
        D = self.n_dense
        if D == 0:
            if dense is not None and len(dense) != 0:
                raise ValueError("this ensemble takes no dense inputs")
            return self._no_dense
        if dense is None:
            raise ValueError(f"this ensemble needs {D} dense inputs")
        if isinstance(dense, np.ndarray) and dense.ndim == 3:
            arr = dense
        elif len(dense) == 1:
            arr = np.asarray(dense[0])[None]
        else:
            arr = np.stack([np.asarray(x) for x in dense])
        if arr.dtype not in (np.float32, np.float64):
            arr = arr.astype(np.float64)
        arr = np.ascontiguousarray(arr)
        if arr.shape != (D, A, self.vocab_size):
            raise ValueError(f"dense inputs must have shape ({D}, {A}, {self.vocab_size})")
        return arr


def make(spec: object, vocab_size: int) -> MixedEnsemble:
    return MixedEnsemble.from_spec(spec, vocab_size)


refresh_kernel_cache(globals())
