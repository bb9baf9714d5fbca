"""The two fused kernels of the mixed ensemble, and the named state records they take.

Each part's arrays and constants travel as one named record (a namedtuple, built once
per ``reset`` by MixedEnsemble with keyword arguments), so no call lists 60 positional
arguments where two swapped ones of the same dtype would change probabilities
identically on both sides, unnoticed by any round trip. Each kernel unpacks the records
by field name into the locals its body uses; absent parts (flag ``on`` False) get small
stand-in arrays of the same types, never read.

All per-token work runs here (one call per step and direction, all active rows in order
0..A-1): no fastmath, sequential reductions, libm exp/log, integer hashing.
"""

from __future__ import annotations

from collections import namedtuple

import numba
import numpy as np

from ..kernels import bucket
from .bias import _row_coefs, bias_update, unigram_update
from .kernel_cache import refresh_kernel_cache
from .lowrank import corrected_bias, features, learn_row
from .match import apm_update, length_bucket, match_update, predicted, split_prob
from .mixer import (bias_exp, clamp, copy_pass, dense_pass, normalize, normalize_split,
                    row_max, sparse_pass)
from .ngram import context_hashes, gather, table_insert
from .sse import context as sse_context
from .sse import row_top, sse_prob

# the shared n-gram count tables (ngram.py)
NgramState = namedtuple("NgramState", "on tab bases masks width orders logtab")
# the match model: shared history, its hash table, per-stream pointers, the APM maps
MatchState = namedtuple("MatchState", "on hist_tok hist_prv hist_nxt n_hist table last_pos "
                        "ptr mlen hits tries edges min_len verify apm_t apm_n apm_points "
                        "apm_range limit")
# the bias head and the unigram counts (bias.py); its max bmax changes every step and
# travels on its own
BiasState = namedtuple("BiasState", "on b u0 u0max_arr counts lr lr_free alpha0")
# the mixer's weights and their learning rates (mixer.py)
MixerState = namedtuple("MixerState", "ent_edges n_mb n_llm_ctx w_llm w_dense u v lr lr_llm "
                        "w_min w_max")
# the secondary estimation of the LLM's favourite token (sse.py)
SseState = namedtuple("SseState", "on t n n_ent mask points range limit weight")
# the low-rank correction of the LLM's logits from its hidden state (lowrank.py)
LowRankState = namedtuple("LowRankState", "on a b slot order n_used sel u z gz lr lr_hidden "
                          "min_q")
# per-stream work of one step: context hashes and histories, the sparse feature lists,
# the contexts that chose the weights, the split, scratch, and the probabilities
# (mtok: the match model's prediction; stok: the token q is split on, the match's or the
# SSE candidate, -1 for none)
RowState = namedtuple("RowState", "hashes ring rcount sp_tok sp_ord sp_val sp_n conf add "
                      "mark touch acc ebuf gbuf ctx wctx prev_ent cur_ent mtok stok cell "
                      "cell_w mix_ph mix_q mix_s sums probs")


@numba.njit(cache=True, nogil=True)
def predict_rows(A, logits, has_llm, dense, n_dense, bmax, ng, mm, bh, mx, ss, lw, hidden,
                 rs, lbuf):
    """Probabilities of rows 0..A-1, one after the other:
    1. sparse features: n-gram lists and the match prediction (from the tables as left
       by the previous update);
    2. one dense pass over V: exp of the LLM / dense / bias part, with weights chosen by
       the stream's *previous* entropy bucket x match bucket; gives this step's entropy;
    3. the sparse boosts, with weights chosen by this entropy bucket x match bucket,
       recomputed exactly for the few touched tokens; 4. normalisation.
    5. a row with a match splits q: the predicted token gets the probability its APM
       maps q's own to (match.py); with SSE on, a row with the LLM and no match splits
       q the same way on the LLM's argmax token (sse.py).
    With the low-rank part on, a row with the LLM adds its correction (lowrank.py, from
    ``hidden[r]``) to the bias head's b in step 2 and 3 (``lbuf``: V entries of scratch).
    Rows without the LLM and dense inputs share their dense part, computed once."""
    shared_dense_part(A, has_llm, n_dense, bmax, bh, rs.ebuf)
    for r in range(A):
        predict_row(r, logits, has_llm, dense, n_dense, bmax, ng, mm, bh, mx, ss, lw, hidden,
                    rs, rs.add, rs.mark, rs.touch, rs.acc, lbuf)


