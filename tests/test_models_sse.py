"""The SSE stage (models/sse.py): symmetric, valid, frozen in preset 4, and it learns."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from nacz.errors import FormatError
from nacz.models import mixed, sse
from nacz.models.mixed import MixedEnsemble
from test_models_mixed import (SMALL_V, _preset_expansions, assert_symmetric, probs_digest,
                               repetitive_tokens, small_spec)

PRESET_4_DIGEST = "7b2849a128a6b655fa7467386086c8fd3993291f2a1ab6f7f12807418752c37a"


def sse_spec(**kw):
    return small_spec(sse=True, **kw)


@pytest.mark.parametrize("llm", ["all", "mask", "none", "skip"])
def test_sse_is_symmetric_and_valid(llm):
    """Encoder and decoder (one built from the spec's JSON) agree bit for bit, and every
    distribution is positive and sums to 1, with rows with and without the LLM."""
    tokens = repetitive_tokens(1203, SMALL_V, seed=5)
    assert_symmetric(sse_spec(), SMALL_V, tokens, 4, llm=llm)


def test_sse_changes_only_rows_with_the_llm():
    """Without the LLM there is no candidate: the probabilities equal preset 2's."""
    from test_models_mixed import drive
    tokens = repetitive_tokens(600, SMALL_V, seed=6)
    a, _, _ = drive(MixedEnsemble(sse_spec(), SMALL_V), tokens, 3, llm="none")
    b, _, _ = drive(MixedEnsemble(small_spec(), SMALL_V), tokens, 3, llm="none")
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    c, _, _ = drive(MixedEnsemble(sse_spec(), SMALL_V), tokens, 3, llm="all")
    d, _, _ = drive(MixedEnsemble(small_spec(), SMALL_V), tokens, 3, llm="all")
    assert any(not np.array_equal(x, y) for x, y in zip(c, d))


def overconfident_run(spec, steps=1500, seed=3):
    """An LLM whose favourite token is right half the time while it claims ~0.99:
    code length in bits, and the ensemble."""
    V = SMALL_V
    rng = np.random.default_rng(seed)
    ens = MixedEnsemble(spec, V)
    ens.reset(2)
    bits = 0.0
    for _ in range(steps):
        logits = (rng.standard_normal((2, V)) * 0.5).astype(np.float32)
        top = rng.integers(0, V, 2)
        logits[np.arange(2), top] += 12.0
        y = np.where(rng.random(2) < 0.5, top, rng.integers(0, V, 2)).astype(np.int32)
        p = ens.predict(logits)
        bits -= float(np.log2(p[np.arange(2), y]).sum())
        ens.update(y)
    return bits, ens


def test_sse_learns_the_llm_s_hit_rate():
    """The maps learn that the top token is right about half the time: its probability
    moves from the LLM's ~0.99 towards 0.5 and the code gets shorter than preset 2's
    (the maps alone, weight 1, to see what they learn)."""
    spec = sse_spec()
    spec["sse"]["weight"] = 1.0
    with_sse, ens = overconfident_run(spec)
    without, _ = overconfident_run(small_spec())
    assert with_sse < 0.985 * without
    m = ens.sse
    # the entropy-bucket stage, near the input the LLM gives (stretch(0.99) ~ 4.6)
    k = 0 * (m.points + 1) + int((4.6 + m.range) * m.points / (2 * m.range))
    rates = [m.t[e * (m.points + 1) + k % (m.points + 1)] for e in range(m.n_ent)]
    assert min(rates) < 0.8


def test_preset_4_is_frozen_and_is_preset_2_plus_sse():
    assert _preset_expansions(4) == PRESET_4_DIGEST
    full = mixed.expand(mixed.preset_spec(1000, 0, preset=4), 600)
    assert full["sse"] == sse.default_spec()
    base = mixed.expand(mixed.preset_spec(1000, 0, preset=2), 600)
    assert "sse" not in base
    assert {k: v for k, v in full.items() if k != "sse"} == base


@pytest.mark.parametrize("bad", [
    {"points": 0}, {"range": 0.1}, {"limit": 0}, {"ctx_bits": 21}, {"ctx_bits": 1.5},
    {"weight": 1.5}, {"weight": -0.1}, {"extra": 1},
])
def test_bad_sse_specs_are_format_errors(bad):
    spec = sse_spec()
    spec["sse"] = dict(spec["sse"], **bad)
    with pytest.raises(FormatError):
        MixedEnsemble(json.loads(json.dumps(spec)), SMALL_V)


def test_golden_probabilities_with_sse():
    """The exact probabilities of a fixed SSE run, pinned (as test_golden_probabilities
    pins preset 2's): any change in what the stage computes needs a new preset."""
    tokens = repetitive_tokens(900, SMALL_V, seed=9)
    probs = assert_symmetric(sse_spec(), SMALL_V, tokens, 3, llm="skip")
    assert probs_digest(probs) == GOLDEN_SSE_DIGEST
    assert math.isfinite(sum(float(p.sum()) for p in probs))


GOLDEN_SSE_DIGEST = "70a3d1d24d471d5002f8b254bd9c84612406fd89b765d9ad225aae0236b91500"
