"""The online SSM predictor: spec, the seam, symmetry, determinism, gradients, learning.

Runs the default implementation (C when built, else numba) unless a test names one;
tests/test_ssm_twins.py checks that both give the same bits.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numba
import numpy as np
import pytest

from nacz import native
from nacz.errors import FormatError
from nacz.models import ssm
from nacz.models.ssm import OnlineSSM, default_spec, validate_spec

ROOT = Path(__file__).resolve().parent.parent
TINY = dict(default_spec(), d_model=8, d_state=4, n_layers=2, dt_rank=2, chunk=8)


def run(model: OnlineSSM, toks: np.ndarray, lens) -> list[np.ndarray]:
    """Drive the model like the engine: streams 0..A-1 active, logprobs then update."""
    model.reset(len(lens))
    out = []
    for t in range(max(lens)):
        A = sum(1 for n in lens if n > t)
        out.append(model.logprobs(A).copy())
        model.update(toks[:A, t])
    return out


def random_tokens(V: int, S: int, n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, V, (S, n)).astype(np.int32)


# -- spec ------------------------------------------------------------------------------
def test_default_spec_round_trips_through_json():
    spec = default_spec()
    text = json.dumps(spec)
    back = json.loads(text)
    assert back == spec
    assert validate_spec(back) == spec
    m = OnlineSSM.from_spec(back, 300)
    assert m.spec == spec and json.dumps(m.spec) == text
    # a model rebuilt from the JSON predicts exactly like the original
    toks = random_tokens(300, 2, 80)
    a = run(OnlineSSM.from_spec(spec, 300), toks, [80, 70])
    b = run(OnlineSSM.from_spec(json.loads(text), 300), toks, [80, 70])
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


def _mut(**kw):
    s = default_spec()
    s.update(kw)
    return s


def _without(key):
    s = default_spec()
    del s[key]
    return s


BAD_SPECS = [
    None, [], "ssm", 3,
    _without("chunk"), _without("kind"), _mut(extra=1),
    _mut(kind="ngram"), _mut(version=2),
    _mut(d_model=True), _mut(d_model=32.0), _mut(d_model="32"), _mut(d_model=0),
    _mut(d_model=30), _mut(d_model=1024), _mut(d_state=0), _mut(expand=9),
    _mut(d_conv=0), _mut(n_layers=0), _mut(dt_rank=0), _mut(chunk=1), _mut(chunk=10**6),
    _mut(lr=0), _mut(lr=-0.1), _mut(lr=float("nan")), _mut(lr=float("inf")), _mut(lr="0.1"),
    _mut(lr=None), _mut(beta1=1.0), _mut(beta1=-0.5), _mut(beta2=1.0), _mut(eps=0.0),
    _mut(clip=0), _mut(boost=0.5), _mut(boost_steps=-1), _mut(early_passes=0),
    _mut(early_steps=1.5), _mut(seed=-1), _mut(seed=1 << 64), _mut(count_prior=2),
    _mut(count_prior=False),
    # each value in range, but the training workspace would be huge
    _mut(d_model=128, expand=4, d_state=64, chunk=128, n_layers=4),
]


@pytest.mark.parametrize("spec", BAD_SPECS)
def test_bad_spec_is_a_format_error(spec):
    with pytest.raises(FormatError):
        validate_spec(spec)
    with pytest.raises(FormatError):
        OnlineSSM.from_spec(spec, 1000)


@pytest.mark.parametrize("vocab", [0, 1, True, 2.0, 1 << 25, "49152"])
def test_bad_vocab_is_a_format_error(vocab):
    with pytest.raises(FormatError):
        OnlineSSM.from_spec(default_spec(), vocab)


def test_spec_accepts_int_for_float_and_normalises():
    s = _mut(lr=1, boost=2)
    v = validate_spec(s)
    assert v["lr"] == 1.0 and type(v["lr"]) is float and type(v["boost"]) is float


def test_unknown_impl_rejected():
    with pytest.raises(ValueError):
        OnlineSSM.from_spec(default_spec(), 100, impl="fortran")
    assert OnlineSSM.from_spec(default_spec(), 100, impl="numba").impl == "numba"


def test_native_reports_active_impl(monkeypatch):
    assert native.ssm_impl() in ("c", "numba")
    monkeypatch.setenv("NACZ_SSM_IMPL", "numba")
    assert native.ssm_impl() == "numba"
    assert OnlineSSM.from_spec(default_spec(), 100).impl == "numba"
    if not native.c_available():
        monkeypatch.setenv("NACZ_SSM_IMPL", "")
        assert native.ssm_impl() == "numba"


def test_setup_py_uses_the_same_compiler_flags():
    """The flags are defined once, in nacz/cflags.py: setup.py reads that file (it cannot
    import nacz) and native.py imports it; neither spells a flag of its own."""
    import runpy
    flags = runpy.run_path(str(ROOT / "nacz" / "cflags.py"))
    text = (ROOT / "setup.py").read_text()
    assert '"cflags.py"' in text and "-ffp-contract" not in text
    assert "-ffp-contract" not in (ROOT / "nacz" / "native.py").read_text()
    assert tuple(flags["GCC_FLAGS"]) == tuple(f for f in native.CFLAGS if f != "-fPIC")
    gcc = flags["GCC_FLAGS"]
    assert "-ffp-contract=off" in gcc and not any("march" in f for f in gcc)


# -- the seam --------------------------------------------------------------------------
def test_logprobs_are_finite_normalised_distributions():
    V, S = 50, 3
    toks = random_tokens(V, S, 60, seed=3)
    m = OnlineSSM.from_spec(TINY, V)
    m.reset(S)
    first = m.logprobs(S)
    assert first.shape == (S, V) and first.dtype == np.float64
    np.testing.assert_allclose(first, -math.log(V), atol=1e-5)  # nothing seen: uniform
    for t in range(60):
        A = S - (t >= 50) - (t >= 40)
        lp = m.logprobs(A)
        assert lp.shape == (A, V) and np.isfinite(lp).all()
        lse = np.log(np.exp(lp).sum(axis=1))
        np.testing.assert_allclose(lse, 0.0, atol=2e-5)
        seen = set(m.weights()["types"].tolist())
        unseen = [v for v in range(V) if v not in seen]
        if unseen:  # the escape mass is spread uniformly over the unseen types
            assert (lp[:, unseen] == lp[:, unseen[:1]]).all()
        m.update(toks[:A, t])


def test_head_grows_in_order_of_first_appearance():
    m = OnlineSSM.from_spec(TINY, 100)
    m.reset(2)
    steps = [[7, 3], [3, 9], [9, 9], [42, 7], [1, 5]]
    for row in steps:
        m.logprobs(2)
        m.update(np.array(row, np.int32))
    w = m.weights()
    assert w["types"].tolist() == [7, 3, 9, 42, 1, 5]
    assert m.K == 6
    assert w["head"].shape == (TINY["d_model"] + 1, 7)  # classes: escape + seen types only
    assert w["emb"].size == 7 * TINY["d_model"]


def test_exhausted_vocabulary_has_no_escape_mass():
    V = 6
    toks = np.array([[0, 1, 2, 3, 4, 5] * 20], np.int32)
    m = OnlineSSM.from_spec(TINY, V)
    m.reset(1)
    for t in range(toks.shape[1]):
        lp = m.logprobs(1)
        assert np.isfinite(lp).all()
        np.testing.assert_allclose(np.exp(lp).sum(), 1.0, atol=2e-5)
        m.update(toks[:, t])
    assert m.K == V


def test_update_rejects_bad_calls():
    m = OnlineSSM.from_spec(TINY, 10)
    with pytest.raises(RuntimeError):
        m.logprobs(1)
    m.reset(3)
    with pytest.raises(ValueError):
        m.update(np.array([1, 2, 10], np.int32))  # out of vocabulary
    with pytest.raises(ValueError):
        m.update(np.array([1, -1], np.int32))
    with pytest.raises(ValueError):
        m.logprobs(4)
    m.update(np.array([1, 2], np.int32))  # stream 2 finished
    with pytest.raises(ValueError):
        m.update(np.array([1, 2, 3], np.int32))  # active streams never grow again


# -- symmetry and determinism ----------------------------------------------------------
def test_two_instances_agree_bit_for_bit():
    V, lens = 400, [300, 260, 200, 31]
    toks = random_tokens(V, 4, 300, seed=11)
    m1, m2 = OnlineSSM.from_spec(default_spec(), V), OnlineSSM.from_spec(default_spec(), V)
    a, b = run(m1, toks, lens), run(m2, toks, lens)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    w1, w2 = m1.weights(), m2.weights()
    assert all(np.array_equal(w1[k], w2[k]) for k in w1)
    # reset() starts a fresh model: a second run on the same instance is identical too
    c = run(m1, toks, lens)
    assert all(np.array_equal(x, y) for x, y in zip(a, c))
    # and the model really learned something in between (weights moved from the init)
    m3 = OnlineSSM.from_spec(default_spec(), V)
    m3.reset(1)
    assert not np.array_equal(m3.weights()["core"], w1["core"])


def test_result_does_not_depend_on_numba_thread_count():
    V, lens = 200, [120, 100]
    toks = random_tokens(V, 2, 120, seed=5)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        a = run(OnlineSSM.from_spec(TINY, V, impl="numba"), toks, lens)
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        b = run(OnlineSSM.from_spec(TINY, V, impl="numba"), toks, lens)
    finally:
        numba.set_num_threads(before)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_seed_changes_the_model():
    V = 100
    toks = random_tokens(V, 1, 20)
    a = run(OnlineSSM.from_spec(TINY, V), toks, [20])
    b = run(OnlineSSM.from_spec(dict(TINY, seed=TINY["seed"] + 1), V), toks, [20])
    assert not np.array_equal(a[-1], b[-1])


def test_same_result_in_a_fresh_process():
    """Nothing depends on process state (hash seeds, allocation addresses, caches)."""
    code = (
        "import numpy as np, hashlib\n"
        "from nacz.models.ssm import OnlineSSM, default_spec\n"
        "m = OnlineSSM.from_spec(default_spec(), 300); m.reset(2)\n"
        "t = np.random.default_rng(9).integers(0, 300, (2, 100)).astype(np.int32)\n"
        "h = hashlib.sha256()\n"
        "for i in range(100):\n"
        "    h.update(m.logprobs(2).tobytes()); m.update(t[:, i])\n"
        "print(h.hexdigest())\n")
    env = dict(os.environ, PYTHONHASHSEED="123")
    out1 = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=120)
    env["PYTHONHASHSEED"] = "7"
    out2 = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=120)
    assert out1.returncode == 0, out1.stderr
    assert out1.stdout == out2.stdout and len(out1.stdout.strip()) == 64


# -- training --------------------------------------------------------------------------
def test_training_runs_once_per_chunk_and_stream():
    V, S, T = 50, 3, TINY["chunk"]
    toks = random_tokens(V, S, 3 * T)
    m = OnlineSSM.from_spec(TINY, V)
    m.reset(S)
    core0 = m.weights()["core"]
    for t in range(T - 1):
        m.logprobs(S)
        m.update(toks[:, t])
    assert m.n_chunks == 0 and np.array_equal(m.weights()["core"], core0)
    m.logprobs(S)
    m.update(toks[:, T - 1])
    assert m.n_chunks == S and not np.array_equal(m.weights()["core"], core0)
    # early chunks get extra passes (the schedule trains more at the start)
    assert m.n_updates == S * TINY["early_passes"]
    assert math.isfinite(m.last_loss) and m.last_loss > 0


def _gradient_setup():
    """A tiny model with a chunk ready to train (Δ enlarged so the scan path matters)."""
    V, S, T = 20, 2, TINY["chunk"]
    m = OnlineSSM.from_spec(TINY, V, impl="numba")
    m.reset(S)
    rng = np.random.default_rng(1)
    for _ in range(2 * T - 1):
        m.logprobs(S)
        m.update(rng.integers(0, V, S).astype(np.int32))
    b, v = m._b, m._lay.v
    toks = rng.integers(0, V, S).astype(np.int32)
    b.tgt[m.pos * S: m.pos * S + S] = b.slot_of[toks]
    b.Kt[m.pos] = m.K
    for tok in toks:
        if b.slot_of[tok] == 0:
            m._add_type(int(tok))
    for layer in range(v["L"]):
        lb = layer * v["lsz"]
        b.P[lb + v["o_bdt"]: lb + v["o_bdt"] + v["di"]] = np.float32(0.5)
        o = lb + v["o_wxp"]
        b.P[o: o + v["di"] * v["P"]] *= np.float32(30)
    b.pr[:m.K + 1] = np.linspace(-1, 1, m.K + 1, dtype=np.float32)  # a non-trivial prior
    m.kernels.refresh(b)
    return m


def test_gradient_matches_finite_differences():
    m = _gradient_setup()
    b, v, k = m._b, m._lay.v, m.kernels

    def loss():
        value = k.train(b, 1)
        b.gP[:] = 0
        b.gWh[:] = 0
        b.gemb[:] = 0
        return value

    k.train(b, 1)
    grads = {"P": b.gP.copy(), "Whf": b.gWh.copy(), "emb": b.gemb.copy()}
    b.gP[:] = 0
    b.gWh[:] = 0
    b.gemb[:] = 0
    rng = np.random.default_rng(2)
    blocks = {"o_g": v["d"], "o_win": v["d"] * 2 * v["di"], "o_cw": v["Kc"] * v["di"],
              "o_cb": v["di"], "o_wxp": v["di"] * v["P"], "o_wdt": v["R"] * v["di"],
              "o_bdt": v["di"], "o_alog": v["N"] * v["di"], "o_D": v["di"],
              "o_wout": v["di"] * v["d"]}
    checks = []
    for layer in range(v["L"]):
        for name, size in blocks.items():
            for _ in range(3):
                checks.append(("P", layer * v["lsz"] + v[name] + int(rng.integers(size)),
                               f"layer{layer}.{name}"))
    checks += [("P", v["o_gf"] + int(rng.integers(v["d"])), "final_norm") for _ in range(3)]
    cap = v["cap"]
    checks += [("Whf", int(rng.integers(v["d"] + 1)) * cap + int(rng.integers(m.K + 1)),
                "head") for _ in range(8)]
    slots = np.unique(b.inputs[1::2][:v["T"]])
    checks += [("emb", int(rng.choice(slots)) * v["d"] + int(rng.integers(v["d"])), "emb")
               for _ in range(6)]
    failures, significant = [], 0
    h = np.float32(1e-2)
    for arr_name, i, label in checks:
        arr = getattr(b, arr_name)
        old = arr[i]
        arr[i] = old + h
        k.refresh(b)
        lp = loss()
        arr[i] = old - h
        k.refresh(b)
        lm = loss()
        step = float(np.float32(old + h)) - float(np.float32(old - h))
        arr[i] = old
        k.refresh(b)
        fd = (lp - lm) / step
        an = float(grads[arr_name][i])
        if max(abs(an), abs(fd)) > 1e-4:
            significant += 1
        if abs(an - fd) > 0.05 * max(abs(an), abs(fd), 1e-3):
            failures.append((label, an, fd))
    assert not failures, failures
    assert significant >= 0.7 * len(checks)


def test_learns_a_repetitive_sequence():
    """Code length falls far below log2(#types) per token on a repeated pattern."""
    rng = np.random.default_rng(4)
    n_types, period, n = 24, 48, 3000
    ids = rng.choice(49152, n_types, replace=False)
    pattern = ids[rng.integers(0, n_types, period)]
    seq = np.tile(pattern, n // period + 2)
    toks = np.stack([seq[:n], seq[17:17 + n]]).astype(np.int32)
    m = OnlineSSM.from_spec(default_spec(), 49152)
    m.reset(2)
    bits = np.zeros(n)
    for t in range(n):
        lp = m.logprobs(2)
        bits[t] = -lp[[0, 1], toks[:, t]].sum() / 2 / math.log(2)
        m.update(toks[:, t])
    n_seen = len(np.unique(pattern))
    assert bits[:period].mean() > 5  # it starts uninformed (new types cost ~15 bits)
    assert bits[-1000:].mean() < 0.1 * math.log2(n_seen)


# -- the exp/log polynomials -----------------------------------------------------------
def test_fexp_flog_accuracy_and_special_values():
    k = ssm.NumbaKernels()
    x = np.linspace(-86, 86, 200001, dtype=np.float32)
    rel = np.abs(k.vexp(x) / np.exp(x.astype(np.float64)) - 1)
    assert rel.max() < 3e-7
    y = np.exp(np.linspace(-60, 60, 200001)).astype(np.float32)
    err = np.abs(k.vlog(y) - np.log(y.astype(np.float64)))
    assert err.max() < 2e-6 * np.maximum(1, np.abs(np.log(y.astype(np.float64)))).max()
    special = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, -5.0, 1e-45, 1e30], np.float32)
    assert np.isfinite(k.vexp(special)).all() and (k.vexp(special) > 0).all()
    assert np.isfinite(k.vlog(special)).all()
    assert k.vlog(np.array([1.0], np.float32))[0] == 0.0
