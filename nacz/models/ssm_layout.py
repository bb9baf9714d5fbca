"""The SSM's state layout: every offset the kernels use, computed once here.

The numba kernels (nacz/models/ssm/) and the C twin (csrc/ssm.c, loaded by nacz/native.py)
read all sizes and offsets from one int64 array ``dims`` whose entries are named by
``DIM_NAMES`` (``X_<NAME>`` is the index of each); csrc/ssm.c reports its own list and
native.py refuses a library whose list differs. This module imports only numpy, so that
native.py can check a library without importing the model (no import circle).
"""

from __future__ import annotations

import numpy as np

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


class Layout:
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

