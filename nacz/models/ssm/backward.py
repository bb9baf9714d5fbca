"""The SSM's numba training kernels: back-propagation through a chunk and the Adam step
(the "backward" and "Adam" sections of csrc/ssm.c, in its order)."""

from __future__ import annotations

import math

from collections import namedtuple

import numba
import numpy as np

from ..kernel_cache import refresh_kernel_cache
from ..ssm_layout import (X_ASZ, X_B_DAN, X_B_DBC, X_B_DDEL, X_B_DH, X_B_DHT, X_B_DR,
                          X_B_DU, X_B_DX, X_B_DY, X_B_DZ, X_B_GT, X_B_T1, X_B_T2, X_B_T3,
                          X_CAP, X_D, X_KT, X_LSZ, X_NCORE, X_O_GF, X_T, X_TSZ, X_V)
from .fmath import F32, JIT, ONE, U, U0, U1, U2, Z, dot8, fexp, flog, outer_acc, sigm, sum16
from .forward import (act_record, final_norm, head_fwd, k_refresh, layer_fwd, layer_params,
                      layer_sizes, model_sizes)


# Offsets in the backward workspace bw: per-step gradients of the chunk (dR .. dBC), the
# scan's state gradients (dh, dAn), the head's (dHT, GT) and three scratch rows; unpacked
# in this order.
GradWork = namedtuple("GradWork", "dR dY dZ dU dDel dX dBC dh dAn dHT GT t1 t2 t3")


@numba.jit(**JIT)
def grad_work(dims):
    return GradWork(U(dims[X_B_DR]), U(dims[X_B_DY]), U(dims[X_B_DZ]), U(dims[X_B_DU]),
                    U(dims[X_B_DDEL]), U(dims[X_B_DX]), U(dims[X_B_DBC]), U(dims[X_B_DH]),
                    U(dims[X_B_DAN]), U(dims[X_B_DHT]), U(dims[X_B_GT]), U(dims[X_B_T1]),
                    U(dims[X_B_T2]), U(dims[X_B_T3]))