@numba.njit(cache=True, nogil=True, parallel=True)
def predict_rows_parallel(A, logits, has_llm, dense, n_dense, bmax, ng, mm, bh, mx, ss, lw,
                          hidden, rs, p_add, p_mark, p_touch, p_acc, p_lbuf):
    """predict_rows with the rows spread over K = len(p_add) lanes: lane k codes rows
    k, k + K, ... in order with scratch of its own (p_*[k]). Every row reads only state
    that predict never writes and writes only its own outputs, and each row's arithmetic
    is predict_row's, sequential: the probabilities are bit-identical to predict_rows'
    for every K and thread count (tests/test_models_parallel.py)."""
    shared_dense_part(A, has_llm, n_dense, bmax, bh, rs.ebuf)
    K = p_add.shape[0]
    for k in numba.prange(K):
        for r in range(k, A, K):
            predict_row(r, logits, has_llm, dense, n_dense, bmax, ng, mm, bh, mx, ss, lw,
                        hidden, rs, p_add[k], p_mark[k], p_touch[k], p_acc[k], p_lbuf[k])


@numba.njit(cache=True, nogil=True)
def shared_dense_part(A, has_llm, n_dense, bmax, bh, ebuf):
    """The dense part of rows without the LLM and dense inputs, the same for all of them
    this step (b only changes in update): computed once, only if such a row exists."""
    if n_dense > 0:
        return
    for r in range(A):
        if not has_llm[r]:
            bias_exp(bh.b, bmax, bh.u0, bh.u0max_arr[0], ebuf)
            return


@numba.njit(cache=True, nogil=True)
def predict_row(r, logits, has_llm, dense, n_dense, bmax, ng, mm, bh, mx, ss, lw, hidden, rs,
                add, mark, touch, acc, lbuf):
    """Row r of predict_rows, with the scratch given (``add``, ``mark``: V entries, zero
    on entry and on return; ``touch``, ``acc``; ``lbuf``: V entries, the low-rank part's)."""
    ng_on, tab, bases, masks, width, orders, logtab = (
        ng.on, ng.tab, ng.bases, ng.masks, ng.width, ng.orders, ng.logtab)
    m_on, hist_tok, n_hist, mptr, mlen, medges, apm_t, apm_points, apm_range = (
        mm.on, mm.hist_tok, mm.n_hist, mm.ptr, mm.mlen, mm.edges, mm.apm_t, mm.apm_points,
        mm.apm_range)
    b, u0, u0max = bh.b, bh.u0, bh.u0max_arr[0]
    ent_edges, n_mb, n_llm_ctx, w_llm, w_dense, u, v = (
        mx.ent_edges, mx.n_mb, mx.n_llm_ctx, mx.w_llm, mx.w_dense, mx.u, mx.v)
    hashes, ring, rcount, sp_tok, sp_ord, sp_val, sp_n, conf = (
        rs.hashes, rs.ring, rs.rcount, rs.sp_tok, rs.sp_ord, rs.sp_val, rs.sp_n, rs.conf)
    ebuf, ctx, wctx, prev_ent, cur_ent = rs.ebuf, rs.ctx, rs.wctx, rs.prev_ent, rs.cur_ent
    mtok, stok, cell, cell_w, mix_ph, mix_q, mix_s, sums, out = (
        rs.mtok, rs.stok, rs.cell, rs.cell_w, rs.mix_ph, rs.mix_q, rs.mix_s, rs.sums, rs.probs)
    rmask = ring.shape[1] - 1
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
    use_llm = has_llm[r]
    st = mt  # the token q is split on (-1: none)
    if use_llm:
        row = logits[r]
        if ss.on and mt < 0:
            lmax, st = row_top(row)
            touch[nt] = st
            nt += 1
        else:
            lmax = row_max(row)
        cw = prev_ent[r] * n_mb + mb
        wl = w_llm[cw]
    else:
        row = logits[0]  # not read
        lmax = 0.0
        cw = n_llm_ctx + mb
        wl = 0.0
    stok[r] = st
    for i in range(nt):
        mark[touch[i]] = 1
    wctx[r] = cw
    bb, bbmax = b, bmax  # the bias head's b, or b plus this row's low-rank correction
    if use_llm and lw.on:
        features(lw.b, hidden[r], lw.u[r], lw.z[r])
        bbmax = corrected_bias(lw.a, lw.order, lw.n_used, lw.z[r], b, bmax, lbuf)
        bb = lbuf
    ent = 0.0
    if use_llm or n_dense > 0:
        ent = dense_pass(out[r], row, use_llm, wl, lmax, bb, bbmax, u0, u0max, dense, r,
                         w_dense[cw], n_dense, mark, acc)
    else:
        copy_pass(out[r], ebuf, mark, acc)  # ebuf: shared_dense_part, before the rows
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
    sparse_pass(out[r], row, use_llm, wl, lmax, bb, bbmax, u0, u0max, dense, r, w_dense[cw],
                n_dense, add, touch, nt, mark, acc, st)
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
    elif st >= 0:  # the SSE split, on the LLM's favourite token
        prev = ring[r, (rcount[r] - 1) & rmask] if rcount[r] > 0 else -1
        ph = sse_prob(ss.t, ss.n_ent, cur_ent[r], sse_context(prev, st, ss.mask),
                      ss.points, ss.range, ss.weight, out[r, st], acc[0], cell[r], cell_w[r])
        qm, rest = normalize_split(out[r], acc, row, use_llm, dense, r, n_dense, sums[r],
                                   st, ph)
        mix_ph[r] = ph
        mix_q[r] = qm
        mix_s[r] = rest / (1.0 - ph)
    else:
        cell[r, 0] = -1
        mix_ph[r] = 0.0
        normalize(out[r], acc, n_dense, sums[r])


