"""The low-rank correction from the LLM's hidden state (models/lowrank.py): symmetric,
valid, frozen in preset 5, neutral until it learns, and it learns what only the hidden
state knows."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from nacz.errors import FormatError
from nacz.models import lowrank, mixed
from nacz.models.ensemble import default_spec as ensemble_spec, hidden_size_of, probe_kind
from nacz.models.mixed import MixedEnsemble
from test_models_mixed import (SMALL_V, assert_symmetric, drive, probs_digest,
                               repetitive_tokens, small_spec)

H = 24  # a small hidden size for the synthetic tests


def lowrank_spec(**kw):
    spec = small_spec(sse=True, hidden=H)
    spec["lowrank"].update(kw)
    return spec


@pytest.mark.parametrize("llm", ["all", "mask", "none", "skip"])
def test_lowrank_is_symmetric_and_valid(llm):
    """Encoder and decoder (one built from the spec's JSON) agree bit for bit, and every
    distribution is positive and sums to 1; rows without the LLM have NaN hidden states
    (drive), which must never be read."""
    tokens = repetitive_tokens(1203, SMALL_V, seed=5)
    probs = assert_symmetric(lowrank_spec(), SMALL_V, tokens, 4, llm=llm)
    assert all(np.all(np.isfinite(p)) for p in probs)


def test_an_untrained_correction_changes_nothing():
    """With both learning rates 0, A stays zero: the probabilities are preset 4's (up to
    the rounding of a different, exact, shift of the exponents)."""
    tokens = repetitive_tokens(900, SMALL_V, seed=6)
    a, _, _ = drive(MixedEnsemble(lowrank_spec(lr=0.0, lr_hidden=0.0), SMALL_V), tokens, 3)
    b, _, _ = drive(MixedEnsemble(small_spec(sse=True), SMALL_V), tokens, 3)
    assert all(np.allclose(x, y, rtol=1e-9, atol=0) for x, y in zip(a, b))
    c, _, _ = drive(MixedEnsemble(lowrank_spec(), SMALL_V), tokens, 3)
    assert any(not np.allclose(x, y, rtol=1e-6, atol=0) for x, y in zip(c, b))


def hidden_context_run(spec, steps=3000, seed=3):
    """Each step one of 4 situations, drawn at random (so no history predicts it), shows
    in the hidden state only; in situation c the next token is t_c 70% of the time.
    The LLM's logits are noise. Returns the code length in bits."""
    rng = np.random.default_rng(seed)
    ens = MixedEnsemble(spec, SMALL_V)
    ens.reset(2)
    centres = rng.standard_normal((4, H)).astype(np.float32)
    favourite = rng.choice(SMALL_V, 4, replace=False)
    bits = 0.0
    for _ in range(steps):
        c = rng.integers(0, 4, 2)
        hidden = centres[c] + 0.1 * rng.standard_normal((2, H)).astype(np.float32)
        logits = (rng.standard_normal((2, SMALL_V)) * 0.3).astype(np.float32)
        y = np.where(rng.random(2) < 0.7, favourite[c],
                     rng.integers(0, SMALL_V, 2)).astype(np.int32)
        p = ens.predict(logits, hidden=hidden if ens.hidden_size else None)
        bits -= float(np.log2(p[np.arange(2), y]).sum())
        ens.update(y)
    return bits


def test_the_correction_learns_what_only_the_hidden_state_knows():
    """The bias head alone can learn that the four favourites are frequent (about 17%
    each); the hidden state tells which one is likely (70%)."""
    without = hidden_context_run(small_spec(sse=True))
    with_lowrank = hidden_context_run(lowrank_spec(lr=0.02))
    assert with_lowrank < 0.85 * without


def test_hidden_states_are_checked():
    ens = MixedEnsemble(lowrank_spec(), SMALL_V)
    ens.reset(2)
    logits = np.zeros((2, SMALL_V), np.float32)
    with pytest.raises(ValueError):
        ens.predict(logits)  # missing
    with pytest.raises(ValueError):
        ens.predict(logits, hidden=np.zeros((2, H + 1), np.float32))
    plain = MixedEnsemble(small_spec(sse=True), SMALL_V)
    plain.reset(2)
    with pytest.raises(ValueError):
        plain.predict(logits, hidden=np.zeros((2, H), np.float32))  # takes none
    # no row with the LLM: no hidden state needed
    ens.predict(None, np.zeros(2, np.bool_))


PRESET_5_DIGEST = "6e00b01d5d7b79345500ed809d2b9d4218cd5715682a70cb9d12355f3ca368c9"


def _preset_5_expansions():
    h = hashlib.sha256()
    for vocab in (600, 49152):
        for n in (1, 993, 4096, 123_457, 10_000_000, 1 << 40):
            for dense in (0, 1):
                for hidden in (1, 576, 640, 16384):
                    full = mixed.expand(mixed.preset_spec(n, dense, preset=5, hidden=hidden),
                                        vocab)
                    h.update(json.dumps(full, sort_keys=True).encode())
    return h.hexdigest()