@numba.jit(**JIT)
def layer_bwd(P, gP, l, dims, An, ano, act, xs, xso, hs, hso, dAs, dso, bw):
    """Back-propagate layer l over the chunk: bw[dR] holds dLoss/d(layer output) on entry
    and dLoss/d(layer input) on exit; parameter gradients are added to gP.
    xs[xso:] conv rows (Kc-1 start rows, then x_t), hs[hso:] states h_-1..h_{T-1},
    dAs[dso:] exp(Δ·A) per step."""
    d, di, N, R, Pp, Kc = layer_sizes(dims)
    T = U(dims[X_T])
    asz = U(dims[X_ASZ])
    tsz = U(dims[X_TSZ])
    nd = N * di
    di2 = U2 * di
    N2 = U2 * N
    lb = l * U(dims[X_LSZ])
    og, owin, ocw, ocb, owxp, owdt, obdt, oalog, oD, owout = layer_params(dims, lb)
    aR, aRS, aN, aZ, aXC, aU, aDBC, aDPRE, aDEL, aY, aGY = act_record(dims, U0)
    bR, bY, bZ, bU, bDel, bX, bBC, bh, bAn, _, _, b1, b2, b3 = grad_work(dims)
    # phase A: out-projection, gate, D skip
    for t in range(T):
        rec = t * tsz + l * asz
        dO = bR + t * d
        dy = bY + t * di
        dz = bZ + t * di
        du = bU + t * di
        outer_acc(gP, owout, act, rec + aGY, bw, dO, di, d)
        for c in range(di):
            bw[dy + c] = dot8(P, owout + c * d, bw, dO, d)
        for c in range(di):
            zc = act[rec + aZ + c]
            sz = sigm(zc)
            dg = bw[dy + c]
            bw[dy + c] = dg * (zc * sz)
            bw[dz + c] = (dg * act[rec + aY + c]) * (sz * (ONE + zc * (ONE - sz)))
        for c in range(di):
            gP[oD + c] += bw[dy + c] * act[rec + aU + c]
            bw[du + c] = bw[dy + c] * P[oD + c]
    # phase B: selective scan backwards in time (nothing flows into the chunk's start state)
    for i in range(nd):
        bw[bh + i] = Z
        bw[bAn + i] = Z
    for ti in range(np.int64(T) - 1, -1, -1):
        t = U(ti)
        rec = t * tsz + l * asz
        u = rec + aU
        dl = rec + aDEL
        dbc = rec + aDBC
        hcur = hso + (t + U1) * nd
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
            bw[dbct + N + s] = dot8(hs, hcur + s * di, bw, dy, di)
        for c in range(di):
            bw[b1 + c] = act[dl + c] * act[u + c]
        for s in range(N):
            bw[dbct + s] = dot8(bw, bh + s * di, bw, b1, di)
        for c in range(di):
            bw[ddel + c] = Z
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
            bw[ddel + c] = bw[ddel + c] * sigm(act[dpre + c])
            gP[obdt + c] += bw[ddel + c]
        outer_acc(gP, owdt, act, dbc, bw, ddel, R, di)
        for q in range(R):
            bw[b2 + q] = dot8(P, owdt + q * di, bw, ddel, di)
        for s in range(N2):
            bw[b2 + R + s] = bw[dbct + s]
        outer_acc(gP, owxp, act, u, bw, b2, di, Pp)
        for c in range(di):
            bw[du + c] += dot8(P, owxp + c * Pp, bw, b2, Pp)
        for c in range(di):
            xv = act[xc + c]
            sg = sigm(xv)
            bw[du + c] = bw[du + c] * (sg * (ONE + xv * (ONE - sg)))
    # phase D: causal conv (contributions to x from before the chunk are dropped)
    for i in range(T * di):
        bw[bX + i] = Z
    for t in range(T):
        dxc = bU + t * di
        for c in range(di):
            gP[ocb + c] += bw[dxc + c]
        for k in range(Kc):
            xk = xso + (t + k) * di
            gw = ocw + k * di
            for c in range(di):
                gP[gw + c] += bw[dxc + c] * xs[xk + c]
            if t + k + U1 >= Kc:
                dx = bX + (t + k + U1 - Kc) * di
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
        outer_acc(gP, owin, act, rec + aN, bw, b1, d, di2)
        for i in range(d):
            bw[b2 + i] = dot8(P, owin + i * di2, bw, b1, di2)
        for i in range(d):
            bw[b3 + i] = act[rec + aR + i] * rs
            gP[og + i] += bw[b2 + i] * bw[b3 + i]
            bw[b2 + i] = bw[b2 + i] * P[og + i]
        q = dot8(bw, b2, bw, b3, d) / F32(d)
        dr = bR + t * d
        for i in range(d):
            bw[dr + i] = bw[dr + i] + rs * (bw[b2 + i] - bw[b3 + i] * q)