@numba.njit(cache=True, nogil=True)
def update_rows(A, tokens, logits, has_llm, dense, n_dense, ng, mm, bh, mx, ss, lw, rs):
    """Learn from the true tokens of rows 0..A-1, in order: mixer weights (gradient of
    q's code length), n-gram counts, the APM maps, the stream histories and the match
    model, then the unigram counts and the bias head, then the low-rank correction (rows
    with the LLM). Returns the bias head's new bmax (0.0 without a bias head)."""
    ng_on, tab, bases, masks, width = ng.on, ng.tab, ng.bases, ng.masks, ng.width
    m_on, hist_tok, hist_prv, hist_nxt, n_hist, table, last_pos, mptr, mlen = (
        mm.on, mm.hist_tok, mm.hist_prv, mm.hist_nxt, mm.n_hist, mm.table, mm.last_pos,
        mm.ptr, mm.mlen)
    hits, tries, medges, min_len, verify, apm_t, apm_n, apm_limit = (
        mm.hits, mm.tries, mm.edges, mm.min_len, mm.verify, mm.apm_t, mm.apm_n, mm.limit)
    b_on, b, lr_b, lr_bf, counts, u0, alpha0, u0max = (
        bh.on, bh.b, bh.lr, bh.lr_free, bh.counts, bh.u0, bh.alpha0, bh.u0max_arr)
    lr, lr_l, w_min, w_max, w_llm, w_dense, u, v = (
        mx.lr, mx.lr_llm, mx.w_min, mx.w_max, mx.w_llm, mx.w_dense, mx.u, mx.v)
    probs, hashes, sp_tok, sp_ord, sp_val, sp_n, conf, ring, rcount = (
        rs.probs, rs.hashes, rs.sp_tok, rs.sp_ord, rs.sp_val, rs.sp_n, rs.conf, rs.ring,
        rs.rcount)
    ctx, wctx, prev_ent, cur_ent, mtok, cell, cell_w, mix_ph, mix_q, mix_s, sums, gbuf = (
        rs.ctx, rs.wctx, rs.prev_ent, rs.cur_ent, rs.mtok, rs.cell, rs.cell_w, rs.mix_ph,
        rs.mix_q, rs.mix_s, rs.sums, rs.gbuf)
    stok = rs.stok
    n_orders = gbuf.shape[0]
    rmask = ring.shape[1] - 1
    for r in range(A):
        y = tokens[r]
        c = ctx[r]
        cw = wctx[r]
        p = probs[r]
        g = 0 if has_llm[r] else 1
        mt = mtok[r]
        st = stok[r]  # == mt when the match split q
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
                if split and t == st:
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
            if mt >= 0:
                for k in range(2):
                    apm_update(apm_t, apm_n, cell[r, k], cell_w[r, k], mt == y, apm_limit)
            else:
                for k in range(2):
                    apm_update(ss.t, ss.n, cell[r, k], cell_w[r, k], st == y, ss.limit)
        ring[r, rcount[r] & rmask] = y
        rcount[r] += 1
        if m_on:
            match_update(r, y, mt, ring, rcount, hist_tok, hist_prv, hist_nxt, n_hist, table,
                         last_pos, mptr, mlen, hits, tries, medges, min_len, verify)
    new_bmax = 0.0
    if b_on:
        u0max[0] = unigram_update(counts, u0, alpha0, u0max[0], tokens, A)
        new_bmax = bias_update(b, probs, tokens, A, lr_b, stok, mix_ph, mix_s, mix_q,
                               has_llm, lr_bf)
    if lw.on:
        for r in range(A):
            if has_llm[r]:
                coef, fix = _row_coefs(probs[r], 1.0, stok[r], mix_ph[r] > 0.0, mix_s[r],
                                       mix_q[r])
                learn_row(lw.a, lw.b, lw.slot, lw.order, lw.n_used, lw.sel, lw.u[r],
                          lw.z[r], lw.gz, probs[r], coef, fix, stok[r], tokens[r], lw.lr,
                          lw.lr_hidden, lw.min_q)
    return new_bmax


refresh_kernel_cache(globals())
