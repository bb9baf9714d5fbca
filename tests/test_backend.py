"""The llama.cpp backend: batched decode, sliding window, fingerprint."""

from __future__ import annotations

import numpy as np

from nacz.backends import llama


def _run(backend, streams, steps):
    backend.reset(len(streams))
    outs = []
    prev = np.array([backend.model.start_token] * len(streams), dtype=np.int32)
    for t in range(steps):
        outs.append(backend.step(prev).copy())
        prev = np.array([s[t] for s in streams], dtype=np.int32)
    return outs


def test_logits_shape_and_batching(runtime):
    toks = runtime.tokenizer.tokenize(b"Once upon a time there was a little compressor.")
    be = runtime.backend(window=64, slide=32, sinks=4, threads=2)
    batched = _run(be, [toks, toks[::-1].copy(), toks], 6)
    assert batched[0].shape == (3, runtime.model.vocab_size)
    assert batched[0].dtype == np.float32 and np.isfinite(batched[0]).all()
    # Same sequence in two rows of one batch: identical logits.
    for step in batched:
        assert np.array_equal(step[0], step[2])
    # And reruns are bit-identical.
    again = _run(be, [toks, toks[::-1].copy(), toks], 6)
    assert all(np.array_equal(a, b) for a, b in zip(batched, again))


def test_sliding_window_keeps_predicting(runtime):
    text = b"The cat sat on the mat. " * 40
    toks = runtime.tokenizer.tokenize(text)
    be = runtime.backend(window=32, slide=16, sinks=4, threads=2)
    outs = _run(be, [toks], 100)  # slides several times
    assert all(np.isfinite(o).all() for o in outs)
    # Repetitive text stays predictable after slides (prediction is not ruined).
    late_hits = sum(int(np.argmax(outs[t][0]) == toks[t]) for t in range(60, 100))
    assert late_hits >= 25


def test_fingerprint_is_deterministic_and_thread_independent(runtime):
    fp1 = runtime.fingerprint(runtime.backend(1024, 512, 4, threads=1), {"kind": "llm"})
    fp2 = runtime.fingerprint(runtime.backend(1024, 512, 4, threads=2), {"kind": "llm"})
    assert fp1 == fp2 and len(fp1) == 32


def test_fingerprint_differs_for_another_model(other_model):
    from nacz.codec import Runtime
    other = Runtime(other_model)
    from nacz.codec import load_runtime
    default = load_runtime(None)
    be = default.backend(1024, 512, 4, threads=2)
    ob = other.backend(1024, 512, 4, threads=2)
    assert default.fingerprint(be, {"kind": "llm"}) != other.fingerprint(ob, {"kind": "llm"})


def test_cpu_features_are_reported():
    feats = llama.cpu_features()
    assert feats and "=" not in feats


def test_importing_nacz_changes_no_environment():
    import subprocess
    import sys
    code = ("import os; before = dict(os.environ); import nacz.codec, nacz.cli, "
            "nacz.backends.llama; assert dict(os.environ) == before, 'environment changed'")
    env = {k: v for k, v in __import__("os").environ.items()
           if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_entry_points_bound_openmp_spinning_unless_the_user_chose():
    env: dict = {}
    llama.bound_openmp_spinning(env)
    assert env == {"GOMP_SPINCOUNT": llama.SPINCOUNT}
    for mine in ({"OMP_WAIT_POLICY": "ACTIVE"}, {"GOMP_SPINCOUNT": "7"}):
        env = dict(mine)
        llama.bound_openmp_spinning(env)
        assert env == mine


def test_hidden_states_leave_the_logits_bit_identical(runtime):
    """Asking llama.cpp for the final hidden states too (embeddings on, pooling none)
    changes no logit; each row gets its stream's state (the same sequence in two rows:
    the same state). llama.cpp outputs every row in this mode: a row not wanted gets
    its logits and state all the same."""
    toks = runtime.tokenizer.tokenize(b"Once upon a time there was a little compressor.")
    streams = [toks, toks[::-1].copy(), toks]
    be = runtime.backend(window=32, slide=16, sinks=4, threads=2)
    plain = _run(be, streams, 8)
    be.reset(3, hidden=True)
    prev = np.array([runtime.model.start_token] * 3, dtype=np.int32)
    for t in range(8):
        want = np.array([True, t % 2 == 0, True])
        out = be.step(prev, want)
        h = be.hidden_states(3)
        assert h.shape == (3, runtime.model.hidden_size) and h.dtype == np.float32
        assert np.array_equal(out, plain[t])
        assert np.array_equal(h[0], h[2]) and np.isfinite(h).all()
        assert t == 0 or not np.array_equal(h[0], h[1])  # (all start with the same token)
        prev = np.array([s[t] for s in streams], dtype=np.int32)


def test_probe_states_give_the_probe_logits(runtime):
    be = runtime.backend(1024, 512, 4, threads=2)
    probe = runtime.tokenizer.tokenize(llama.PROBE_TEXT)
    logits, states = be.probe_states(probe, hidden=True)
    assert np.array_equal(logits, be.probe(probe))
    assert states.shape == (len(probe), runtime.model.hidden_size)
    assert be.probe_states(probe, hidden=False)[1] is None
