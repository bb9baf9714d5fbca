"""The mixed ensemble: LLM + sparse n-grams + match model + bias head, mixed online.

Per step the engine calls ``predict(logits, has_llm)`` then, after coding,
``update(tokens)``; both sides make the same calls in the same order, so the learned state
is identical. ``confident()`` (state after the previous update only) says for which
streams the match side alone is sure enough that the engine may skip the LLM; such rows
(``has_llm`` False) are predicted without it: LLM-free weight sets, the unigram counts in
its place, and the match's own learned split (which carries them).

Parts: ngram.py (shared sparse count tables), match.py (shared-history match model and
its split maps), bias.py (bias head and unigram counts), mixer.py (weights, contexts and
the passes over V), sse.py (optional: secondary estimation of the LLM's top token),
lowrank.py (optional: a correction of the LLM's logits from its hidden state, which
``predict`` then takes next to the logits). Any part but the mixer can be switched off
(``null`` in the spec).
mixed_spec.py holds the spec and its presets, mixed_kernels.py the two fused kernels
(``predict_rows``, ``update_rows``) and the named state records they take; this file
the class that owns the state and calls them.

The spec (``spec``) holds every parameter that changes a probability; ``from_spec``
rebuilds an identical ensemble from it alone and rejects anything it does not know.

Memory: the n-gram and match tables are sized from the input length within
``max_bytes`` (default 256 MiB, split 5/8 n-gram, 3/8 match); besides them the ensemble
holds the bias vector (V float64), the mixer weights (a few KiB) and per-stream buffers,
chiefly the returned probabilities (streams x V float64).
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import numba
import numpy as np

from ..errors import FormatError
from . import match as match_mod
from . import ngram as ngram_mod  # noqa: F401  (the part modules, as before the split)
from .bias import BiasHead
from .match import MatchModel
from .lowrank import LowRank
from .mixed_kernels import (BiasState, LowRankState, MatchState, MixerState, NgramState,
                            RowState, SseState, predict_rows, predict_rows_parallel,
                            update_rows)
from .mixed_spec import (DEFAULT_MAX_BYTES, HARD_MAX_BYTES, HIDDEN_PRESETS,  # noqa: F401
                         KIND, LATEST_PRESET, LATEST_PRESET_NO_HIDDEN, LLM_FREE_PRESET,
                         MAX_VOCAB, PRESETS, VERSION, default_spec, expand, preset_spec,
                         skip_spec, tables_bytes, validate, validate_skip)
from .mixer import MixerWeights
from .ngram import MAX_ORDER, N_CONF, NGramTables, deterministic_guess
from .sse import SseMaps

# Threads for the rows of a step (predict only: update learns in stream order). The
# result never depends on it (mixed_kernels.predict_rows_parallel); the codec sets it from
# -T, like llama.cpp's threads, and ensembles made afterwards use it.
_threads = 1


def use_threads(n: int) -> None:
    """Predict the rows of a step on up to ``n`` threads (1: in the calling thread)."""
    global _threads
    _threads = max(1, min(int(n), numba.config.NUMBA_NUM_THREADS))


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
        self.sse = SseMaps(s["sse"], self.mixer.n_ent) if s.get("sse") else None
        self.lowrank = LowRank(s["lowrank"], vocab_size) if s.get("lowrank") else None
        # the LLM hidden state's size predict needs (0: none)
        self.hidden_size = self.lowrank.hidden if self.lowrank else 0
        self._no_hidden = np.zeros((1, 1), dtype=np.float32)
        m = s["mixer"]
        self._lr, self._lr_l = m["lr"], m["lr_llm"]
        self._w_min, self._w_max = m["w_min"], m["w_max"]
        self.n_dense = m["dense"]
        self._skip = s["skip"]
        self._absent = _absent_parts(vocab_size)
        self._no_logits = np.zeros((1, vocab_size), dtype=np.float32)
        self._no_dense = np.zeros((1, 1, 1), dtype=np.float32)
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
        n += self._p_add.nbytes + self._p_mark.nbytes
        if self.ngram:
            n += self.ngram.nbytes
        if self.match:
            n += self.match.nbytes
        if self.bias:
            n += self.bias.nbytes
        if self.sse:
            n += self.sse.nbytes
        if self.lowrank:
            n += self.lowrank.nbytes + self._p_lbuf.nbytes
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
        if self.sse:
            self.sse.reset()
        if self.lowrank:
            self.lowrank.reset(S)
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
        self._stok = np.full(S, -1, dtype=np.int32)
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
        # one lane of scratch per thread (predict_rows_parallel); none for one thread
        self._lanes = min(_threads, S)
        K = self._lanes if self._lanes > 1 else 0
        self._p_add = np.zeros((K, V), dtype=np.float64)
        self._p_mark = np.zeros((K, V), dtype=np.uint8)
        self._p_touch = np.zeros((K, nf + 1), dtype=np.int32)
        self._p_acc = np.zeros((K, 2 + max(1, self.n_dense)), dtype=np.float64)
        self._p_lbuf = np.zeros((K, V if self.lowrank else 1), dtype=np.float64)
        self._pending = None
        self._build_records()

    def _build_records(self) -> None:
        """The kernels' named state records (after every reset: they hold the arrays the
        parts have just allocated), each field taken from the attribute of its name."""
        absent = self._absent
        ng = self.ngram if self.ngram is not None else absent.ngram
        m = self.match if self.match is not None else absent.match
        bh = self.bias if self.bias is not None else absent.bias
        self._ng = _record(NgramState, ng, on=self.ngram is not None)
        self._mm = _record(MatchState, m, on=self.match is not None)
        self._bh = _record(BiasState, bh, on=self.bias is not None)
        self._mx = _record(MixerState, self.mixer, lr=self._lr, lr_llm=self._lr_l,
                           w_min=self._w_min, w_max=self._w_max)
        sse = self.sse if self.sse is not None else absent.sse
        self._ss = _record(SseState, sse, on=self.sse is not None)
        lw = self.lowrank if self.lowrank is not None else absent.lowrank
        self._lw = _record(LowRankState, lw, on=self.lowrank is not None)
        self._rs = RowState(**{f: getattr(self, "_" + f) for f in RowState._fields})

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
                dense=None, n_active: int | None = None,
                hidden: np.ndarray | None = None) -> np.ndarray:
        """Probabilities (A, V) float64 of the active streams. ``logits`` (A, V) float32
        or None (no LLM); rows where ``has_llm`` is False are predicted without the LLM
        (their logits are ignored). ``dense``: the extra log-probability inputs (<= 0,
        e.g. the SSM's), (D, A, V) or a list of D arrays (A, V), float32 or float64, D as
        in the spec; they are used in every row. ``n_active``: A when there are no logits
        and no has_llm. ``hidden``: with the low-rank part, the LLM's hidden states (A,
        hidden_size) float32, read on the rows with the LLM. The arrays must stay
        unchanged until ``update``."""
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
        hd = self._hidden_input(hidden, hl)
        bmax = self.bias.bmax if self.bias else 0.0
        lbuf = self.lowrank.lbuf if self.lowrank else self._absent.lowrank.lbuf
        if self._lanes > 1 and A > 1:
            if numba.get_num_threads() != self._lanes:  # (a per-thread setting in numba)
                numba.set_num_threads(self._lanes)
            predict_rows_parallel(A, lg, hl, dn, self.n_dense, bmax, self._ng, self._mm,
                                  self._bh, self._mx, self._ss, self._lw, hd, self._rs,
                                  self._p_add, self._p_mark, self._p_touch, self._p_acc,
                                  self._p_lbuf)
        else:
            predict_rows(A, lg, hl, dn, self.n_dense, bmax, self._ng, self._mm, self._bh,
                         self._mx, self._ss, self._lw, hd, self._rs, lbuf)
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
        bmax = update_rows(A, toks, lg, hl, dn, self.n_dense, self._ng, self._mm, self._bh,
                           self._mx, self._ss, self._lw, self._rs)
        if self.bias:
            self.bias.bmax = bmax

    def _hidden_input(self, hidden, has_llm: np.ndarray) -> np.ndarray:
        """(A, hidden_size) float32, C-contiguous (a stand-in without the low-rank part)."""
        if not self.lowrank:
            if hidden is not None:
                raise ValueError("this ensemble takes no hidden states")
            return self._no_hidden
        if not np.any(has_llm):
            return self._no_hidden  # (never read: no row has the LLM)
        if hidden is None:
            raise ValueError("this ensemble needs the LLM's hidden states")
        hd = np.ascontiguousarray(hidden, dtype=np.float32)
        if hd.shape != (len(has_llm), self.hidden_size):
            raise ValueError(f"hidden states must have shape ({len(has_llm)}, "
                             f"{self.hidden_size})")
        return hd

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


def _record(cls, src, **given):
    """A record of type ``cls``: the ``given`` fields, every other one from ``src``'s
    attribute of the same name (by name, never by position)."""
    return cls(**given, **{f: getattr(src, f) for f in cls._fields if f not in given})


def _absent_parts(vocab_size: int) -> SimpleNamespace:
    """Stand-ins for absent parts: the attributes the kernels' records take, of the same
    types as a real part's (so the kernels compile once), never read (the flag is off).
    The bias head's vectors are read as zeros: no bias, no unigram."""
    i32, i64 = np.zeros(1, np.int32), np.zeros(1, np.int64)
    u16, f64 = np.zeros(1, np.uint16), np.zeros(1, np.float64)
    zero_b = np.zeros(vocab_size, np.float64)
    return SimpleNamespace(
        ngram=SimpleNamespace(tab=np.zeros(1, np.uint32), bases=i64,
                              masks=np.zeros(1, np.uint64), width=1, orders=i64,
                              logtab=f64.reshape(1, 1)),
        match=SimpleNamespace(hist_tok=i32, hist_prv=u16, hist_nxt=u16, n_hist=i64, table=i64,
                              last_pos=i64, ptr=i64, mlen=i32, hits=i64, tries=i64, edges=i64,
                              min_len=1, verify=1, apm_t=f64, apm_n=i64, apm_points=1,
                              apm_range=1.0, limit=1),
        bias=SimpleNamespace(b=zero_b, u0=zero_b, u0max_arr=f64, counts=f64, lr=0.0,
                             lr_free=0.0, alpha0=1.0),
        sse=SimpleNamespace(t=f64, n=i64, n_ent=1, mask=0, points=1, range=1.0, limit=1,
                            weight=1.0),
        lowrank=SimpleNamespace(a=f64.reshape(1, 1), b=f64.reshape(1, 1),
                                slot=i32, order=i32, n_used=i64, sel=i32,
                                u=f64.reshape(1, 1), z=f64.reshape(1, 1), gz=f64, lr=0.0,
                                lr_hidden=0.0, min_q=1.0, lbuf=f64))


def make(spec: object, vocab_size: int) -> MixedEnsemble:
    return MixedEnsemble.from_spec(spec, vocab_size)

