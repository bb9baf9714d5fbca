"""The SSM's spec: every parameter that changes a probability, and its validation."""

from __future__ import annotations

from ... import frozen
from ...validation import SSM as check
from ..ssm_layout import Layout

KIND = "ssm"
VERSION = 1

# name: (type, lo, hi) -- ints are inclusive ranges, floats are lo < x <= hi unless noted
_INT_KEYS = {
    "version": (1, 1),
    "d_model": (4, 128),
    "d_state": (1, 64),
    "expand": (1, 4),
    "d_conv": (1, 8),
    "n_layers": (1, 4),
    "dt_rank": (1, 32),
    "chunk": (2, 128),
    "boost_steps": (0, 1 << 40),
    "early_passes": (1, 8),
    "early_steps": (0, 1 << 40),
    "count_prior": (0, 1),
    "seed": (0, (1 << 63) - 1),
}
_FLOAT_KEYS = {  # lo < x <= hi
    "lr": (0.0, 1.0),
    "beta1": (-1e-300, 0.999999),  # 0 <= beta1 < 1
    "beta2": (-1e-300, 0.999999999),
    "eps": (0.0, 1.0),
    "clip": (0.0, 1e6),
    "boost": (0.999999, 100.0),  # boost >= 1
}
# training workspace bound (float32 elements) so a hostile header cannot allocate much
_MAX_WORK = 1 << 24


def default_spec() -> dict:
    return {
        "kind": KIND, "version": VERSION,
        "d_model": 32, "d_state": 16, "expand": 2, "d_conv": 4, "n_layers": 2, "dt_rank": 2,
        "chunk": 32, "lr": 0.003, "beta1": 0.8, "beta2": 0.99, "eps": 1e-3, "clip": 1.0,
        "boost": 3.0, "boost_steps": 1000, "early_passes": 2, "early_steps": 64,
        "count_prior": 1,
        "seed": frozen.SSM_SEED,
    }


def validate_spec(spec: object) -> dict:
    """A normalised copy of ``spec`` (all keys present, right types, in range); else a
    FormatError."""
    d = check.obj(spec, "ssm", {"kind"} | set(_INT_KEYS) | set(_FLOAT_KEYS))
    if d["kind"] != KIND:
        raise check.error(f"kind {d['kind']!r:.40}, expected {KIND!r}")
    out = {}
    for k in default_spec():  # canonical key order
        if k == "kind":
            out[k] = KIND
        elif k in _INT_KEYS:
            out[k] = check.integer(d[k], k, *_INT_KEYS[k])
        else:
            out[k] = check.number(d[k], k, *_FLOAT_KEYS[k], lo_open=True)
    if out["d_model"] % 4:
        raise check.error("d_model must be a multiple of 4")
    lay = Layout(out, 2, 1)
    if lay.work_elems() > _MAX_WORK:
        raise check.error("sizes too large")
    return out
