"""The SSM's numba forward kernels (the "forward" section of csrc/ssm.c, in its order).

Indices are uint64 (``U``): numba then emits no negative-index wraparound code and LLVM
vectorises the inner loops; addressing is "array + offset" like the C twin. Matrix
products accumulate each output in input order (vectorised across outputs). Nothing is
threaded, nothing uses fastmath.
"""

from __future__ import annotations

from collections import namedtuple

import numba
import numpy as np

from ..kernel_cache import refresh_kernel_cache
from ..ssm_layout import (X_ASZ, X_A_DBC, X_A_DEL, X_A_DPRE, X_A_GY, X_A_N, X_A_R, X_A_RS,
                          X_A_U, X_A_XC, X_A_Y, X_A_Z, X_CAP, X_D, X_DI, X_KC, X_KT, X_L,
                          X_LSZ, X_N, X_O_ALOG, X_O_BDT, X_O_CB, X_O_CW, X_O_D, X_O_G,
                          X_O_GF, X_O_WDT, X_O_WIN, X_O_WOUT, X_O_WXP, X_P, X_R, X_V)
from .fmath import (F32, JIT, LOGIT_CLIP, U, U0, U1, U2, Z, fexp, flog, rms_norm, sigm,
                    softplus, sum16, vecmat_acc)


# Offsets of one layer's parameters in P (from the layer's base) and of the parts of one
# activation record (from the record's base), for both directions; unpacked in this order.
LayerSizes = namedtuple("LayerSizes", "d di N R P Kc")
# the sizes the per-step and per-chunk kernels use: model width, inner width, scan state
# (N x di), conv width, layers, activation record and layer parameter block sizes
ModelSizes = namedtuple("ModelSizes", "d di nd Kc L asz lsz")
LayerParams = namedtuple("LayerParams", "g win cw cb wxp wdt bdt alog D wout")
ActRecord = namedtuple("ActRecord", "r rs n z xc u dbc dpre dl y gy")


@numba.jit(**JIT)
def layer_sizes(dims):
    return LayerSizes(U(dims[X_D]), U(dims[X_DI]), U(dims[X_N]), U(dims[X_R]), U(dims[X_P]),
                      U(dims[X_KC]))


@numba.jit(**JIT)
def model_sizes(dims):
    di = U(dims[X_DI])
    return ModelSizes(U(dims[X_D]), di, U(dims[X_N]) * di, U(dims[X_KC]), U(dims[X_L]),
                      U(dims[X_ASZ]), U(dims[X_LSZ]))


@numba.jit(**JIT)
def layer_params(dims, lb):
    return LayerParams(lb + U(dims[X_O_G]), lb + U(dims[X_O_WIN]), lb + U(dims[X_O_CW]),
                       lb + U(dims[X_O_CB]), lb + U(dims[X_O_WXP]), lb + U(dims[X_O_WDT]),
                       lb + U(dims[X_O_BDT]), lb + U(dims[X_O_ALOG]), lb + U(dims[X_O_D]),
                       lb + U(dims[X_O_WOUT]))


@numba.jit(**JIT)
def act_record(dims, ro):
    return ActRecord(ro + U(dims[X_A_R]), ro + U(dims[X_A_RS]), ro + U(dims[X_A_N]),
                     ro + U(dims[X_A_Z]), ro + U(dims[X_A_XC]), ro + U(dims[X_A_U]),
                     ro + U(dims[X_A_DBC]), ro + U(dims[X_A_DPRE]), ro + U(dims[X_A_DEL]),
                     ro + U(dims[X_A_Y]), ro + U(dims[X_A_GY]))


@numba.jit(**JIT)
def layer_fwd(P, lb, dims, An, ano, act, ro, xw, xo, hp, hpo, ho, hoo, dA, dao, tmp, tmo):
    """One token through one Mamba block.
    act[ro:]      the layer's activation record, r_in already in place; the block output
                  r_in + out goes to act[ro + asz:] (the next record's r_in / final block)
    xw[xo:]       conv window, Kc rows of di: Kc-1 previous x; this x goes to the last row
    hp[hpo:] -> ho[hoo:]  scan state N x di (may be the same memory)
    dA[dao:]      receives exp(Δ·A) (N x di); tmp[tmo:] scratch of 2 di."""
    d, di, N, R, Pp, Kc = layer_sizes(dims)
    di2 = U2 * di
    og, owin, ocw, ocb, owxp, owdt, obdt, _, oD, owout = layer_params(dims, lb)
    r, rs_at, nrm, z, xc, u, dbc, dpre, dl, y, gy = act_record(dims, ro)
    nxt = ro + U(dims[X_ASZ])
    rms_norm(act, r, P, og, rs_at, act, nrm, d)
    # in-projection: xz[o] = sum_i nrm[i] * Win[i, o]
    for o in range(di2):
        tmp[tmo + o] = Z
    vecmat_acc(tmp, tmo, act, nrm, P, owin, d, di2)
    xl = xo + (Kc - U1) * di
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
        act[u + c] = v * sigm(v)
    # x-projection to (dt_raw, B, C)
    for o in range(Pp):
        act[dbc + o] = Z
    vecmat_acc(act, dbc, act, u, P, owxp, di, Pp)
    # Δ = softplus(b_dt + dt_raw @ Wdt)
    for c in range(di):
        act[dpre + c] = P[obdt + c]
    vecmat_acc(act, dpre, act, dbc, P, owdt, R, di)
    for c in range(di):
        act[dl + c] = softplus(act[dpre + c])
    # selective scan (two loops per state row: few memory streams, so LLVM vectorises)
    for c in range(di):
        act[y + c] = Z
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
        act[gy + c] = act[y + c] * (zc * sigm(zc))
    for j in range(d):
        act[nxt + j] = Z
    vecmat_acc(act, nxt, act, gy, P, owout, di, d)
    for j in range(d):
        act[nxt + j] = act[r + j] + act[nxt + j]


