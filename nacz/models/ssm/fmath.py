"""Scalar functions of the SSM kernels (the "scalar functions" section of csrc/ssm.c).

No libm: exp and log are the polynomials ``fexp``/``flog``, written with IEEE basic
operations only (+ - * /, sqrt, bit casts), identically here and in csrc/ssm.c. glibc's
expf/logf are ifunc-dispatched by CPU features, so they may differ between machines; ours
cannot, and they vectorise. The long sums (``_dot8``, ``_sum16``) use explicit lanes
combined in a fixed tree, as in C. Keep every operation in the same order as the twin.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core.extending import intrinsic

from ..kernel_cache import refresh_kernel_cache

F32 = np.float32


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


Z = F32(0.0)
ONE = F32(1.0)
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
NORM_EPS = F32(1e-5)
LOGIT_CLIP = F32(50.0)

JIT = dict(nopython=True, fastmath=False, cache=True, nogil=True, error_model="numpy")
JIT_INLINE = dict(JIT, inline="always")  # small scalar helpers: inlined by numba itself


@numba.jit(**JIT_INLINE)
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
    p = p * z + r + ONE
    n = np.int32(fn)
    return p * _i2f((n + np.int32(127)) << np.int32(23))


@numba.jit(**JIT_INLINE)
def flog(x):
    """log(x) for float32 x > 0 (x below 1e-30 or NaN is taken as 1e-30)."""
    x = x if x > _LOG_MIN else _LOG_MIN
    b = _f2i(x)
    e = np.int32((b >> np.int32(23)) - np.int32(127))
    m = _i2f((b & np.int32(0x7FFFFF)) | np.int32(0x3F800000))
    big = m > _SQRT2
    m = m * _HALF if big else m
    e = np.int32(e + np.int32(1)) if big else e
    f = m - ONE
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


@numba.jit(**JIT_INLINE)
def sigm(x):
    return ONE / (ONE + fexp(-x))


@numba.jit(**JIT_INLINE)
def softplus(x):
    """log(1 + exp(x)); x for x > 15, exp(x) for x < -15 (branch-free: vectorises)."""
    e = fexp(x)
    r = flog(ONE + e)
    r = e if x < _SP_LO else r
    return x if x > _SP_HI else r


# All kernel indices are uint64 (``U``): numba then emits no negative-index wraparound
# code and LLVM vectorises the inner loops; addressing is "array + offset" like the C twin.
U = np.uint64
U0 = U(0)
U1 = U(1)
U2 = U(2)
U3 = U(3)
U4 = U(4)
U5 = U(5)
U6 = U(6)
U7 = U(7)
U8 = U(8)
U9 = U(9)
U10 = U(10)
U11 = U(11)
U12 = U(12)
U13 = U(13)
U14 = U(14)
U15 = U(15)
U16 = U(16)


@numba.jit(**JIT)
def dot8(a, ao, b, bo, n):
    """sum_k a[ao+k]*b[bo+k], k < n: 8 lanes (lane l takes k = l mod 8) combined as
    ((0+1)+(2+3))+((4+5)+(6+7)), then the tail in order."""
    s0 = Z
    s1 = Z
    s2 = Z
    s3 = Z
    s4 = Z
    s5 = Z
    s6 = Z
    s7 = Z
    n8 = n - (n & U7)
    for k in range(U0, n8, U8):
        i = ao + k
        j = bo + k
        s0 += a[i] * b[j]
        s1 += a[i + U1] * b[j + U1]
        s2 += a[i + U2] * b[j + U2]
        s3 += a[i + U3] * b[j + U3]
        s4 += a[i + U4] * b[j + U4]
        s5 += a[i + U5] * b[j + U5]
        s6 += a[i + U6] * b[j + U6]
        s7 += a[i + U7] * b[j + U7]
    s = ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))
    for k in range(n8, n):
        s += a[ao + k] * b[bo + k]
    return s


@numba.jit(**JIT)
def sum16(x, xo, n):
    """sum_k x[xo+k], k < n: 16 lanes combined pairwise as a tree, then the tail in order."""
    s0 = Z
    s1 = Z
    s2 = Z
    s3 = Z
    s4 = Z
    s5 = Z
    s6 = Z
    s7 = Z
    s8 = Z
    s9 = Z
    s10 = Z
    s11 = Z
    s12 = Z
    s13 = Z
    s14 = Z
    s15 = Z
    n16 = n - (n & U15)
    for k in range(U0, n16, U16):
        i = xo + k
        s0 += x[i]
        s1 += x[i + U1]
        s2 += x[i + U2]
        s3 += x[i + U3]
        s4 += x[i + U4]
        s5 += x[i + U5]
        s6 += x[i + U6]
        s7 += x[i + U7]
        s8 += x[i + U8]
        s9 += x[i + U9]
        s10 += x[i + U10]
        s11 += x[i + U11]
        s12 += x[i + U12]
        s13 += x[i + U13]
        s14 += x[i + U14]
        s15 += x[i + U15]
    s = ((((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7)))
         + (((s8 + s9) + (s10 + s11)) + ((s12 + s13) + (s14 + s15))))
    for k in range(n16, n):
        s += x[xo + k]
    return s




@numba.jit(**JIT)
def axpy(y, yo, a, x, xo, n):
    """y[yo+o] += a * x[xo+o] for o < n (vectorised)."""
    for o in range(n):
        y[yo + o] += a * x[xo + o]


@numba.jit(**JIT)
def vecmat_acc(out, oo, x, xo, W, wo, n_in, n_out):
    """out[oo+o] += sum_i x[xo+i] * W[wo + i*n_out + o] (o < n_out), accumulated in i
    order (vectorised across o)."""
    for i in range(n_in):
        axpy(out, oo, x[xo + i], W, wo + i * n_out, n_out)


@numba.jit(**JIT)
def outer_acc(G, go, x, xo, g, gof, n_in, n_out):
    """G[go + i*n_out + o] += x[xo+i] * g[gof+o]: the gradient of vecmat_acc's W."""
    for i in range(n_in):
        axpy(G, go + i * n_out, x[xo + i], g, gof, n_out)


@numba.jit(**JIT)
def rms_norm(r, ro, g, go, rs_at, out, oo, d):
    """out[oo:oo+d] = RMSNorm(r[ro:ro+d]) * g[go:go+d]; the reciprocal rms goes to
    out[rs_at] (r and out may be the same array)."""
    ss = dot8(r, ro, r, ro, d)
    rs = ONE / math.sqrt(ss / F32(d) + NORM_EPS)
    out[rs_at] = rs
    for i in range(d):
        out[oo + i] = (r[ro + i] * rs) * g[go + i]


refresh_kernel_cache(globals())
