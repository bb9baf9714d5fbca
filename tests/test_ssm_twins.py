"""numba and C must give the same bits: every step's log-probabilities and the final weights.

Compared: the numba kernels against (1) a fresh build of csrc/ssm.c with the project's
flags, (2) the same source without the AVX2 function clone (baseline SSE2 code on x86-64),
(3) without clones and without GCC vector extensions (the plain loops other compilers
get), and (4) the library setup.py built into the package, when there is one.
"""

from __future__ import annotations

import numpy as np
import pytest

from nacz import native
from nacz.models.ssm import NumbaKernels, OnlineSSM, default_spec


@pytest.fixture(scope="module")
def c_kernels(tmp_path_factory):
    libs = {}
    bundled = native.bundled_library_path()
    if bundled is not None:
        libs["bundled"] = native.open_c_library(bundled)
    if native.find_compiler():
        out = tmp_path_factory.mktemp("ssm-c")
        libs["fresh"] = native.open_c_library(native.compile_c(out))
        libs["sse2"] = native.open_c_library(
            native.compile_c(out, extra=("-DNACZ_SSM_NO_CLONES",), name="libnacz_ssm_sse2"))
        libs["plain"] = native.open_c_library(native.compile_c(
            out, extra=("-DNACZ_SSM_NO_CLONES", "-DNACZ_SSM_NO_VECTOR_EXT"),
            name="libnacz_ssm_plain"))
    if not libs:
        pytest.skip("no C compiler and no built C library: nothing to compare numba with")
    return {name: native.CKernels(lib) for name, lib in libs.items()}


def lockstep(spec, V, toks, lens, kernels: dict):
    """Run one model per kernel set in lockstep; assert identical outputs at every step."""
    models = {name: OnlineSSM.from_spec(spec, V, impl=k) for name, k in kernels.items()}
    for m in models.values():
        m.reset(len(lens))
    ref_name = "numba"
    for t in range(max(lens)):
        A = sum(1 for n in lens if n > t)
        ref = models[ref_name].logprobs(A)
        for name, m in models.items():
            if name != ref_name:
                lp = m.logprobs(A)
                assert np.array_equal(lp, ref), (name, t, float(np.abs(lp - ref).max()))
        for m in models.values():
            m.update(toks[:A, t])
    ref = models[ref_name].weights()
    for name, m in models.items():
        w = m.weights()
        for key in ref:
            assert np.array_equal(w[key], ref[key]), (name, key)
    return models[ref_name]


def test_primitives_identical(c_kernels):
    rng = np.random.default_rng(0)
    x = np.concatenate([
        rng.uniform(-100, 100, 300000), rng.standard_normal(300000) * 3,
        np.exp(rng.uniform(-80, 80, 300000)),
        [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-45, -1e-45, 87.0, -87.0, 88.5, -88.5],
    ]).astype(np.float32)
    nb = NumbaKernels()
    for name, k in c_kernels.items():
        assert np.array_equal(k.vexp(x).view(np.uint32), nb.vexp(x).view(np.uint32)), name
        assert np.array_equal(k.vlog(x).view(np.uint32), nb.vlog(x).view(np.uint32)), name


def test_twins_10000_random_steps(c_kernels):
    """10,000 lockstep steps of random tokens over a small vocabulary (exhausted early, so
    both the escape and the no-escape head run), active streams shrinking 4 -> 1."""
    V, lens = 300, [10000, 9000, 5000, 1500]
    toks = np.random.default_rng(1).integers(0, V, (4, 10000)).astype(np.int32)
    ref = lockstep(default_spec(), V, toks, lens, {"numba": NumbaKernels(), **c_kernels})
    assert ref.K == V and ref.n_chunks > 500


def test_twins_full_vocabulary(c_kernels):
    V, lens = 49152, [200, 200, 150]
    rng = np.random.default_rng(2)
    toks = rng.integers(0, V, (3, 200)).astype(np.int32)
    toks[:, 100:] = toks[:, :100]  # repeats, so the head sees seen types too
    ref = lockstep(default_spec(), V, toks, lens, {"numba": NumbaKernels(), **c_kernels})
    assert 290 <= ref.K <= 300 and ref.n_chunks >= 15


@pytest.mark.parametrize("over", [
    dict(d_model=12, d_state=3, dt_rank=3, d_conv=3, chunk=5),  # sizes off the 8/16 lanes
    dict(d_model=4, d_state=1, expand=1, d_conv=1, n_layers=1, dt_rank=1, chunk=2),
    dict(n_layers=3, expand=3, d_conv=6, count_prior=0, early_passes=3),
])
def test_twins_other_shapes(c_kernels, over):
    spec = dict(default_spec(), **over)
    V, lens = 150, [700, 650, 300]
    toks = np.random.default_rng(3).integers(0, V, (3, 700)).astype(np.int32)
    lockstep(spec, V, toks, lens, {"numba": NumbaKernels(), **c_kernels})
