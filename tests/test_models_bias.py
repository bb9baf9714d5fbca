"""Bias head: the exact online update and that it learns."""

import numpy as np
import pytest

from nacz.errors import FormatError
from nacz.models.bias import B_MAX, B_MIN, BiasHead, bias_update, validate


def reference_update(b, probs, tokens, lr):
    b = b.copy()
    for p, y in zip(probs, tokens):
        b = np.maximum(b - lr * p, B_MIN)  # the same IEEE operations, elementwise
        b[y] = min(b[y] + lr, B_MAX)
    return b


def test_update_is_exactly_the_gradient_step():
    """Bit-identical to numpy doing the same multiply-then-subtract: a fused
    multiply-add (or any reordering) in the kernel would show here."""
    rng = np.random.default_rng(0)
    V = 1000
    b = rng.standard_normal(V)
    probs = rng.random((3, V))
    probs /= probs.sum(axis=1, keepdims=True)
    tokens = np.array([5, 5, 999], dtype=np.int32)
    want = reference_update(b, probs, tokens, 0.01)
    got = b.copy()
    plain = np.zeros(3)
    bmax = bias_update(got, probs, tokens, 3, 0.01, np.full(3, -1, np.int32), plain, plain,
                       plain, np.ones(3, np.bool_), 0.5)
    assert np.array_equal(got, want)
    assert bmax == want.max()


@pytest.mark.parametrize("y", [4, 9])
def test_split_row_learns_the_model_inside(y):
    """A row whose match split the distribution (p[mt] = ph, the rest (1 - ph) q / (1 -
    q[mt])): the head takes the gradient of q's own code length, q - onehot(y)."""
    rng = np.random.default_rng(1)
    V, mt, ph, lr = 50, 4, 0.9, 0.1
    q = rng.random(V)
    q /= q.sum()
    p = q * (1 - ph) / (1 - q[mt])
    p[mt] = ph
    want = -lr * q
    want[y] += lr
    got = np.zeros(V)
    bmax = bias_update(got, p[None, :], np.array([y], np.int32), 1, 0.0,
                       np.array([mt], np.int32), np.array([ph]),
                       np.array([(1 - q[mt]) / (1 - ph)]), np.array([q[mt]]),
                       np.zeros(1, np.bool_), lr)  # a row without the LLM: lr_free
    assert np.allclose(got, want, rtol=1e-12, atol=1e-15)
    assert bmax >= got.max()


def test_values_stay_clamped():
    b = np.zeros(4)
    probs = np.array([[0.0, 0.0, 0.0, 1.0]])
    for _ in range(200):
        bias_update(b, probs, np.array([0], dtype=np.int32), 1, 0.5,
                    np.array([-1], np.int32), np.zeros(1), np.zeros(1), np.zeros(1),
                    np.ones(1, np.bool_), 0.0)
    assert b[0] == B_MAX and b[3] == B_MIN


def test_head_learns_a_frequent_token():
    head = BiasHead({"lr": 0.05, "lr_free": 0.0, "alpha0": 0.5}, 50)
    probs = np.full((1, 50), 1 / 50)
    for _ in range(100):
        head.update(probs, np.array([7], dtype=np.int32))
    assert np.argmax(head.b) == 7 and head.bmax == head.b[7] > 0
    head.reset()
    assert not head.b.any() and head.bmax == 0.0


@pytest.mark.parametrize("spec", [{}, {"lr": 0.1}, {"lr": -0.1, "lr_free": 0.1},
                                  {"lr": "0.1", "lr_free": 0.1},
                                  {"lr": 0.1, "lr_free": 0.1, "x": 1},
                                  {"lr": float("inf"), "lr_free": 0.1},
                                  {"lr": 0.1, "lr_free": True}, [0.1]])
def test_bad_specs_are_format_errors(spec):
    with pytest.raises(FormatError):
        validate(spec)
