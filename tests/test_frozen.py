"""Pins of what the format freezes (nacz/frozen.py): a change here is a format change."""

from __future__ import annotations

import hashlib
import json

from nacz import codec, frozen, params
from nacz.backends import llama
from nacz.models import ensemble, ssm


def test_probe_is_frozen():
    assert hashlib.sha256(frozen.PROBE_TEXT).hexdigest() == \
        "af668d94032c72abc4f8ad4e77de00f0ee3a0a1ea0cb313a53db359d229cf6b3"
    assert frozen.PROBE_PRESET == 2
    assert frozen.PROBE_PRESET_HIDDEN == 5
    # the modules that use them take them from frozen.py, not from a copy of their own
    assert llama.PROBE_TEXT is frozen.PROBE_TEXT
    assert ensemble.PROBE_PRESET is frozen.PROBE_PRESET
    assert ensemble.PROBE_PRESET_HIDDEN is frozen.PROBE_PRESET_HIDDEN


def test_ssm_default_spec_is_frozen():
    """The probe's ensemble of an SSM file runs the default SSM spec: it is part of the
    fingerprint of every such file."""
    spec = ssm.default_spec()
    assert spec["seed"] == frozen.SSM_SEED == 0x6E61637A
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
    assert digest == "8e1682b3ff96462b3a1980447d4e44af727f24b5c736d408ee89d723c5d8d4f2"


def test_coder_spec_is_frozen():
    assert frozen.CODER_SPEC == {"name": "constriction.range", "precision": 24,
                                 "perfect": False}
    assert codec.CODER_SPEC is frozen.CODER_SPEC


def test_neural_parameter_keys_are_frozen():
    assert frozen.NEURAL_KEYS == {"model", "backend", "tokenizer", "streams", "context",
                                  "ensemble", "coder", "level"}
    assert params.NEURAL_KEYS is frozen.NEURAL_KEYS