@numba.jit(**JIT)
def final_norm(P, dims, act, fo):
    """act[fo:] = [r (d), rs (1), h (d)]: h = RMSNorm(r) * g_f."""
    d = U(dims[X_D])
    ogf = U(dims[X_O_GF])
    rms_norm(act, fo, P, ogf, fo + d, act, fo + d + U1, d)


@numba.jit(**JIT)
def k_refresh(dims, P, An):
    """An = -exp(A_log) for every layer."""
    L = U(dims[X_L])
    nd = U(dims[X_N]) * U(dims[X_DI])
    for l in range(L):
        o = l * U(dims[X_LSZ]) + U(dims[X_O_ALOG])
        for i in range(nd):
            An[l * nd + i] = -fexp(P[o + i])


@numba.jit(**JIT)
def k_vlog(x, out):
    for i in range(x.shape[0]):
        out[i] = flog(x[i])


@numba.jit(**JIT)
def k_vexp(x, out):
    for i in range(x.shape[0]):
        out[i] = fexp(x[i])


@numba.jit(**JIT)
def k_step(A, S, pos, inputs, dims, P, An, emb, conv, ssm, hf, act, dAw, tmp):
    """Feed the slots inputs[pos, a] to streams a < A; their new features go to hf[a]."""
    A = U(A)
    S = U(S)
    pos = U(pos)
    d, di, nd, Kc, L, asz, lsz = model_sizes(dims)
    for a in range(A):
        e = U(inputs[pos * S + a]) * d
        for i in range(d):
            act[i] = emb[e + i]
        for l in range(L):
            xo = (a * L + l) * Kc * di
            ho = (a * L + l) * nd
            layer_fwd(P, l * lsz, dims, An, l * nd, act, l * asz, conv, xo, ssm, ho, ssm,
                       ho, dAw, U0, tmp, U0)
            for i in range((Kc - U1) * di):
                conv[xo + i] = conv[xo + di + i]
        fo = L * asz
        final_norm(P, dims, act, fo)
        for i in range(d):
            hf[a * d + i] = act[fo + d + U1 + i]


@numba.jit(**JIT)
def head_fwd(Whf, pr, dims, c1, nrows, H, hs, hof, Lb):
    """Lb[r, k] = clamp((Whf[d, k] + pr[k]) + sum_j H[r*hs + hof + j] * Whf[j, k]) for
    k < c1, accumulated in j order (tiled over k: tiling does not change any result)."""
    d = U(dims[X_D])
    cap = U(dims[X_CAP])
    KT = U(dims[X_KT])
    for k0 in range(U0, c1, KT):
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
                v = v if v > -LOGIT_CLIP else -LOGIT_CLIP  # NaN -> -clip
                v = v if v < LOGIT_CLIP else LOGIT_CLIP
                Lb[row + k] = v


@numba.jit(**JIT)
def k_logprobs(A, K, dims, Whf, pr, hf, Lb, scr, type_of, out):
    """Dense log-probabilities (A, V) float64 of the next token of streams a < A.
    Lb: logits (A x cap), scr: scratch (cap)."""
    A = U(A)
    K = U(K)
    d = U(dims[X_D])
    cap = U(dims[X_CAP])
    V = U(dims[X_V])
    lo = U1 if K >= V else U0
    head_fwd(Whf, pr, dims, K + U1, A, hf, d, U0, Lb)
    for a in range(A):
        row = a * cap
        for k in range(lo, K + U1):
            scr[k] = fexp(Lb[row + k])
        s = sum16(scr, lo, K + U1 - lo)
        ls = flog(s)
        if K < V:
            fill = np.float64((Lb[row] - ls) - flog(F32(V - K)))
            for v in range(V):
                out[a, v] = fill
        for k in range(U1, K + U1):
            out[a, U(type_of[k])] = np.float64(Lb[row + k] - ls)



refresh_kernel_cache(globals())
