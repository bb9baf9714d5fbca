"""The mixed ensemble's spec: defaults, validation, and the frozen presets (the compact
form the header stores). Every parameter that changes a probability is in the spec."""

from __future__ import annotations

from ..validation import ENSEMBLE as check
from . import bias as bias_mod
from . import lowrank as lowrank_mod
from . import match as match_mod
from . import mixer as mixer_mod
from . import ngram as ngram_mod
from . import sse as sse_mod

KIND = "mixed"
VERSION = 1
MAX_VOCAB = 1 << ngram_mod.TOKEN_BITS
DEFAULT_MAX_BYTES = 256 << 20
HARD_MAX_BYTES = 1 << 30  # a header may not make the decoder allocate more tables than this
SPEC_KEYS = {"kind", "version", "ngram", "match", "bias", "mixer", "skip"}
OPTIONAL_KEYS = {"sse", "lowrank"}  # absent in older presets' specs (their expansions are
# frozen): "sse" from preset 4, "lowrank" from preset 5


# -- spec ------------------------------------------------------------------------------
def default_spec(n_tokens: int, vocab_size: int = 49152, *, max_bytes: int = DEFAULT_MAX_BYTES,
                 n_dense: int = 0, ngram: bool = True, match: bool = True,
                 bias: bool = True, skip: bool = True, det_skip: bool = True,
                 sse: bool = False, hidden: int = 0) -> dict:
    """The default ensemble for an input of ``n_tokens`` tokens; the n-gram and match
    tables together stay within ``max_bytes``. ``hidden`` > 0: with the low-rank
    correction from an LLM hidden state of that size."""
    n_tokens = max(1, int(n_tokens))
    if not 1 << 20 <= max_bytes <= HARD_MAX_BYTES:
        raise ValueError("max_bytes out of range")
    spec = {
        "kind": KIND,
        "version": VERSION,
        "ngram": ngram_mod.default_spec(n_tokens, vocab_size,
                                        max_bytes=max_bytes * 5 // 8) if ngram else None,
        "match": match_mod.default_spec(n_tokens, max_bytes=max_bytes * 3 // 8)
        if match else None,
        "bias": bias_mod.default_spec() if bias else None,
        "mixer": mixer_mod.default_spec(n_dense),
        "skip": skip_spec(ngram and det_skip) if (skip and match) else None,
    }
    if sse:
        spec["sse"] = sse_mod.default_spec()
    if hidden:
        spec["lowrank"] = lowrank_mod.default_spec(hidden)
    return spec


def skip_spec(deterministic: bool) -> dict:
    """Skip the LLM where a long match has been right >= 99% of the time at its length;
    with ``deterministic``, also where the highest-order n-gram context present has only
    ever seen one token and such contexts (same order and count) were right >= 99.5% of
    the time (both after enough tries). The second rule is what fires on logs and other
    templated text, whose matches are short."""
    spec = {"min_len": 32, "permille": 990, "min_tries": 256}
    if deterministic:
        spec.update(det_permille=995, det_min_tries=256)
    return spec


SKIP_KEYS = {"min_len", "permille", "min_tries"}
DET_SKIP_KEYS = {"det_permille", "det_min_tries"}  # optional (absent in preset 1)


def validate_skip(spec: object) -> dict:
    keys = SKIP_KEYS | DET_SKIP_KEYS if isinstance(spec, dict) and "det_permille" in spec \
        else SKIP_KEYS
    d = check.obj(spec, "skip", keys)
    out = {"min_len": check.integer(d["min_len"], "min_len", 1, match_mod.MAX_LEN),
           "permille": check.integer(d["permille"], "permille", 0, 1000),
           "min_tries": check.integer(d["min_tries"], "min_tries", 0, 1 << 30)}
    if keys is not SKIP_KEYS:
        out["det_permille"] = check.integer(d["det_permille"], "det_permille", 0, 1000)
        out["det_min_tries"] = check.integer(d["det_min_tries"], "det_min_tries", 0, 1 << 30)
    return out


def validate(spec: object) -> dict:
    """A normalised copy of ``spec``; FormatError on anything unknown or out of range."""
    d = check.obj(spec, "ensemble", SPEC_KEYS | (OPTIONAL_KEYS & set(spec))
                  if isinstance(spec, dict) else SPEC_KEYS)
    if d["kind"] != KIND or type(d["version"]) is not int or d["version"] != VERSION:
        raise check.error("unknown ensemble kind or version")
    out = {"kind": KIND, "version": VERSION,
           "ngram": None if d["ngram"] is None else ngram_mod.validate(d["ngram"]),
           "match": None if d["match"] is None else match_mod.validate(d["match"]),
           "bias": None if d["bias"] is None else bias_mod.validate(d["bias"]),
           "mixer": mixer_mod.validate(d["mixer"]),
           "skip": None if d["skip"] is None else validate_skip(d["skip"])}
    if d.get("sse") is not None:
        out["sse"] = sse_mod.validate(d["sse"])
    if d.get("lowrank") is not None:
        out["lowrank"] = lowrank_mod.validate(d["lowrank"])
    if out["skip"] is not None and out["match"] is None:
        raise check.error("skip needs the match model")
    if out["skip"] is not None and "det_permille" in out["skip"] and out["ngram"] is None:
        raise check.error("deterministic skip needs the n-gram tables")
    if tables_bytes(out) > HARD_MAX_BYTES:
        raise check.error("tables too large")
    return out


# -- presets: the compact form of a spec for the header -----------------------------------
# The full spec is ~600 bytes of JSON (~300 deflated): a real cost for small inputs. A
# preset names a FROZEN function from (n_tokens, vocab size, dense inputs) to the full
# spec; the header then stores {"kind", "version", "preset", "n_tokens", "dense"} (~70
# bytes) and the decoder expands it. A preset's expansion may never change (old files
# name it): tests pin it. Tuning the defaults means adding a preset, not editing one.
PRESET_KEYS = {"kind", "version", "preset", "n_tokens", "dense"}
HIDDEN_PRESETS = {5}  # presets that also name the LLM's hidden size ("hidden", required)
MAX_PRESET_TOKENS = 1 << 48


def _preset_1(n_tokens: int, vocab_size: int, n_dense: int) -> dict:
    return default_spec(n_tokens, vocab_size, n_dense=n_dense, det_skip=False)


def _preset_2(n_tokens: int, vocab_size: int, n_dense: int) -> dict:
    """Preset 1 plus the deterministic-context skip rule."""
    return default_spec(n_tokens, vocab_size, n_dense=n_dense, det_skip=True)


def _preset_3(n_tokens: int, vocab_size: int, n_dense: int) -> dict:
    """Preset 2 with a flat unigram (alpha0 = 10,000 makes log(count + alpha0) nearly
    constant), for the LLM-free mode: there the SSM's own count prior already carries the
    counts, and a sharp unigram next to it cost bits (bench/results/design-figures.md)."""
    spec = default_spec(n_tokens, vocab_size, n_dense=n_dense, det_skip=True)
    spec["bias"]["alpha0"] = 10000.0
    return spec


def _preset_4(n_tokens: int, vocab_size: int, n_dense: int) -> dict:
    """Preset 2 plus the secondary estimation of the LLM's top token (sse.py)."""
    return default_spec(n_tokens, vocab_size, n_dense=n_dense, det_skip=True, sse=True)


def _preset_5(n_tokens: int, vocab_size: int, n_dense: int, hidden: int) -> dict:
    """Preset 4 plus the low-rank correction from the LLM's hidden state (lowrank.py)."""
    return default_spec(n_tokens, vocab_size, n_dense=n_dense, det_skip=True, sse=True,
                        hidden=hidden)


PRESETS = {1: _preset_1, 2: _preset_2, 3: _preset_3, 4: _preset_4, 5: _preset_5}
LATEST_PRESET = 5  # with an LLM (files of every older preset keep decoding) ...
LATEST_PRESET_NO_HIDDEN = 4  # ... and with an LLM whose backend gives no hidden states
LLM_FREE_PRESET = 3


def preset_spec(n_tokens: int, n_dense: int = 0, preset: int | None = None,
                hidden: int = 0) -> dict:
    """The compact spec naming ``preset`` for an input of ``n_tokens`` tokens (``hidden``:
    the LLM's hidden size, for the presets that take it). Default: the latest preset, or
    without a hidden size the latest one that needs none."""
    if preset is None:
        preset = LATEST_PRESET if hidden else LATEST_PRESET_NO_HIDDEN
    if preset not in PRESETS:
        raise ValueError(f"no ensemble preset {preset}")
    if (preset in HIDDEN_PRESETS) != (hidden > 0):
        raise ValueError(f"preset {preset} " + ("needs" if preset in HIDDEN_PRESETS
                                                else "takes no") + " hidden size")
    spec = {"kind": KIND, "version": VERSION, "preset": preset,
            "n_tokens": max(1, int(n_tokens)), "dense": int(n_dense)}
    if hidden:
        spec["hidden"] = int(hidden)
    return spec


def expand(spec: object, vocab_size: int) -> dict:
    """The full, validated spec of a full or compact (preset) spec; FormatError if bad."""
    if isinstance(spec, dict) and "preset" in spec:
        hidden = type(spec["preset"]) is int and spec["preset"] in HIDDEN_PRESETS
        d = check.obj(spec, "ensemble", PRESET_KEYS | ({"hidden"} if hidden else set()))
        if d["kind"] != KIND or type(d["version"]) is not int or d["version"] != VERSION:
            raise check.error("unknown ensemble kind or version")
        if type(d["preset"]) is not int or d["preset"] not in PRESETS:
            raise check.error("unknown ensemble preset")
        n_tokens = check.integer(d["n_tokens"], "n_tokens", 1, MAX_PRESET_TOKENS)
        n_dense = check.integer(d["dense"], "dense", 0, mixer_mod.MAX_DENSE)
        if hidden:
            size = check.integer(d["hidden"], "hidden", 1, lowrank_mod.MAX_HIDDEN)
            spec = PRESETS[d["preset"]](n_tokens, vocab_size, n_dense, size)
        else:
            spec = PRESETS[d["preset"]](n_tokens, vocab_size, n_dense)
    return validate(spec)


def tables_bytes(spec: dict) -> int:
    """Bytes of the n-gram and match tables a (validated) spec allocates."""
    n = 0
    if spec["ngram"] is not None:
        n += ngram_mod.table_bytes(spec["ngram"])
    if spec["match"] is not None:
        n += match_mod.table_bytes(spec["match"])
    return n
