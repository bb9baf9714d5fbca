"""Format version 2's parameters: shared ones in the file header, a block's own in the block.

A version-1 parameter block (``params.NeuralParams.to_dict``) splits into the settings all
blocks share (model, backend and its fingerprint, tokenizer, context, coder, level) and a
block's own (its stream lengths, its ensemble -- which depends on its token count -- and
its token alphabet). The decoder merges the two back and validates the result exactly as
a version-1 file's (``params.parse``), so both versions share every check.
"""

from __future__ import annotations

from . import params as hparams
from .errors import FormatError
from .frozen import PROBE_PRESET_HIDDEN
from .models.ensemble import probe_kind
from .models.lowrank import MAX_HIDDEN

BLOCK_KEYS = ("streams", "ensemble")
PROBE = "probe"  # shared: the ensemble kind the file's fingerprint was computed with


def split(full: dict, probe: dict | None = None) -> tuple[dict, dict]:
    """A version-1 parameter dict -> (shared, block). ``probe``: the ensemble spec whose
    kind the shared fingerprint covers."""
    shared = {k: v for k, v in full.items() if k not in BLOCK_KEYS}
    block = {k: full[k] for k in BLOCK_KEYS}
    tok = dict(shared["tokenizer"])
    if "alphabet" in tok:
        block["alphabet"] = tok.pop("alphabet")
    shared["tokenizer"] = tok
    if probe is not None:
        shared[PROBE] = list(probe_kind(probe))
    return shared, block


def merge(shared: dict, block: dict) -> dict:
    """(shared, block) -> a version-1 parameter dict, for ``params.parse``."""
    if not isinstance(shared, dict) or not isinstance(block, dict):
        raise FormatError("corrupt header (parameters are not objects)")
    if set(block) - {"alphabet"} != set(BLOCK_KEYS):
        raise FormatError("corrupt block (bad block parameters)")
    full = {k: v for k, v in shared.items() if k != PROBE}
    full.update({k: block[k] for k in BLOCK_KEYS})
    if "alphabet" in block:
        tok = full.get("tokenizer")
        if not isinstance(tok, dict) or "alphabet" in tok:
            raise FormatError("corrupt header (bad 'tokenizer' parameters)")
        full["tokenizer"] = {**tok, "alphabet": block["alphabet"]}
    return full


def probe_spec_of(shared: dict) -> dict:
    """The ensemble spec (its kind is all that matters) the file's fingerprint covers."""
    kind = shared.get(PROBE)
    if kind == ["llm"]:
        return {"kind": "llm"}
    if (isinstance(kind, list) and len(kind) == 3 and kind[0] == "ensemble"
            and all(isinstance(x, bool) for x in kind[1:])):
        return {"kind": "ensemble", "llm": kind[1], "ssm": {} if kind[2] else None}
    if (isinstance(kind, list) and len(kind) == 4 and kind[0] == "ensemble"
            and all(isinstance(x, bool) for x in kind[1:3]) and kind[1]
            and type(kind[3]) is int and 1 <= kind[3] <= MAX_HIDDEN):
        # an ensemble that reads the LLM's hidden states, of this size (preset 5 on)
        return {"kind": "ensemble", "llm": True, "ssm": {} if kind[2] else None,
                "mixer": {"preset": PROBE_PRESET_HIDDEN, "hidden": kind[3]}}
    raise FormatError("corrupt header (bad 'probe')")


def parse_shared(shared: dict) -> hparams.NeuralParams:
    """The shared settings, validated as a version-1 block would be (with a placeholder
    stream table and ensemble: those are each block's own)."""
    if not isinstance(shared, dict) or PROBE not in shared:
        raise FormatError("corrupt header (shared parameters)")
    probe_spec_of(shared)
    p = hparams.parse(merge(shared, {"streams": [1], "ensemble": {"kind": "llm"}}))
    if p.backend_name == "llama.cpp" and p.weight_buffers is None:
        # Version 2 came after the weight buffers were recorded: none is no legacy file.
        raise FormatError("corrupt header (weight buffers not recorded)")
    return p


def parse_block(shared: dict, block: dict) -> hparams.NeuralParams:
    """A block's full settings; its ensemble must be of a kind the file's fingerprint
    covers (the probe's kind, or the same without the SSM)."""
    p = hparams.parse(merge(shared, block))
    probe = tuple(probe_kind(probe_spec_of(shared)))
    kind = tuple(probe_kind(p.ensemble))
    allowed = {probe}
    if probe[0] == "ensemble":
        allowed.add((probe[0], probe[1], False) + probe[3:])
    if kind not in allowed:
        raise FormatError("corrupt block (ensemble not covered by the file's fingerprint)")
    return p