def test_preset_5_is_frozen_and_is_preset_4_plus_lowrank():
    assert _preset_5_expansions() == PRESET_5_DIGEST
    full = mixed.expand(mixed.preset_spec(1000, 0, preset=5, hidden=576), 600)
    assert full["lowrank"] == lowrank.default_spec(576)
    base = mixed.expand(mixed.preset_spec(1000, 0, preset=4), 600)
    assert {k: v for k, v in full.items() if k != "lowrank"} == base


def test_the_default_preset_follows_the_hidden_size():
    assert mixed.preset_spec(1000)["preset"] == mixed.LATEST_PRESET_NO_HIDDEN
    assert mixed.preset_spec(1000, hidden=576) == {
        "kind": "mixed", "version": 1, "preset": mixed.LATEST_PRESET, "n_tokens": 1000,
        "dense": 0, "hidden": 576}
    spec = ensemble_spec(1000, hidden=576)
    assert hidden_size_of(spec) == 576 and probe_kind(spec)[-1] == 576
    assert hidden_size_of(ensemble_spec(1000)) == 0 and len(probe_kind(ensemble_spec(1000))) == 3
    assert hidden_size_of(ensemble_spec(1000, uses_llm=False, hidden=576)) == 0
    with pytest.raises(ValueError):
        mixed.preset_spec(1000, preset=5)
    with pytest.raises(ValueError):
        mixed.preset_spec(1000, preset=4, hidden=576)


@pytest.mark.parametrize("mutate", [
    lambda s: s.pop("hidden"),
    lambda s: s.update(hidden=0),
    lambda s: s.update(hidden=1 << 20),
    lambda s: s.update(hidden=5.0),
    lambda s: s.update(preset=4),  # preset 4 takes no hidden size
    lambda s: s.update(preset=[5]),
])
def test_bad_compact_preset_5_specs_are_format_errors(mutate):
    spec = mixed.preset_spec(1000, hidden=576)
    mutate(spec)
    with pytest.raises(FormatError):
        MixedEnsemble.from_spec(json.loads(json.dumps(spec)), 49152)


@pytest.mark.parametrize("bad", [
    {"rank": 0}, {"rank": 65}, {"rank": 2.0}, {"lr": -0.1}, {"lr": 2.0},
    {"lr_hidden": 1.5}, {"init": -1.0}, {"seed": -1}, {"min_q": 1.5}, {"hidden": 0},
    {"extra": 1},
])
def test_bad_lowrank_specs_are_format_errors(bad):
    spec = lowrank_spec()
    spec["lowrank"] = dict(spec["lowrank"], **bad)
    with pytest.raises(FormatError):
        MixedEnsemble(json.loads(json.dumps(spec)), SMALL_V)


@pytest.mark.parametrize("mixer", [{"lowrank": 1}, {"lowrank": "x"}, {"lowrank": [1]},
                                   {"preset": 5, "hidden": "576"}, "x", None])
def test_hidden_size_of_a_crafted_spec_is_zero_not_a_crash(mixer):
    # parse_block and the fingerprint's cache key read it before make_ensemble validates
    assert hidden_size_of({"kind": "ensemble", "llm": True, "mixer": mixer, "ssm": None}) == 0


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_non_finite_hidden_state_gives_zero_features(bad):
    h = np.linspace(-1.0, 1.0, 16).astype(np.float32)
    h[3] = bad
    bm = np.ones((4, 16))
    u, z = np.full(16, 7.0), np.full(4, 7.0)
    lowrank.features(bm, h, u, z)
    assert not u.any() and not z.any()
    lowrank.features(bm, np.zeros(16, np.float32), u, z)
    assert not u.any() and not z.any()


def test_the_seeded_start_is_pinned():
    """B's start comes from integer hashing (seeding.uniform): the same on every
    platform and numpy version; pinned because files rely on it."""
    b = lowrank.initial_b(lowrank.default_spec(576), 576)
    assert b.shape == (8, 576)
    assert abs(float(b.std()) - 1.0) < 0.02
    assert hashlib.sha256(b.astype("<f8").tobytes()).hexdigest() == INITIAL_B_DIGEST


INITIAL_B_DIGEST = "60c839852c77a9e8628ce0a08c2689e678824df6e1e4266c46b61e4ee7dfeedc"


def test_golden_probabilities_with_lowrank():
    """The exact probabilities of a fixed run, pinned: any change in what the part
    computes needs a new preset."""
    tokens = repetitive_tokens(900, SMALL_V, seed=9)
    probs = assert_symmetric(lowrank_spec(), SMALL_V, tokens, 3, llm="skip")
    assert probs_digest(probs) == GOLDEN_LOWRANK_DIGEST


GOLDEN_LOWRANK_DIGEST = "b8bfb38c51c8cd234e04ffbeac8a7c2e1f12331b70348d96993cd0c1632fe373"