@numba.jit(**JIT)
def k_train(a, S, dims, inputs, tgt, Kt, conv0, ssm0, P, An, emb, Whf, pr, gP, gWh, gemb,
            act, xs, hs, dAs, Lb, bw):
    """Gradient of stream a's chunk (mean cross entropy) added to gP/gWh/gemb; returns the
    chunk's mean loss in nats."""
    a = U(a)
    S = U(S)
    d, di, nd, Kc, L, asz, lsz = model_sizes(dims)
    T = U(dims[X_T])
    V = U(dims[X_V])
    cap = U(dims[X_CAP])
    KT = U(dims[X_KT])
    tsz = U(dims[X_TSZ])
    xr = T + Kc - U1
    T1 = T + U1
    # start state
    for l in range(L):
        src = (a * L + l) * Kc * di
        for i in range((Kc - U1) * di):
            xs[l * xr * di + i] = conv0[src + i]
        src = (a * L + l) * nd
        for i in range(nd):
            hs[l * T1 * nd + i] = ssm0[src + i]
    bR, _, _, _, _, _, _, _, _, bHT, bGT, tmo, b2, b3 = grad_work(dims)
    # forward over the chunk, keeping activations
    for t in range(T):
        e = U(inputs[t * S + a]) * d
        rec0 = t * tsz
        for i in range(d):
            act[rec0 + i] = emb[e + i]
        for l in range(L):
            hb = l * T1 * nd
            layer_fwd(P, l * lsz, dims, An, l * nd, act, rec0 + l * asz, xs, (l * xr + t) * di,
                       hs, hb + t * nd, hs, hb + (t + U1) * nd, dAs, (l * T + t) * nd, bw, tmo)
        final_norm(P, dims, act, rec0 + L * asz)
    # head: logits, softmax, loss, G = (p - onehot) / T in place
    Kmax = U0
    for t in range(T):
        if U(Kt[t]) > Kmax:
            Kmax = U(Kt[t])
    hof = L * asz + d + U1
    head_fwd(Whf, pr, dims, Kmax + U1, T, act, tsz, hof, Lb)
    scale = ONE / F32(T)
    loss = 0.0
    for t in range(T):
        K = U(Kt[t])
        lo = U1 if K >= V else U0
        row = t * cap
        y = U(tgt[t * S + a])
        ly = Lb[row + y]
        for k in range(lo, K + U1):
            Lb[row + k] = fexp(Lb[row + k])
        s = sum16(Lb, row + lo, K + U1 - lo)
        ls = flog(s)
        loss += np.float64(ls - ly)
        inv = ONE / s
        for k in range(lo, K + U1):
            Lb[row + k] = (Lb[row + k] * inv) * scale
        Lb[row + y] = Lb[row + y] - scale
        for k in range(U0, lo):
            Lb[row + k] = Z
        for k in range(K + U1, Kmax + U1):
            Lb[row + k] = Z
    # head gradients: gWh[j, k] += sum_t h[t, j] G[t, k]; dHT[j, t] = sum_k Whf[j, k] G[t, k]
    for i in range(d * T):
        bw[bHT + i] = Z
    for k0 in range(U0, Kmax + U1, KT):
        k1 = min(k0 + KT, Kmax + U1)
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
    for t in range(T):
        fo = t * tsz + L * asz
        rs = act[fo + d]
        for i in range(d):
            bw[b3 + i] = act[fo + i] * rs
            dhi = bw[bHT + i * T + t]
            gP[ogf + i] += dhi * bw[b3 + i]
            bw[b2 + i] = dhi * P[ogf + i]
        q = dot8(bw, b2, bw, b3, d) / F32(d)
        dr = bR + t * d
        for i in range(d):
            bw[dr + i] = rs * (bw[b2 + i] - bw[b3 + i] * q)
    for li in range(np.int64(L) - 1, -1, -1):
        l = U(li)
        layer_bwd(P, gP, l, dims, An, l * nd, act, xs, l * xr * di, hs, l * T1 * nd, dAs,
                   l * T * nd, bw)
    for t in range(T):
        e = U(inputs[t * S + a]) * d
        dr = bR + t * d
        for i in range(d):
            gemb[e + i] += bw[dr + i]
    return loss / np.float64(T)


@numba.jit(**JIT)
def adam_vec(p, g, m, v, o, n, hp):
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
        gi = gi if gi == gi else Z
        g[i] = Z
        mi = b1 * m[i] + omb1 * gi
        vi = b2 * v[i] + omb2 * (gi * gi)
        m[i] = mi
        v[i] = vi
        p[i] = p[i] - (lr * mi) / (math.sqrt(vi) + eps)


@numba.jit(**JIT)
def k_adam(dims, K, rows, nrows, hp, P, gP, mP, vP, Whf, gWh, mWh, vWh, emb, gemb, memb,
           vemb, An):
    """One Adam step on the core, the head columns 0..K and the embedding rows ``rows``;
    gradients are zeroed; An is refreshed."""
    K = U(K)
    d = U(dims[X_D])
    cap = U(dims[X_CAP])
    adam_vec(P, gP, mP, vP, U0, U(dims[X_NCORE]), hp)
    for j in range(d + U1):
        adam_vec(Whf, gWh, mWh, vWh, j * cap, K + U1, hp)
    for i in range(U(nrows)):
        adam_vec(emb, gemb, memb, vemb, U(rows[i]) * d, d, hp)
    k_refresh(dims, P, An)



refresh_kernel_cache(globals())
