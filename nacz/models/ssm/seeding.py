"""Deterministic initialisation: counter-based splitmix64 -> exact float32 in [-1, 1).

Integer arithmetic and one exact int -> float32 conversion: the same values on every
platform, so the seed in the spec fixes the initial weights of encoder and decoder alike.
"""

from __future__ import annotations

import math

import numpy as np

from ..ssm_layout import Layout

F32 = np.float32

_M64 = (1 << 64) - 1
_GAMMA = 0x9E3779B97F4A7C15


def _mix64(z: int) -> int:
    z &= _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def block_key(seed: int, block: int) -> int:
    """The stream key of one block of initial values (the core, the embedding rows)."""
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


BLK_CORE, BLK_EMB = 1, 2


def init_core(spec: dict, lay: Layout, vlog) -> np.ndarray:
    """The initial core weights (every layer and the final norm) of a fresh model.
    ``vlog``: the kernel set's float32 log (A_log is computed with it, like the C twin)."""
    v = lay.v
    d, di, N, R, P, Kc, L = v["d"], v["di"], v["N"], v["R"], v["P"], v["Kc"], v["L"]
    u = uniform(block_key(spec["seed"], BLK_CORE), 0, v["ncore"])
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
        p[o:o + N * di] = vlog(a)
        p[lb + v["o_D"]: lb + v["o_D"] + di] = F32(1.0)
        fill(lb + v["o_wout"], di * d, 1.0 / math.sqrt(di))
    p[v["o_gf"]: v["o_gf"] + d] = F32(1.0)
    return p
