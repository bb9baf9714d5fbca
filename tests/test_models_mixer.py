"""Mixer kernels against a plain numpy reference; context buckets; spec validation."""

import math

import numpy as np
import pytest

from nacz.errors import FormatError
from nacz.models import mixer
from nacz.models.mixer import (bucket, dense_pass, normalize, row_max, sparse_pass,
                               validate)


def run_mix(llm, wl, b, add, dense=None, wd=None, use_llm=True, u0=None):
    """The kernels' three steps for one row, as the ensemble runs them."""
    V = b.shape[0]
    n_dense = 0 if dense is None else dense.shape[0]
    dense = np.zeros((1, 1, 1), np.float32) if dense is None else dense
    wd = np.zeros(1) if wd is None else wd
    u0 = np.zeros(V) if u0 is None else u0
    touched = np.flatnonzero(add).astype(np.int32)
    mark = np.zeros(V, np.uint8)
    mark[touched] = 1
    acc = np.zeros(2 + max(1, n_dense))
    sums = np.zeros(2 + max(1, n_dense))
    out = np.zeros(V)
    lmax = row_max(llm) if use_llm else 0.0
    ent = dense_pass(out, llm, use_llm, wl, lmax, b, b.max(), u0, u0.max(), dense, 0, wd,
                     n_dense, mark, acc)
    sparse_pass(out, llm, use_llm, wl, lmax, b, b.max(), u0, u0.max(), dense, 0, wd, n_dense,
                add, touched, len(touched), mark, acc, -1)
    normalize(out, acc, n_dense, sums)
    assert (mark[touched] == 2).all()
    return out, ent, sums


def softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def test_mixture_matches_reference():
    rng = np.random.default_rng(0)
    V = 3000
    llm = (rng.standard_normal(V) * 4).astype(np.float32)
    b = rng.standard_normal(V) * 0.3
    add = np.zeros(V)
    add[[3, 10, 2999]] = [2.5, -1.0, 7.0]
    out, ent, sums = run_mix(llm, 0.8, b, add)
    z = 0.8 * llm.astype(np.float64) + b + add
    want = softmax(z)
    assert np.allclose(out, want, rtol=1e-12, atol=0)
    assert abs(out.sum() - 1.0) < 1e-12
    assert math.isclose(sums[1], float(want @ llm.astype(np.float64)), rel_tol=1e-12)
    q = softmax(0.8 * llm.astype(np.float64) + b)  # entropy of the dense part
    assert math.isclose(ent, float(-(q * np.log(q)).sum()), rel_tol=1e-9)


@pytest.mark.parametrize("use_llm,n_dense", [(False, 1), (True, 1), (False, 2), (True, 2)])
def test_dense_inputs_with_and_without_llm(use_llm, n_dense):
    rng = np.random.default_rng(1)
    V = 500
    logp = np.stack([np.log(softmax(rng.standard_normal(V) * 2)) for _ in range(n_dense)])
    dense = logp[:, None, :]  # (D, A=1, V), float64 as the SSM gives them
    wd = np.array([0.7, 0.2])[:n_dense]
    b = rng.standard_normal(V) * 0.1
    add = np.zeros(V)
    add[7] = 1.5
    llm = (rng.standard_normal(V) * 3).astype(np.float32)
    u0 = np.log(rng.integers(0, 5, V) + 0.05)  # log unigram counts: used without the LLM
    if not use_llm:
        llm[:] = np.nan  # must not be read without the LLM
    out, _, sums = run_mix(llm, 0.9 if use_llm else 0.0, b, add, dense, wd, use_llm, u0)
    z = b + add + wd @ logp
    z += 0.9 * llm.astype(np.float64) if use_llm else u0
    want = softmax(z)
    assert np.allclose(out, want, rtol=1e-12, atol=0)
    for d in range(n_dense):
        assert math.isclose(sums[2 + d], float(want @ logp[d]), rel_tol=1e-12)
    if use_llm:
        assert math.isclose(sums[1], float(want @ llm.astype(np.float64)), rel_tol=1e-12)


