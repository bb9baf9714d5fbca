"""Rows of a step predicted on several threads give the same bits as on one."""

from __future__ import annotations

import numba
import numpy as np
import pytest

from nacz.models import mixed
from nacz.models.mixed import MixedEnsemble
from test_models_mixed import SMALL_V, drive, repetitive_tokens, small_spec


@pytest.fixture
def threads():
    """Sets the ensemble's thread count for the test; back to one afterwards."""
    yield mixed.use_threads
    mixed.use_threads(1)


@pytest.mark.parametrize("llm", ["all", "mask", "none", "skip"])
@pytest.mark.parametrize("parts", [{}, {"sse": True}, {"sse": True, "hidden": 24}],
                         ids=["preset-2", "sse", "sse+lowrank"])
def test_parallel_rows_are_bit_identical(threads, llm, parts):
    """Every step's probabilities (and so every later update) are identical with one
    thread and with several lanes, also with more lanes than rows at the end (A shrinks),
    rows without the LLM, the SSE split and the low-rank correction (scratch per lane)."""
    tokens = repetitive_tokens(1503, SMALL_V, seed=11)
    threads(1)
    one, _, _ = drive(MixedEnsemble(small_spec(**parts), SMALL_V), tokens, 5, llm=llm)
    threads(numba.config.NUMBA_NUM_THREADS)
    ens = MixedEnsemble(small_spec(**parts), SMALL_V)
    many, _, _ = drive(ens, tokens, 5, llm=llm)
    if numba.config.NUMBA_NUM_THREADS > 1:
        assert ens._lanes > 1  # the parallel kernel ran
    assert len(one) == len(many)
    for a, b in zip(one, many):
        assert np.array_equal(a, b)


def test_parallel_rows_with_dense_inputs(threads):
    tokens = repetitive_tokens(800, SMALL_V, seed=12)
    threads(1)
    one, _, _ = drive(MixedEnsemble(small_spec(n_dense=1), SMALL_V), tokens, 4, llm="mask",
                      dense=1)
    threads(2)
    many, _, _ = drive(MixedEnsemble(small_spec(n_dense=1), SMALL_V), tokens, 4, llm="mask",
                       dense=1)
    assert all(np.array_equal(a, b) for a, b in zip(one, many))
