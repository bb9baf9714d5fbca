"""The online SSM: ``OnlineSSM`` owns the buffers and runs the kernels (see __init__.py)."""

from __future__ import annotations

import math

import numpy as np

from ...validation import SSM as check
from ..ssm_layout import X_CAP, Layout
from .kernels import Buffers, select
from .seeding import BLK_EMB, block_key, init_core, uniform
from .spec import KIND, validate_spec

F32 = np.float32
_CAP_PAD = 48  # head capacity = 2^k + 48 classes (see _add_type)


class OnlineSSM:
    """Online Mamba-style predictor over S lockstep token streams (see module docstring).

    ``from_spec(spec, vocab_size, impl=None)`` -> ``reset(S)`` -> per step
    ``logprobs(A)`` then ``update(tokens)``. ``reset`` starts a fresh model (seeded
    weights, empty head), so an instance can be reused for another input. ``impl``:
    None (C if built, else numba: native.ssm_impl()), "c" or "numba" -- the same bits
    either way."""

    kind = KIND

    def __init__(self, spec: dict, vocab_size: int, impl: str | None = None):
        self._spec = validate_spec(spec)
        check.integer(vocab_size, "vocabulary size", 2, 1 << 24)
        self.vocab_size = vocab_size
        self.kernels = select(impl)
        self.impl = self.kernels.name
        self.n_streams = 0
        self._b: Buffers | None = None

    @classmethod
    def from_spec(cls, spec: object, vocab_size: int, impl: str | None = None) -> "OnlineSSM":
        return cls(validate_spec(spec), vocab_size, impl)

    @property
    def spec(self) -> dict:
        return dict(self._spec)

    # ----- state -----
    def reset(self, n_streams: int) -> None:
        """Fresh model: seeded weights, empty head, zero state for ``n_streams`` streams."""
        if type(n_streams) is not int or n_streams < 1:
            raise ValueError("n_streams must be a positive int")
        sp = self._spec
        S = n_streams
        self.n_streams = S
        V = self.vocab_size
        cap = min(V + 1, 256 + _CAP_PAD)
        lay = Layout(sp, V, cap)
        v = lay.v
        self._lay = lay
        b = Buffers(S)
        self._b = b
        d, di, N, Kc, L, T = v["d"], v["di"], v["N"], v["Kc"], v["L"], v["T"]
        b.set("dims", lay.dims())
        b.set("P", init_core(sp, lay, self.kernels.vlog))
        for n in ("gP", "mP", "vP"):
            b.set(n, np.zeros(v["ncore"], F32))
        b.set("An", np.zeros(L * N * di, F32))
        self.kernels.refresh(b)
        self._alloc_head(cap, 0)
        self.K = 0
        b.set("slot_of", np.zeros(V, np.int32))
        b.set("conv", np.zeros(S * L * Kc * di, F32))
        b.set("ssm", np.zeros(S * L * N * di, F32))
        b.set("conv0", np.zeros(S * L * Kc * di, F32))
        b.set("ssm0", np.zeros(S * L * N * di, F32))
        b.set("hf", np.zeros(S * d, F32))
        b.set("inputs", np.zeros(T * S, np.int32))
        b.set("tgt", np.zeros(T * S, np.int32))
        b.set("Kt", np.zeros(T, np.int32))
        b.set("act1", np.zeros(v["tsz"], F32))
        b.set("dA1", np.zeros(N * di, F32))
        b.set("tmp1", np.zeros(2 * di, F32))
        b.set("act", np.zeros(T * v["tsz"], F32))
        b.set("xs", np.zeros(L * (T + Kc - 1) * di, F32))
        b.set("hs", np.zeros(L * (T + 1) * N * di, F32))
        b.set("dAs", np.zeros(L * T * N * di, F32))
        b.set("bw", np.zeros(v["bsz"], F32))
        b.set("out", np.zeros((S, V), np.float64))
        b.set("hp", np.zeros(8, F32))
        self.pos = 0
        self._chunk_slots = []
        self.n_updates = 0  # Adam steps taken
        self.n_chunks = 0  # stream-chunks trained
        self.last_loss = float("nan")
        self._b1p = 1.0
        self._b2p = 1.0
        # the first input of every stream is slot 0 (start of stream)
        self._A = S
        self.kernels.step(b, S, 0)

    def _alloc_head(self, cap: int, keep: int) -> None:
        """(Re)allocate everything sized by the head capacity, keeping ``keep`` slots."""
        b = self._b
        v = self._lay.v
        d, T, S = v["d"], v["T"], b.S
        old = {n: getattr(b, n, None) for n in ("Whf", "gWh", "mWh", "vWh", "emb", "gemb",
                                                  "memb", "vemb", "type_of")}
        for n in ("Whf", "gWh", "mWh", "vWh"):
            a = np.zeros((d + 1) * cap, F32)
            if keep:
                a.reshape(d + 1, cap)[:, :keep] = old[n].reshape(d + 1, -1)[:, :keep]
            b.set(n, a)
        for n in ("emb", "gemb", "memb", "vemb"):
            a = np.zeros(cap * d, F32)
            if keep:
                a[:keep * d] = old[n][:keep * d]
            b.set(n, a)
        t = np.zeros(cap, np.int32)
        pr = np.zeros(cap, F32)  # count prior: 0 = log 1 for a type not yet counted
        cnt = np.zeros(cap, np.int64)
        if keep:
            t[:keep] = old["type_of"][:keep]
            pr[:keep] = b.pr[:keep]
            cnt[:keep] = self._counts[:keep]
        b.set("type_of", t)
        b.set("pr", pr)
        self._counts = cnt
        if not keep:  # slot 0: start-of-stream input embedding
            b.emb[:d] = uniform(block_key(self._spec["seed"], BLK_EMB), 0, d)
        b.set("Lon", np.zeros(S * cap, F32))
        b.set("Lscr", np.zeros(cap, F32))
        b.set("Lb", np.zeros(T * cap, F32))
        b.dims[X_CAP] = cap
        self._lay.v["cap"] = cap
        self._cap = cap

    def _add_type(self, tok: int) -> None:
        K = self.K + 1
        if K + 1 > self._cap:
            # doubling, plus a pad so the row stride is no power of two (rows of the head
            # weights would otherwise share L1 cache sets in the blocked C loops)
            new = 2 * (self._cap - _CAP_PAD) + _CAP_PAD
            self._alloc_head(min(self.vocab_size + 1, new), self._cap)
        b = self._b
        d = self._lay.v["d"]
        b.slot_of[tok] = K
        b.type_of[K] = tok
        b.emb[K * d:(K + 1) * d] = uniform(block_key(self._spec["seed"], BLK_EMB), K * d, d)
        self.K = K

    # ----- the seam -----
    def logprobs(self, A: int) -> np.ndarray:
        """log P(next token) over the full vocabulary for streams 0..A-1, float64 (A, V).
        The array is reused by the next call."""
        if self._b is None:
            raise RuntimeError("reset() first")
        if not 1 <= A <= self.n_streams:
            raise ValueError("bad number of active streams")
        self.kernels.logprobs(self._b, A, self.K)
        return self._b.out[:A]

    def update(self, tokens: np.ndarray) -> None:
        """The true tokens (int32) of streams 0..A-1 at this step."""
        b = self._b
        if b is None:
            raise RuntimeError("reset() first")
        tokens = np.asarray(tokens)
        A = int(tokens.shape[0])
        if tokens.ndim != 1 or not 1 <= A <= self.n_streams or A > self._A:
            raise ValueError("bad tokens for update")
        if tokens.dtype != np.int32:
            tokens = tokens.astype(np.int32)
        V = self.vocab_size
        if A and (int(tokens.min()) < 0 or int(tokens.max()) >= V):
            raise ValueError("token out of vocabulary")
        self._A = A
        S = b.S
        pos = self.pos
        cls = b.slot_of[tokens]  # class at prediction time (0: escape)
        b.tgt[pos * S: pos * S + A] = cls
        b.Kt[pos] = self.K
        if not cls.all():
            for a in range(A):
                tok = int(tokens[a])
                if b.slot_of[tok] == 0:
                    self._add_type(tok)
        self._chunk_slots.append(b.slot_of[tokens])
        pos += 1
        if pos == self._lay.v["T"]:
            self._train(A)
            self._refresh_prior()
            pos = 0
            b.conv0[:] = b.conv
            b.ssm0[:] = b.ssm
        self.pos = pos
        b.inputs[pos * S: pos * S + A] = b.slot_of[tokens]
        self.kernels.step(b, A, pos)

    def _refresh_prior(self) -> None:
        """Count the chunk's tokens; with ``count_prior`` the head's fixed offsets become
        log(count) (escape: log(#types + 1)) -- a snapshot taken only at chunk boundaries,
        so the online predictions and the chunk's training see the same offsets."""
        b = self._b
        sl = np.concatenate(self._chunk_slots)
        self._chunk_slots = []
        np.add.at(self._counts, sl, 1)
        if self._spec["count_prior"]:
            touched = np.unique(sl)
            b.pr[touched] = self.kernels.vlog(self._counts[touched].astype(F32))
            b.pr[0] = self.kernels.vlog(np.array([self.K + 1], F32))[0]

    # ----- training -----
    def _train(self, A: int) -> None:
        sp = self._spec
        b = self._b
        T = self._lay.v["T"]
        passes = sp["early_passes"] if self.n_chunks < sp["early_steps"] else 1
        S = b.S
        for a in range(A):
            rows = np.unique(b.inputs[a::S][:T]).astype(np.int32)
            for _ in range(passes):
                loss = self.kernels.train(b, a)
                self.kernels.adam(b, self.K, rows, self._adam_hp())
            self.last_loss = loss
            self.n_chunks += 1

    def _adam_hp(self) -> np.ndarray:
        sp = self._spec
        self.n_updates += 1
        n = self.n_updates
        self._b1p *= sp["beta1"]
        self._b2p *= sp["beta2"]
        mult = 1.0
        if sp["boost_steps"] > 0 and n <= sp["boost_steps"]:
            mult = 1.0 + (sp["boost"] - 1.0) * (1.0 - (n - 1) / sp["boost_steps"])
        c2 = math.sqrt(1.0 - self._b2p)
        hp = self._b.hp
        hp[0] = sp["lr"] * mult * c2 / (1.0 - self._b1p)
        hp[1] = sp["beta1"]
        hp[2] = 1.0 - sp["beta1"]
        hp[3] = sp["beta2"]
        hp[4] = 1.0 - sp["beta2"]
        hp[5] = sp["eps"] * c2
        hp[6] = sp["clip"]
        return hp

    # ----- inspection (tests, diagnostics) -----
    def weights(self) -> dict:
        """Copies of all learned arrays (live part only)."""
        b = self._b
        K = self.K
        d = self._lay.v["d"]
        return {
            "core": b.P.copy(),
            "head": b.Whf.reshape(d + 1, -1)[:, :K + 1].copy(),
            "emb": b.emb[:(K + 1) * d].copy(),
            "adam_core": np.concatenate([b.mP, b.vP]),
            "adam_head": np.concatenate([b.mWh.reshape(d + 1, -1)[:, :K + 1].ravel(),
                                         b.vWh.reshape(d + 1, -1)[:, :K + 1].ravel()]),
            "types": b.type_of[1:K + 1].copy(),
        }

