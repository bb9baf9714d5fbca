"""The SSM's kernel protocol, its numba implementation and the one selector.

A kernel set has the methods of ``SSMKernels``; two exist and give the same bits
(tests/test_ssm_twins.py): ``NumbaKernels`` (here) and ``native.CKernels`` (csrc/ssm.c via
ctypes). ``select`` is the only place that turns a name into a kernel set; the default name
comes from ``native.ssm_impl()`` (the C library when it is built, ``NACZ_SSM_IMPL``
overrides).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from ... import native
from .backward import k_adam, k_train
from .forward import k_logprobs, k_refresh, k_step, k_vexp, k_vlog

F32 = np.float32


class SSMKernels(Protocol):
    name: str

    def step(self, b, A: int, pos: int) -> None: ...
    def logprobs(self, b, A: int, K: int) -> None: ...
    def train(self, b, a: int) -> float: ...
    def adam(self, b, K: int, rows: np.ndarray, hp: np.ndarray) -> None: ...
    def refresh(self, b) -> None: ...
    def vlog(self, x: np.ndarray) -> np.ndarray: ...
    def vexp(self, x: np.ndarray) -> np.ndarray: ...


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



class Buffers:
    """Every array the kernels touch, as attributes; ``ptrs`` maps each name to the
    array's address (what the C kernels are called with)."""

    def __init__(self, n_streams: int):
        self.S = n_streams
        self.ptrs: dict[str, int] = {}

    def set(self, name: str, arr: np.ndarray) -> None:
        assert arr.flags.c_contiguous
        setattr(self, name, arr)
        self.ptrs[name] = arr.__array_interface__["data"][0]


def select(impl=None) -> SSMKernels:
    """The kernel set for ``impl``: None (the default: native.ssm_impl()), "c", "numba",
    or a kernel set itself."""
    if impl is None:
        impl = native.ssm_impl()
    if impl == "numba":
        return NumbaKernels()
    if impl == "c":
        return native.CKernels()
    if isinstance(impl, (NumbaKernels, native.CKernels)):
        return impl
    raise ValueError(f"unknown SSM implementation {impl!r} (use 'c' or 'numba')")