def test_shared_llm_free_dense_part_is_bit_identical():
    """Rows without LLM share exp(b - bmax) (computed once a step): the shortcut must
    give exactly what the general pass gives."""
    rng = np.random.default_rng(2)
    V = 2000
    b = rng.standard_normal(V) * 3
    u0 = np.log(rng.integers(0, 5, V) + 0.05)
    mark = np.zeros(V, np.uint8)
    mark[[1, 7, 1999]] = 1
    out1, out2 = np.zeros(V), np.zeros(V)
    acc1, acc2 = np.zeros(3), np.zeros(3)
    none = np.zeros(1, np.float32)
    dense_pass(out1, none, False, 0.0, 0.0, b, b.max(), u0, u0.max(),
               np.zeros((1, 1, 1), np.float32), 0, np.zeros(1), 0, mark, acc1)
    ebuf = np.zeros(V)
    mixer.bias_exp(b, b.max(), u0, u0.max(), ebuf)
    mixer.copy_pass(out2, ebuf, mark, acc2)
    assert np.array_equal(out1, out2) and np.array_equal(acc1[:2], acc2[:2])


def test_extreme_inputs_keep_every_probability_positive():
    V = 1000
    llm = np.zeros(V, np.float32)
    llm[0] = 5000.0  # a logit gap no float exp survives unfloored
    add = np.zeros(V)
    add[1] = 9000.0  # an absurd sparse boost: capped, not inf
    out, _, _ = run_mix(llm, 1.0, np.zeros(V), add)
    assert np.isfinite(out).all() and (out > 0).all()
    assert abs(out.sum() - 1.0) < 1e-12 and out[1] > 0.999


def test_nan_logits_cannot_poison_the_probabilities():
    V = 100
    llm = np.zeros(V, np.float32)
    llm[[3, 50]] = np.nan
    out, _, _ = run_mix(llm, 1.0, np.zeros(V), np.zeros(V))
    assert np.isfinite(out).all() and (out > 0).all() and abs(out.sum() - 1) < 1e-12
    assert mixer.clamp(float("nan"), -1.0, 1.0) == -1.0


def test_buckets():
    edges = np.array([0.5, 1.0, 2.0])
    assert [bucket(x, edges) for x in (0.0, 0.5, 0.99, 1.0, 5.0)] == [0, 1, 1, 2, 3]
    assert bucket(3.0, np.zeros(0)) == 0


def test_weights_shapes_and_init():
    spec = mixer.default_spec(n_dense=2)
    w = mixer.MixerWeights(spec, n_orders=4, n_conf=10, n_match_buckets=3)
    assert w.n_ctx == (len(spec["ent_edges"]) + 1) * 3 + 3
    assert (w.w_llm[w.n_llm_ctx:] == 0).all() and (w.w_llm[:w.n_llm_ctx] == 1.0).all()
    assert w.w_dense.shape == (w.n_ctx, 2)
    assert (w.v[0] == spec["init_ngram"]).all() and (w.v[1] == spec["init_ngram_free"]).all()
    w.w_llm[0] = 5.0
    w.reset()
    assert w.w_llm[0] == 1.0


@pytest.mark.parametrize("key,value", [
    ("lr", -1.0), ("lr", "0.1"), ("ent_edges", [1.0, 0.5]), ("ent_edges", 1.0),
    ("dense", 9), ("dense", 1.0), ("w_max", -1.0), ("init_llm", 100.0),
    ("init_ngram", 50.0), ("init_ngram_free", float("nan")), ("lr_llm", 2.0),
])
def test_bad_specs_are_format_errors(key, value):
    spec = mixer.default_spec()
    validate(spec)
    spec[key] = value
    with pytest.raises(FormatError):
        validate(spec)
    spec = mixer.default_spec()
    spec.pop(key)
    with pytest.raises(FormatError):
        validate(spec)


def test_stale_kernel_caches_are_dropped():
    """A cached kernel embeds the kernels it calls from other files, which numba's own
    cache check ignores: the modules record a digest of all their sources and drop their
    cached kernels when it differs (nacz/models/kernel_cache.py)."""
    from pathlib import Path

    from nacz.models import bias, kernel_cache
    cache_dir = Path(bias._log._cache.cache_path)
    stamp = cache_dir / "bias.nacz-sources"
    if not stamp.exists():
        pytest.skip("numba cache directory not writable here")
    assert stamp.read_text() == kernel_cache.sources_digest()
    stamp.write_text("stale")
    kernel_cache.refresh_kernel_cache({"__name__": "nacz.models.bias", "_log": bias._log})
    assert stamp.read_text() == kernel_cache.sources_digest()
    assert bias._log._cache._cache_file._load_index() == {}  # the index was emptied
    assert bias._log(1.0) == 0.0  # and the kernel still works (recompiled as needed)
