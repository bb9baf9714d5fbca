"""Online Mamba-style selective state-space model (SSM) predictor.

A small Mamba network (embedding, ``n_layers`` blocks of RMSNorm -> in-projection to
(x, z) -> causal depthwise conv -> SiLU -> selective scan with input-dependent softplus Δ,
B, C and A = -exp(A_log), D skip -> gating by SiLU(z) -> out-projection + residual; final
RMSNorm; output head) trained online with Adam on the tokens already coded. Encoder and
decoder run the same calls in the same order and get bit-identical probabilities.

Output head. Only token types that occurred so far have a head column ("slot"), in order of
first appearance (slot 1, 2, ...); slot 0 is the *escape* class "a type not seen yet",
whose probability mass is spread uniformly over the unseen types of the vocabulary (once
every type has been seen there is no escape class). The input embedding is indexed by the
same slots (slot 0 = the start-of-stream input). So no weight matrix is ever
vocabulary-wide; only the dense (A, V) log-probability output is. With ``count_prior`` the
logit of a class also gets a fixed offset log(count) (escape: log(#types + 1)), so the
untrained head starts as an adaptive unigram (PPM method C) and the network learns the
context-dependent correction; the counts are a snapshot taken at chunk boundaries (a type
first seen inside the chunk counts as 1), so predictions and training agree exactly.

Streams. S streams run in lockstep and share all weights, the head and the counts; each has
its own recurrent state (conv window + scan state per layer). Everything that changes
shared state runs in stream order 0..A-1.

Training. Every ``chunk`` steps each active stream has a complete chunk of ``chunk``
(input, target) pairs. For each stream in order 0..A-1 (and ``early_passes`` times while
fewer than ``early_steps`` chunk updates have been made) the chunk is re-run from the
recurrent state saved at its start with the current weights, back-propagated through the
whole chunk (truncated BPTT: the gradient does NOT flow into the state from before the
chunk) and one Adam step is taken; so the weights move once per stream-chunk and the
number of Adam steps does not depend on the stream count. The learning rate starts at
``boost`` x ``lr`` and decays linearly to ``lr`` over ``boost_steps`` Adam steps. The chunk
loss is the mean cross entropy of the head's classes at the time of each prediction
(a type that was new at its position is an escape target).

Numerics (DESIGN.md). float32 everywhere (the dense output is float64, cast from float32).
No libm: exp and log are the polynomial ``fexp``/``flog`` below, written with IEEE basic
operations only (+ - * /, sqrt, bit casts), identically in this file and in csrc/ssm.c.
glibc's expf/logf are ifunc-dispatched by CPU features, so they may differ between
machines; ours cannot, and they vectorise. Every reduction has a fixed order: matrix
products accumulate each output in input order (vectorised across outputs), the long
softmax sums and dot products use explicit lanes combined in a fixed tree. Nothing is
threaded. The C twin (csrc/ssm.c via nacz/native.py) gives the same bits.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core.extending import intrinsic

from .. import native
from ..errors import FormatError

F32 = np.float32

# ---------------------------------------------------------------------------------------
# spec
# ---------------------------------------------------------------------------------------

KIND = "ssm"
VERSION = 1

# name: (type, lo, hi) -- ints are inclusive ranges, floats are lo < x <= hi unless noted
_INT_KEYS = {
    "version": (1, 1),
    "d_model": (4, 128),
    "d_state": (1, 64),
    "expand": (1, 4),
    "d_conv": (1, 8),
    "n_layers": (1, 4),
    "dt_rank": (1, 32),
    "chunk": (2, 128),
    "boost_steps": (0, 1 << 40),
    "early_passes": (1, 8),
    "early_steps": (0, 1 << 40),
    "count_prior": (0, 1),
    "seed": (0, (1 << 63) - 1),
}
_FLOAT_KEYS = {  # lo < x <= hi
    "lr": (0.0, 1.0),
    "beta1": (-1e-300, 0.999999),  # 0 <= beta1 < 1
    "beta2": (-1e-300, 0.999999999),
    "eps": (0.0, 1.0),
    "clip": (0.0, 1e6),
    "boost": (0.999999, 100.0),  # boost >= 1
}
# training workspace bound (float32 elements) so a hostile header cannot allocate much
_MAX_WORK = 1 << 24


def default_spec() -> dict:
    return {
        "kind": KIND, "version": VERSION,
        "d_model": 32, "d_state": 16, "expand": 2, "d_conv": 4, "n_layers": 2, "dt_rank": 2,
        "chunk": 32, "lr": 0.003, "beta1": 0.8, "beta2": 0.99, "eps": 1e-3, "clip": 1.0,
        "boost": 3.0, "boost_steps": 1000, "early_passes": 2, "early_steps": 64,
        "count_prior": 1,
        "seed": 0x6E61637A,
    }


def validate_spec(spec: object) -> dict:
    """A normalised copy of ``spec`` (all keys present, right types, in range) or FormatError."""
    if not isinstance(spec, dict):
        raise FormatError(f"SSM spec is not an object: {spec!r:.80}")
    want = {"kind"} | set(_INT_KEYS) | set(_FLOAT_KEYS)
    if set(spec) != want:
        extra = sorted(map(str, set(spec) - want))
        missing = sorted(want - set(spec))
        raise FormatError(f"SSM spec keys wrong (unknown {extra}, missing {missing})")
    if spec["kind"] != KIND:
        raise FormatError(f"SSM spec has kind {spec['kind']!r:.40}, expected {KIND!r}")
    out = {}
    for k in default_spec():  # canonical key order
        v = spec[k]
        if k == "kind":
            out[k] = KIND
        elif k in _INT_KEYS:
            lo, hi = _INT_KEYS[k]
            if type(v) is not int or not lo <= v <= hi:
                raise FormatError(f"SSM spec {k}={v!r:.40} is not an integer in [{lo}, {hi}]")
            out[k] = v
        else:
            lo, hi = _FLOAT_KEYS[k]
            if type(v) not in (int, float) or not math.isfinite(v) or not lo < v <= hi:
                raise FormatError(f"SSM spec {k}={v!r:.40} is out of range")
            out[k] = float(v)
    if out["d_model"] % 4:
        raise FormatError("SSM spec d_model must be a multiple of 4")
    lay = _Layout(out, 2, 1)
    if lay.work_elems() > _MAX_WORK:
        raise FormatError("SSM spec sizes too large")
    return out


# ---------------------------------------------------------------------------------------
# layout: every offset the kernels use, computed once here (single source of truth)
# ---------------------------------------------------------------------------------------

DIM_NAMES = (
    "d", "di", "N", "R", "P", "Kc", "L", "T", "V", "cap", "KT",
    "lsz", "o_g", "o_win", "o_cw", "o_cb", "o_wxp", "o_wdt", "o_bdt", "o_alog", "o_D",
    "o_wout", "o_gf", "ncore",
    "asz", "a_r", "a_rs", "a_n", "a_z", "a_xc", "a_u", "a_dbc", "a_dpre", "a_del", "a_y",
    "a_gy", "tsz",
    "b_dR", "b_dY", "b_dZ", "b_dU", "b_dDel", "b_dX", "b_dBC", "b_dh", "b_dAn", "b_dHT",
    "b_GT", "b_t1", "b_t2", "b_t3", "bsz",
)
for _i, _n in enumerate(DIM_NAMES):
    globals()["X_" + _n.upper()] = _i
N_DIMS = len(DIM_NAMES)
HEAD_TILE = 128  # classes per tile in the head loops (cache blocking; no effect on results)
_CAP_PAD = 48  # head capacity = 2^k + 48 classes (see _add_type)


class _Layout:
    def __init__(self, spec: dict, vocab_size: int, cap: int):
        d = spec["d_model"]
        di = spec["expand"] * d
        N = spec["d_state"]
        R = spec["dt_rank"]
        P = R + 2 * N
        Kc = spec["d_conv"]
        L = spec["n_layers"]
        T = spec["chunk"]
        v = {"d": d, "di": di, "N": N, "R": R, "P": P, "Kc": Kc, "L": L, "T": T,
             "V": vocab_size, "cap": cap, "KT": HEAD_TILE}
        o = 0
        for name, size in (("o_g", d), ("o_win", d * 2 * di), ("o_cw", Kc * di),
                           ("o_cb", di), ("o_wxp", di * P), ("o_wdt", R * di), ("o_bdt", di),
                           ("o_alog", N * di), ("o_D", di), ("o_wout", di * d)):
            v[name] = o
            o += size
        v["lsz"] = o
        v["o_gf"] = L * o
        v["ncore"] = L * o + d
        o = 0
        for name, size in (("a_r", d), ("a_rs", 1), ("a_n", d), ("a_z", di), ("a_xc", di),
                           ("a_u", di), ("a_dbc", P), ("a_dpre", di), ("a_del", di),
                           ("a_y", di), ("a_gy", di)):
            v[name] = o
            o += size
        v["asz"] = o
        # per-step record: L layer records, then the final block [r (d), rs (1), h (d)]
        v["tsz"] = L * o + 2 * d + 1
        o = 0
        for name, size in (("b_dR", T * d), ("b_dY", T * di), ("b_dZ", T * di),
                           ("b_dU", T * di), ("b_dDel", T * di), ("b_dX", T * di),
                           ("b_dBC", T * 2 * N), ("b_dh", N * di), ("b_dAn", N * di),
                           ("b_dHT", d * T), ("b_GT", HEAD_TILE * T), ("b_t1", 2 * di + P + d),
                           ("b_t2", 2 * di + P + d), ("b_t3", 2 * di + P + d)):
            v[name] = o
            o += size
        v["bsz"] = o
        self.v = v
        self.spec = spec

    def dims(self) -> np.ndarray:
        return np.array([self.v[n] for n in DIM_NAMES], dtype=np.int64)

    def work_elems(self) -> int:
        v = self.v
        return (v["T"] * v["tsz"] + v["L"] * (v["T"] + v["Kc"]) * v["di"]
                + 2 * v["L"] * (v["T"] + 1) * v["N"] * v["di"] + v["bsz"] + 4 * v["ncore"])


# ---------------------------------------------------------------------------------------
# deterministic initialisation: counter-based splitmix64 -> exact float32 in [-1, 1)
# ---------------------------------------------------------------------------------------

_M64 = (1 << 64) - 1
_GAMMA = 0x9E3779B97F4A7C15


def _mix64(z: int) -> int:
    z &= _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def _key(seed: int, block: int) -> int:
    return _mix64(_mix64(seed) ^ ((block + 1) * _GAMMA & _M64))


def uniform(key: int, start: int, n: int) -> np.ndarray:
    """float32 values k * 2^-23, k in [-2^23, 2^23): exact, platform independent."""
    with np.errstate(over="ignore"):
        z = np.uint64(key) + (np.arange(start + 1, start + n + 1, dtype=np.uint64)
                              * np.uint64(_GAMMA))
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    k = (z >> np.uint64(40)).astype(np.int64) - (1 << 23)
    return k.astype(np.float32) * F32(2.0 ** -23)


_BLK_CORE, _BLK_EMB = 1, 2

# ---------------------------------------------------------------------------------------
# numba kernels (twins of csrc/ssm.c: keep every operation in the same order)
# ---------------------------------------------------------------------------------------


@intrinsic
def _i2f(typingctx, i):
    sig = types.float32(types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())
    return sig, codegen


@intrinsic
def _f2i(typingctx, x):
    sig = types.int32(types.float32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))
    return sig, codegen


_Z = F32(0.0)
_ONE = F32(1.0)
_HALF = F32(0.5)
_EXP_LO = F32(-87.0)
_EXP_HI = F32(87.0)
_LOG2E = F32(1.44269504088896341)
_MAGIC = F32(12582912.0)  # 1.5 * 2^23: (x + M) - M rounds x to an integer (ties to even)
_LN2_HI = F32(0.693359375)
_LN2_LO = F32(-2.12194440e-4)
_EP0 = F32(1.9875691500e-4)
_EP1 = F32(1.3981999507e-3)
_EP2 = F32(8.3334519073e-3)
_EP3 = F32(4.1665795894e-2)
_EP4 = F32(1.6666665459e-1)
_EP5 = F32(5.0000001201e-1)
_SQRT2 = F32(1.41421356237)
_LP0 = F32(7.0376836292e-2)
_LP1 = F32(-1.1514610310e-1)
_LP2 = F32(1.1676998740e-1)
_LP3 = F32(-1.2420140846e-1)
_LP4 = F32(1.4249322787e-1)
_LP5 = F32(-1.6668057665e-1)
_LP6 = F32(2.0000714765e-1)
_LP7 = F32(-2.4999993993e-1)
_LP8 = F32(3.3333331174e-1)
_LOG_MIN = F32(1.0e-30)
_SP_HI = F32(15.0)
_SP_LO = F32(-15.0)
_NORM_EPS = F32(1e-5)
_LOGIT_CLIP = F32(50.0)

_JIT = dict(nopython=True, fastmath=False, cache=True, nogil=True, error_model="numpy")
_JIT_INLINE = dict(_JIT, inline="always")  # small scalar helpers: inlined by numba itself


@numba.jit(**_JIT_INLINE)
def fexp(x):
    """exp(x) for float32 x, clamped to [-87, 87]; NaN -> exp(-87). ~1.3 ulp."""
    x = x if x > _EXP_LO else _EXP_LO
    x = x if x < _EXP_HI else _EXP_HI
    fn = (x * _LOG2E + _MAGIC) - _MAGIC
    r = x - fn * _LN2_HI
    r = r - fn * _LN2_LO
    z = r * r
    p = _EP0
    p = p * r + _EP1
    p = p * r + _EP2
    p = p * r + _EP3
    p = p * r + _EP4
    p = p * r + _EP5
    p = p * z + r + _ONE
    n = np.int32(fn)
    return p * _i2f((n + np.int32(127)) << np.int32(23))


@numba.jit(**_JIT_INLINE)
def flog(x):
    """log(x) for float32 x > 0 (x below 1e-30 or NaN is taken as 1e-30)."""
    x = x if x > _LOG_MIN else _LOG_MIN
    b = _f2i(x)
    e = np.int32((b >> np.int32(23)) - np.int32(127))
    m = _i2f((b & np.int32(0x7FFFFF)) | np.int32(0x3F800000))
    big = m > _SQRT2
    m = m * _HALF if big else m
    e = np.int32(e + np.int32(1)) if big else e
    f = m - _ONE
    z = f * f
    y = _LP0
    y = y * f + _LP1
    y = y * f + _LP2
    y = y * f + _LP3
    y = y * f + _LP4
    y = y * f + _LP5
    y = y * f + _LP6
    y = y * f + _LP7
    y = y * f + _LP8
    y = y * f * z
    fe = F32(e)
    y = y + fe * _LN2_LO
    y = y - _HALF * z
    r = f + y
    r = r + fe * _LN2_HI
    return r


@numba.jit(**_JIT_INLINE)
def _sigm(x):
    return _ONE / (_ONE + fexp(-x))


@numba.jit(**_JIT_INLINE)
def _softplus(x):
    """log(1 + exp(x)); x for x > 15, exp(x) for x < -15 (branch-free: vectorises)."""
    e = fexp(x)
    r = flog(_ONE + e)
    r = e if x < _SP_LO else r
    return x if x > _SP_HI else r


# All kernel indices are uint64 (``U``): numba then emits no negative-index wraparound
# code and LLVM vectorises the inner loops; addressing is "array + offset" like the C twin.
U = np.uint64
_U0 = U(0)
_U1 = U(1)
_U2 = U(2)
_U3 = U(3)
_U4 = U(4)
_U5 = U(5)
_U6 = U(6)
_U7 = U(7)
_U8 = U(8)
_U9 = U(9)
_U10 = U(10)
_U11 = U(11)
_U12 = U(12)
_U13 = U(13)
_U14 = U(14)
_U15 = U(15)
_U16 = U(16)


@numba.jit(**_JIT)
def _dot8(a, ao, b, bo, n):
    """sum_k a[ao+k]*b[bo+k], k < n: 8 lanes (lane l takes k = l mod 8) combined as
    ((0+1)+(2+3))+((4+5)+(6+7)), then the tail in order."""
    s0 = _Z
    s1 = _Z
    s2 = _Z
    s3 = _Z
    s4 = _Z
    s5 = _Z
    s6 = _Z
    s7 = _Z
    n8 = n - (n & _U7)
    for k in range(_U0, n8, _U8):
        i = ao + k
        j = bo + k
        s0 += a[i] * b[j]
        s1 += a[i + _U1] * b[j + _U1]
        s2 += a[i + _U2] * b[j + _U2]
        s3 += a[i + _U3] * b[j + _U3]
        s4 += a[i + _U4] * b[j + _U4]
        s5 += a[i + _U5] * b[j + _U5]
        s6 += a[i + _U6] * b[j + _U6]
        s7 += a[i + _U7] * b[j + _U7]
    s = ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))
    for k in range(n8, n):
        s += a[ao + k] * b[bo + k]
    return s


@numba.jit(**_JIT)
def _sum16(x, xo, n):
    """sum_k x[xo+k], k < n: 16 lanes combined pairwise as a tree, then the tail in order."""
    s0 = _Z
    s1 = _Z
    s2 = _Z
    s3 = _Z
    s4 = _Z
    s5 = _Z
    s6 = _Z
    s7 = _Z
    s8 = _Z
    s9 = _Z
    s10 = _Z
    s11 = _Z
    s12 = _Z
    s13 = _Z
    s14 = _Z
    s15 = _Z
    n16 = n - (n & _U15)
    for k in range(_U0, n16, _U16):
        i = xo + k
        s0 += x[i]
        s1 += x[i + _U1]
        s2 += x[i + _U2]
        s3 += x[i + _U3]
        s4 += x[i + _U4]
        s5 += x[i + _U5]
        s6 += x[i + _U6]
        s7 += x[i + _U7]
        s8 += x[i + _U8]
        s9 += x[i + _U9]
        s10 += x[i + _U10]
        s11 += x[i + _U11]
        s12 += x[i + _U12]
        s13 += x[i + _U13]
        s14 += x[i + _U14]
        s15 += x[i + _U15]
    s = ((((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7)))
         + (((s8 + s9) + (s10 + s11)) + ((s12 + s13) + (s14 + s15))))
    for k in range(n16, n):
        s += x[xo + k]
    return s


@numba.jit(**_JIT)
def _layer_fwd(P, lb, dims, An, ano, act, ro, xw, xo, hp, hpo, ho, hoo, dA, dao, tmp, tmo):
    """One token through one Mamba block.
    act[ro:]      the layer's activation record, r_in already in place; the block output
                  r_in + out goes to act[ro + asz:] (the next record's r_in / final block)
    xw[xo:]       conv window, Kc rows of di: Kc-1 previous x; this x goes to the last row
    hp[hpo:] -> ho[hoo:]  scan state N x di (may be the same memory)
    dA[dao:]      receives exp(Δ·A) (N x di); tmp[tmo:] scratch of 2 di."""
    d = U(dims[X_D])
    di = U(dims[X_DI])
    N = U(dims[X_N])
    R = U(dims[X_R])
    Pp = U(dims[X_P])
    Kc = U(dims[X_KC])
    di2 = _U2 * di
    og = lb + U(dims[X_O_G])
    owin = lb + U(dims[X_O_WIN])
    ocw = lb + U(dims[X_O_CW])
    ocb = lb + U(dims[X_O_CB])
    owxp = lb + U(dims[X_O_WXP])
    owdt = lb + U(dims[X_O_WDT])
    obdt = lb + U(dims[X_O_BDT])
    oD = lb + U(dims[X_O_D])
    owout = lb + U(dims[X_O_WOUT])
    r = ro + U(dims[X_A_R])
    nrm = ro + U(dims[X_A_N])
    z = ro + U(dims[X_A_Z])
    xc = ro + U(dims[X_A_XC])
    u = ro + U(dims[X_A_U])
    dbc = ro + U(dims[X_A_DBC])
    dpre = ro + U(dims[X_A_DPRE])
    dl = ro + U(dims[X_A_DEL])
    y = ro + U(dims[X_A_Y])
    gy = ro + U(dims[X_A_GY])
    nxt = ro + U(dims[X_ASZ])
    # RMSNorm
    ss = _dot8(act, r, act, r, d)
    rs = _ONE / math.sqrt(ss / F32(d) + _NORM_EPS)
    act[ro + U(dims[X_A_RS])] = rs
    for i in range(d):
        act[nrm + i] = (act[r + i] * rs) * P[og + i]
    # in-projection: xz[o] = sum_i nrm[i] * Win[i, o]
    for o in range(di2):
        tmp[tmo + o] = _Z
    for i in range(d):
        w = act[nrm + i]
        row = owin + i * di2
        for o in range(di2):
            tmp[tmo + o] += w * P[row + o]
    xl = xo + (Kc - _U1) * di
    for c in range(di):
        xw[xl + c] = tmp[tmo + c]
        act[z + c] = tmp[tmo + di + c]
    # causal depthwise conv + SiLU
    for c in range(di):
        act[xc + c] = P[ocb + c]
    for k in range(Kc):
        wk = ocw + k * di
        xk = xo + k * di
        for c in range(di):
            act[xc + c] += P[wk + c] * xw[xk + c]
    for c in range(di):
        v = act[xc + c]
        act[u + c] = v * _sigm(v)
    # x-projection to (dt_raw, B, C)
    for o in range(Pp):
        act[dbc + o] = _Z
    for c in range(di):
        w = act[u + c]
        row = owxp + c * Pp
        for o in range(Pp):
            act[dbc + o] += w * P[row + o]
    # Δ = softplus(b_dt + dt_raw @ Wdt)
    for c in range(di):
        act[dpre + c] = P[obdt + c]
    for q in range(R):
        w = act[dbc + q]
        row = owdt + q * di
        for c in range(di):
            act[dpre + c] += w * P[row + c]
    for c in range(di):
        act[dl + c] = _softplus(act[dpre + c])
    # selective scan (two loops per state row: few memory streams, so LLVM vectorises)
    for c in range(di):
        act[y + c] = _Z
    for s in range(N):
        Bs = act[dbc + R + s]
        Cs = act[dbc + R + N + s]
        sa = ano + s * di
        sp = hpo + s * di
        so = hoo + s * di
        sd = dao + s * di
        for c in range(di):
            dA[sd + c] = fexp(act[dl + c] * An[sa + c])
        for c in range(di):
            h = dA[sd + c] * hp[sp + c] + (act[dl + c] * act[u + c]) * Bs
            ho[so + c] = h
            act[y + c] += h * Cs
    for c in range(di):
        act[y + c] = act[y + c] + P[oD + c] * act[u + c]
    # gate and out-projection with residual
    for c in range(di):
        zc = act[z + c]
        act[gy + c] = act[y + c] * (zc * _sigm(zc))
    for j in range(d):
        act[nxt + j] = _Z
    for c in range(di):
        w = act[gy + c]
        row = owout + c * d
        for j in range(d):
            act[nxt + j] += w * P[row + j]
    for j in range(d):
        act[nxt + j] = act[r + j] + act[nxt + j]


@numba.jit(**_JIT)
def _final_norm(P, dims, act, fo):
    """act[fo:] = [r (d), rs (1), h (d)]: h = RMSNorm(r) * g_f."""
    d = U(dims[X_D])
    ogf = U(dims[X_O_GF])
    ss = _dot8(act, fo, act, fo, d)
    rs = _ONE / math.sqrt(ss / F32(d) + _NORM_EPS)
    act[fo + d] = rs
    for i in range(d):
        act[fo + d + _U1 + i] = (act[fo + i] * rs) * P[ogf + i]


@numba.jit(**_JIT)
def k_refresh(dims, P, An):
    """An = -exp(A_log) for every layer."""
    L = U(dims[X_L])
    nd = U(dims[X_N]) * U(dims[X_DI])
    for l in range(L):
        o = l * U(dims[X_LSZ]) + U(dims[X_O_ALOG])
        for i in range(nd):
            An[l * nd + i] = -fexp(P[o + i])


@numba.jit(**_JIT)
def k_vlog(x, out):
    for i in range(x.shape[0]):
        out[i] = flog(x[i])


@numba.jit(**_JIT)
def k_vexp(x, out):
    for i in range(x.shape[0]):
        out[i] = fexp(x[i])


@numba.jit(**_JIT)
def k_step(A, S, pos, inputs, dims, P, An, emb, conv, ssm, hf, act, dAw, tmp):
    """Feed the slots inputs[pos, a] to streams a < A; their new features go to hf[a]."""
    A = U(A)
    S = U(S)
    pos = U(pos)
    d = U(dims[X_D])
    di = U(dims[X_DI])
    nd = U(dims[X_N]) * di
    Kc = U(dims[X_KC])
    L = U(dims[X_L])
    asz = U(dims[X_ASZ])
    lsz = U(dims[X_LSZ])
    for a in range(A):
        e = U(inputs[pos * S + a]) * d
        for i in range(d):
            act[i] = emb[e + i]
        for l in range(L):
            xo = (a * L + l) * Kc * di
            ho = (a * L + l) * nd
            _layer_fwd(P, l * lsz, dims, An, l * nd, act, l * asz, conv, xo, ssm, ho, ssm,
                       ho, dAw, _U0, tmp, _U0)
            for i in range((Kc - _U1) * di):
                conv[xo + i] = conv[xo + di + i]
        fo = L * asz
        _final_norm(P, dims, act, fo)
        for i in range(d):
            hf[a * d + i] = act[fo + d + _U1 + i]


@numba.jit(**_JIT)
def _head_fwd(Whf, pr, dims, c1, nrows, H, hs, hof, Lb):
    """Lb[r, k] = clamp((Whf[d, k] + pr[k]) + sum_j H[r*hs + hof + j] * Whf[j, k]) for
    k < c1, accumulated in j order (tiled over k: tiling does not change any result)."""
    d = U(dims[X_D])
    cap = U(dims[X_CAP])
    KT = U(dims[X_KT])
    for k0 in range(_U0, c1, KT):
        k1 = min(k0 + KT, c1)
        for r in range(nrows):
            row = r * cap
            for k in range(k0, k1):
                Lb[row + k] = Whf[d * cap + k] + pr[k]
            for j in range(d):
                w = H[r * hs + hof + j]
                wr = j * cap
                for k in range(k0, k1):
                    Lb[row + k] += w * Whf[wr + k]
            for k in range(k0, k1):
                v = Lb[row + k]
                v = v if v > -_LOGIT_CLIP else -_LOGIT_CLIP  # NaN -> -clip
                v = v if v < _LOGIT_CLIP else _LOGIT_CLIP
                Lb[row + k] = v


@numba.jit(**_JIT)
def k_logprobs(A, K, dims, Whf, pr, hf, Lb, scr, type_of, out):
    """Dense log-probabilities (A, V) float64 of the next token of streams a < A.
    Lb: logits (A x cap), scr: scratch (cap)."""
    A = U(A)
    K = U(K)
    d = U(dims[X_D])
    cap = U(dims[X_CAP])
    V = U(dims[X_V])
    lo = _U1 if K >= V else _U0
    _head_fwd(Whf, pr, dims, K + _U1, A, hf, d, _U0, Lb)
    for a in range(A):
        row = a * cap
        for k in range(lo, K + _U1):
            scr[k] = fexp(Lb[row + k])
        s = _sum16(scr, lo, K + _U1 - lo)
        ls = flog(s)
        if K < V:
            fill = np.float64((Lb[row] - ls) - flog(F32(V - K)))
            for v in range(V):
                out[a, v] = fill
        for k in range(_U1, K + _U1):
            out[a, U(type_of[k])] = np.float64(Lb[row + k] - ls)


@numba.jit(**_JIT)
def _layer_bwd(P, gP, l, dims, An, ano, act, xs, xso, hs, hso, dAs, dso, bw):
    """Back-propagate layer l over the chunk: bw[dR] holds dLoss/d(layer output) on entry
    and dLoss/d(layer input) on exit; parameter gradients are added to gP.
    xs[xso:] conv rows (Kc-1 start rows, then x_t), hs[hso:] states h_-1..h_{T-1},
    dAs[dso:] exp(Δ·A) per step."""
    d = U(dims[X_D])
    di = U(dims[X_DI])
    N = U(dims[X_N])
    R = U(dims[X_R])
    Pp = U(dims[X_P])
    Kc = U(dims[X_KC])
    T = U(dims[X_T])
    asz = U(dims[X_ASZ])
    tsz = U(dims[X_TSZ])
    nd = N * di
    di2 = _U2 * di
    N2 = _U2 * N
    lb = l * U(dims[X_LSZ])
    og = lb + U(dims[X_O_G])
    owin = lb + U(dims[X_O_WIN])
    ocw = lb + U(dims[X_O_CW])
    ocb = lb + U(dims[X_O_CB])
    owxp = lb + U(dims[X_O_WXP])
    owdt = lb + U(dims[X_O_WDT])
    obdt = lb + U(dims[X_O_BDT])
    oalog = lb + U(dims[X_O_ALOG])
    oD = lb + U(dims[X_O_D])
    owout = lb + U(dims[X_O_WOUT])
    aR = U(dims[X_A_R])
    aRS = U(dims[X_A_RS])
    aN = U(dims[X_A_N])
    aZ = U(dims[X_A_Z])
    aXC = U(dims[X_A_XC])
    aU = U(dims[X_A_U])
    aDBC = U(dims[X_A_DBC])
    aDPRE = U(dims[X_A_DPRE])
    aDEL = U(dims[X_A_DEL])
    aY = U(dims[X_A_Y])
    aGY = U(dims[X_A_GY])
    bR = U(dims[X_B_DR])
    bY = U(dims[X_B_DY])
    bZ = U(dims[X_B_DZ])
    bU = U(dims[X_B_DU])
    bDel = U(dims[X_B_DDEL])
    bX = U(dims[X_B_DX])
    bBC = U(dims[X_B_DBC])
    bh = U(dims[X_B_DH])
    bAn = U(dims[X_B_DAN])
    b1 = U(dims[X_B_T1])
    b2 = U(dims[X_B_T2])
    b3 = U(dims[X_B_T3])
    # phase A: out-projection, gate, D skip
    for t in range(T):
        rec = t * tsz + l * asz
        dO = bR + t * d
        dy = bY + t * di
        dz = bZ + t * di
        du = bU + t * di
        for c in range(di):
            w = act[rec + aGY + c]
            row = owout + c * d
            for j in range(d):
                gP[row + j] += w * bw[dO + j]
        for c in range(di):
            bw[dy + c] = _dot8(P, owout + c * d, bw, dO, d)
        for c in range(di):
            zc = act[rec + aZ + c]
            sz = _sigm(zc)
            dg = bw[dy + c]
            bw[dy + c] = dg * (zc * sz)
            bw[dz + c] = (dg * act[rec + aY + c]) * (sz * (_ONE + zc * (_ONE - sz)))
        for c in range(di):
            gP[oD + c] += bw[dy + c] * act[rec + aU + c]
            bw[du + c] = bw[dy + c] * P[oD + c]
    # phase B: selective scan backwards in time (nothing flows into the chunk's start state)
    for i in range(nd):
        bw[bh + i] = _Z
        bw[bAn + i] = _Z
    for ti in range(np.int64(T) - 1, -1, -1):
        t = U(ti)
        rec = t * tsz + l * asz
        u = rec + aU
        dl = rec + aDEL
        dbc = rec + aDBC
        hcur = hso + (t + _U1) * nd
        hprv = hso + t * nd
        dAt = dso + t * nd
        dy = bY + t * di
        du = bU + t * di
        ddel = bDel + t * di
        dbct = bBC + t * N2
        for s in range(N):
            Cs = act[dbc + R + N + s]
            for c in range(di):
                bw[bh + s * di + c] += bw[dy + c] * Cs
        for s in range(N):
            bw[dbct + N + s] = _dot8(hs, hcur + s * di, bw, dy, di)
        for c in range(di):
            bw[b1 + c] = act[dl + c] * act[u + c]
        for s in range(N):
            bw[dbct + s] = _dot8(bw, bh + s * di, bw, b1, di)
        for c in range(di):
            bw[ddel + c] = _Z
        for s in range(N):
            Bs = act[dbc + R + s]
            sh = bh + s * di
            sp = hprv + s * di
            sd = dAt + s * di
            sa = ano + s * di
            sn = bAn + s * di
            for c in range(di):
                gh = bw[sh + c]
                q = (gh * hs[sp + c]) * dAs[sd + c]
                bw[ddel + c] += q * An[sa + c]
                bw[sn + c] += q * act[dl + c]
                gb = gh * Bs
                bw[ddel + c] += gb * act[u + c]
                bw[du + c] += gb * act[dl + c]
                bw[sh + c] = gh * dAs[sd + c]
    for i in range(nd):
        gP[oalog + i] += bw[bAn + i] * An[ano + i]
    # phase C: softplus, dt- and x-projections, SiLU
    for t in range(T):
        rec = t * tsz + l * asz
        xc = rec + aXC
        u = rec + aU
        dbc = rec + aDBC
        dpre = rec + aDPRE
        du = bU + t * di
        ddel = bDel + t * di
        dbct = bBC + t * N2
        for c in range(di):
            bw[ddel + c] = bw[ddel + c] * _sigm(act[dpre + c])
            gP[obdt + c] += bw[ddel + c]
        for q in range(R):
            w = act[dbc + q]
            row = owdt + q * di
            for c in range(di):
                gP[row + c] += w * bw[ddel + c]
        for q in range(R):
            bw[b2 + q] = _dot8(P, owdt + q * di, bw, ddel, di)
        for s in range(N2):
            bw[b2 + R + s] = bw[dbct + s]
        for c in range(di):
            w = act[u + c]
            row = owxp + c * Pp
            for o in range(Pp):
                gP[row + o] += w * bw[b2 + o]
        for c in range(di):
            bw[du + c] += _dot8(P, owxp + c * Pp, bw, b2, Pp)
        for c in range(di):
            xv = act[xc + c]
            sg = _sigm(xv)
            bw[du + c] = bw[du + c] * (sg * (_ONE + xv * (_ONE - sg)))
    # phase D: causal conv (contributions to x from before the chunk are dropped)
    for i in range(T * di):
        bw[bX + i] = _Z
    for t in range(T):
        dxc = bU + t * di
        for c in range(di):
            gP[ocb + c] += bw[dxc + c]
        for k in range(Kc):
            xk = xso + (t + k) * di
            gw = ocw + k * di
            for c in range(di):
                gP[gw + c] += bw[dxc + c] * xs[xk + c]
            if t + k + _U1 >= Kc:
                dx = bX + (t + k + _U1 - Kc) * di
                for c in range(di):
                    bw[dx + c] += bw[dxc + c] * P[gw + c]
    # phase E: in-projection and RMSNorm, into the residual gradient
    for t in range(T):
        rec = t * tsz + l * asz
        rs = act[rec + aRS]
        dx = bX + t * di
        dz = bZ + t * di
        for c in range(di):
            bw[b1 + c] = bw[dx + c]
            bw[b1 + di + c] = bw[dz + c]
        for i in range(d):
            w = act[rec + aN + i]
            row = owin + i * di2
            for o in range(di2):
                gP[row + o] += w * bw[b1 + o]
        for i in range(d):
            bw[b2 + i] = _dot8(P, owin + i * di2, bw, b1, di2)
        for i in range(d):
            bw[b3 + i] = act[rec + aR + i] * rs
            gP[og + i] += bw[b2 + i] * bw[b3 + i]
            bw[b2 + i] = bw[b2 + i] * P[og + i]
        q = _dot8(bw, b2, bw, b3, d) / F32(d)
        dr = bR + t * d
        for i in range(d):
            bw[dr + i] = bw[dr + i] + rs * (bw[b2 + i] - bw[b3 + i] * q)


@numba.jit(**_JIT)
def k_train(a, S, dims, inputs, tgt, Kt, conv0, ssm0, P, An, emb, Whf, pr, gP, gWh, gemb,
            act, xs, hs, dAs, Lb, bw):
    """Gradient of stream a's chunk (mean cross entropy) added to gP/gWh/gemb; returns the
    chunk's mean loss in nats."""
    a = U(a)
    S = U(S)
    d = U(dims[X_D])
    di = U(dims[X_DI])
    nd = U(dims[X_N]) * di
    Kc = U(dims[X_KC])
    L = U(dims[X_L])
    T = U(dims[X_T])
    V = U(dims[X_V])
    cap = U(dims[X_CAP])
    KT = U(dims[X_KT])
    asz = U(dims[X_ASZ])
    tsz = U(dims[X_TSZ])
    lsz = U(dims[X_LSZ])
    xr = T + Kc - _U1
    T1 = T + _U1
    # start state
    for l in range(L):
        src = (a * L + l) * Kc * di
        for i in range((Kc - _U1) * di):
            xs[l * xr * di + i] = conv0[src + i]
        src = (a * L + l) * nd
        for i in range(nd):
            hs[l * T1 * nd + i] = ssm0[src + i]
    tmo = U(dims[X_B_T1])
    # forward over the chunk, keeping activations
    for t in range(T):
        e = U(inputs[t * S + a]) * d
        rec0 = t * tsz
        for i in range(d):
            act[rec0 + i] = emb[e + i]
        for l in range(L):
            hb = l * T1 * nd
            _layer_fwd(P, l * lsz, dims, An, l * nd, act, rec0 + l * asz, xs, (l * xr + t) * di,
                       hs, hb + t * nd, hs, hb + (t + _U1) * nd, dAs, (l * T + t) * nd, bw, tmo)
        _final_norm(P, dims, act, rec0 + L * asz)
    # head: logits, softmax, loss, G = (p - onehot) / T in place
    Kmax = _U0
    for t in range(T):
        if U(Kt[t]) > Kmax:
            Kmax = U(Kt[t])
    hof = L * asz + d + _U1
    _head_fwd(Whf, pr, dims, Kmax + _U1, T, act, tsz, hof, Lb)
    scale = _ONE / F32(T)
    loss = 0.0
    for t in range(T):
        K = U(Kt[t])
        lo = _U1 if K >= V else _U0
        row = t * cap
        y = U(tgt[t * S + a])
        ly = Lb[row + y]
        for k in range(lo, K + _U1):
            Lb[row + k] = fexp(Lb[row + k])
        s = _sum16(Lb, row + lo, K + _U1 - lo)
        ls = flog(s)
        loss += np.float64(ls - ly)
        inv = _ONE / s
        for k in range(lo, K + _U1):
            Lb[row + k] = (Lb[row + k] * inv) * scale
        Lb[row + y] = Lb[row + y] - scale
        for k in range(_U0, lo):
            Lb[row + k] = _Z
        for k in range(K + _U1, Kmax + _U1):
            Lb[row + k] = _Z
    # head gradients: gWh[j, k] += sum_t h[t, j] G[t, k]; dHT[j, t] = sum_k Whf[j, k] G[t, k]
    bHT = U(dims[X_B_DHT])
    bGT = U(dims[X_B_GT])
    for i in range(d * T):
        bw[bHT + i] = _Z
    for k0 in range(_U0, Kmax + _U1, KT):
        k1 = min(k0 + KT, Kmax + _U1)
        for t in range(T):
            row = t * cap
            for j in range(d):
                w = act[t * tsz + hof + j]
                gw = j * cap
                for k in range(k0, k1):
                    gWh[gw + k] += w * Lb[row + k]
            gb = d * cap
            for k in range(k0, k1):
                gWh[gb + k] += Lb[row + k]
            for k in range(k0, k1):
                bw[bGT + (k - k0) * T + t] = Lb[row + k]
        for j in range(d):
            dh = bHT + j * T
            wr = j * cap
            for k in range(k0, k1):
                w = Whf[wr + k]
                gt = bGT + (k - k0) * T
                for t in range(T):
                    bw[dh + t] += w * bw[gt + t]
    # final RMSNorm backward -> dR
    ogf = U(dims[X_O_GF])
    bR = U(dims[X_B_DR])
    b2 = U(dims[X_B_T2])
    b3 = U(dims[X_B_T3])
    for t in range(T):
        fo = t * tsz + L * asz
        rs = act[fo + d]
        for i in range(d):
            bw[b3 + i] = act[fo + i] * rs
            dhi = bw[bHT + i * T + t]
            gP[ogf + i] += dhi * bw[b3 + i]
            bw[b2 + i] = dhi * P[ogf + i]
        q = _dot8(bw, b2, bw, b3, d) / F32(d)
        dr = bR + t * d
        for i in range(d):
            bw[dr + i] = rs * (bw[b2 + i] - bw[b3 + i] * q)
    for li in range(np.int64(L) - 1, -1, -1):
        l = U(li)
        _layer_bwd(P, gP, l, dims, An, l * nd, act, xs, l * xr * di, hs, l * T1 * nd, dAs,
                   l * T * nd, bw)
    for t in range(T):
        e = U(inputs[t * S + a]) * d
        dr = bR + t * d
        for i in range(d):
            gemb[e + i] += bw[dr + i]
    return loss / np.float64(T)


@numba.jit(**_JIT)
def _adam_vec(p, g, m, v, o, n, hp):
    lr = hp[0]
    b1 = hp[1]
    omb1 = hp[2]
    b2 = hp[3]
    omb2 = hp[4]
    eps = hp[5]
    clip = hp[6]
    for k in range(n):
        i = o + k
        gi = g[i]
        gi = clip if gi > clip else gi  # branch-free clip; NaN -> 0
        gi = -clip if gi < -clip else gi
        gi = gi if gi == gi else _Z
        g[i] = _Z
        mi = b1 * m[i] + omb1 * gi
        vi = b2 * v[i] + omb2 * (gi * gi)
        m[i] = mi
        v[i] = vi
        p[i] = p[i] - (lr * mi) / (math.sqrt(vi) + eps)


@numba.jit(**_JIT)
def k_adam(dims, K, rows, nrows, hp, P, gP, mP, vP, Whf, gWh, mWh, vWh, emb, gemb, memb,
           vemb, An):
    """One Adam step on the core, the head columns 0..K and the embedding rows ``rows``;
    gradients are zeroed; An is refreshed."""
    K = U(K)
    d = U(dims[X_D])
    cap = U(dims[X_CAP])
    _adam_vec(P, gP, mP, vP, _U0, U(dims[X_NCORE]), hp)
    for j in range(d + _U1):
        _adam_vec(Whf, gWh, mWh, vWh, j * cap, K + _U1, hp)
    for i in range(U(nrows)):
        _adam_vec(emb, gemb, memb, vemb, U(rows[i]) * d, d, hp)
    k_refresh(dims, P, An)


class NumbaKernels:
    """The numba twin of the C kernels (same arguments as native.CKernels)."""

    name = "numba"

    def step(self, b, A, pos):
        k_step(A, b.S, pos, b.inputs, b.dims, b.P, b.An, b.emb, b.conv, b.ssm, b.hf, b.act1,
               b.dA1, b.tmp1)

    def logprobs(self, b, A, K):
        k_logprobs(A, K, b.dims, b.Whf, b.pr, b.hf, b.Lon, b.Lscr, b.type_of, b.out)

    def train(self, b, a):
        return k_train(a, b.S, b.dims, b.inputs, b.tgt, b.Kt, b.conv0, b.ssm0, b.P, b.An,
                       b.emb, b.Whf, b.pr, b.gP, b.gWh, b.gemb, b.act, b.xs, b.hs, b.dAs, b.Lb,
                       b.bw)

    def adam(self, b, K, rows, hp):
        k_adam(b.dims, K, rows, rows.shape[0], hp, b.P, b.gP, b.mP, b.vP, b.Whf, b.gWh, b.mWh,
               b.vWh, b.emb, b.gemb, b.memb, b.vemb, b.An)

    def refresh(self, b):
        k_refresh(b.dims, b.P, b.An)

    def vlog(self, x):
        x = np.ascontiguousarray(x, dtype=F32)
        out = np.empty_like(x)
        k_vlog(x, out)
        return out

    def vexp(self, x):
        x = np.ascontiguousarray(x, dtype=F32)
        out = np.empty_like(x)
        k_vexp(x, out)
        return out


# ---------------------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------------------


class _Buffers:
    """Every array the kernels touch (C gets their addresses via ``ptr``)."""

    def __init__(self):
        self._ptr: dict[str, int] = {}

    def set(self, name: str, arr: np.ndarray) -> None:
        assert arr.flags.c_contiguous
        setattr(self, name, arr)
        self._ptr[name] = arr.__array_interface__["data"][0]

    def ptr(self, name: str) -> int:
        return self._ptr[name]


def _resolve_kernels(impl):
    """None (the default: native.ssm_impl()), "c", "numba", or a kernels object."""
    if impl is None:
        impl = native.ssm_impl()
    if impl == "numba":
        return NumbaKernels()
    if impl == "c":
        return native.CKernels()
    if isinstance(impl, (NumbaKernels, native.CKernels)):
        return impl
    raise ValueError(f"unknown SSM implementation {impl!r} (use 'c' or 'numba')")


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
        if type(vocab_size) is not int or not 2 <= vocab_size <= (1 << 24):
            raise FormatError(f"SSM vocabulary size {vocab_size!r:.40} out of range")
        self.vocab_size = vocab_size
        self.kernels = _resolve_kernels(impl)
        self.impl = self.kernels.name
        self.n_streams = 0
        self._b: _Buffers | None = None

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
        lay = _Layout(sp, V, cap)
        v = lay.v
        self._lay = lay
        b = _Buffers()
        self._b = b
        b.S = S
        d, di, N, Kc, L, T = v["d"], v["di"], v["N"], v["Kc"], v["L"], v["T"]
        b.set("dims", lay.dims())
        b.set("P", self._init_core(lay))
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

    def _init_core(self, lay: _Layout) -> np.ndarray:
        v = lay.v
        sp = self._spec
        d, di, N, R, P, Kc, L = v["d"], v["di"], v["N"], v["R"], v["P"], v["Kc"], v["L"]
        key = _key(sp["seed"], _BLK_CORE)
        u = uniform(key, 0, v["ncore"])
        p = np.zeros(v["ncore"], F32)

        def fill(off, n, scale):
            p[off:off + n] = u[off:off + n] * F32(scale)

        for l in range(L):
            lb = l * v["lsz"]
            p[lb + v["o_g"]: lb + v["o_g"] + d] = F32(1.0)
            fill(lb + v["o_win"], d * 2 * di, 1.0 / math.sqrt(d))
            fill(lb + v["o_cw"], Kc * di, 1.0 / math.sqrt(Kc))
            fill(lb + v["o_wxp"], di * P, 1.0 / math.sqrt(di))
            fill(lb + v["o_wdt"], R * di, 1.0 / math.sqrt(R))
            # Δ = softplus(b_dt) log-uniform in about [1e-3, 1e-1]: b_dt ~ log Δ there
            o = lb + v["o_bdt"]
            mid = F32(-4.605170249938965)  # log(1e-2)
            half = F32(2.302585124969482)
            p[o:o + di] = mid + u[o:o + di] * half
            o = lb + v["o_alog"]
            a = np.repeat(np.arange(1, N + 1, dtype=F32), di)  # A[s, c] = -(s + 1)
            p[o:o + N * di] = self.kernels.vlog(a)
            p[lb + v["o_D"]: lb + v["o_D"] + di] = F32(1.0)
            fill(lb + v["o_wout"], di * d, 1.0 / math.sqrt(di))
        p[v["o_gf"]: v["o_gf"] + d] = F32(1.0)
        return p

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
            b.emb[:d] = uniform(_key(self._spec["seed"], _BLK_EMB), 0, d)
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
        b.emb[K * d:(K + 1) * d] = uniform(_key(self._spec["seed"], _BLK_EMB), K * d, d)
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

