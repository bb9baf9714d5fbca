"""Golden files (formats/golden/): written once per format version, decoded forever.

Files without neural segments, and LLM-free ones, must decode everywhere. A file coded with
the LLM must decode to its original exactly wherever its logits can be reproduced; it may
be refused (with a mismatch error, before decoding) only for a reason named here: it was
made with another llama-cpp-python version or a ggml build of another SIMD level. A change
of nacz's own backend settings therefore fails these tests instead of skipping them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from nacz import blockparams, codec, container, stream
from nacz.backends import llama
from nacz.errors import MismatchError
from nacz.params import parse

GOLDEN = Path(__file__).resolve().parent.parent / "formats" / "golden"
NAMES = sorted(p.stem for p in GOLDEN.glob("*.nc"))


def _params(name: str):
    packed = (GOLDEN / f"{name}.nc").read_bytes()
    if stream.is_blocks_file(packed[:5]):  # format version 2: the header's shared settings
        import io
        shared = stream.read_layout(io.BytesIO(packed), len(packed))[0].params
        return None if shared is None else blockparams.parse_shared(shared)
    c = container.read(packed)
    return None if c.params is None else parse(c.params)


def refusal_allowed(p) -> str | None:
    """The named reason this machine may refuse a golden file made with the LLM, or None
    when it must decode it."""
    if p is None or p.backend_name == codec.NO_BACKEND:
        return None
    if p.backend_version != llama.version():
        return f"made with llama-cpp-python {p.backend_version}, {llama.version()} here"
    theirs, ours = llama.simd_level(p.cpu), llama.simd_level(llama.cpu_features())
    if theirs != ours:
        return f"made with a {theirs} ggml build, {ours} here"
    return None


def test_golden_set_is_complete():
    assert {"empty", "binary", "text", "text-llm-free", "text-llm-free-alphabet",
            "hybrid", "text-plain-buffers", "text-plain-buffers-2-streams",
            "blocks-empty", "blocks-binary", "blocks-llm-free", "blocks-text",
            "blocks-text-preset-4", "blocks-text-preset-5",
            "blocks-text-preset-5-ssm"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_golden_file_decodes(name):
    packed = (GOLDEN / f"{name}.nc").read_bytes()
    original = (GOLDEN / f"{name}.bin").read_bytes()
    try:
        out = codec.decompress(packed)
    except MismatchError as e:
        reason = refusal_allowed(_params(name))
        if reason is None:
            raise  # same llama.cpp version and SIMD level: it must decode here
        pytest.skip(f"{reason}: {e}")
    assert out == original


def test_todays_backend_settings_have_golden_files_that_decode_here():
    """At least one golden file records the weight buffers nacz writes today, and on a
    machine that can reproduce it, it decodes (the parametrised test checks every file)."""
    todays = [n for n in NAMES if (p := _params(n)) is not None
              and p.weight_buffers == llama.WEIGHT_BUFFERS]
    assert todays, "no golden file records today's weight buffers: run make_golden.py"
    here = [n for n in todays if refusal_allowed(_params(n)) is None]
    if not here:
        pytest.skip("; ".join(f"{n}: {refusal_allowed(_params(n))}" for n in todays))
    for name in here:
        assert codec.decompress((GOLDEN / f"{name}.nc").read_bytes()) == \
            (GOLDEN / f"{name}.bin").read_bytes()


def test_the_preset_5_golden_file_reads_the_hidden_state():
    """The golden file of preset 5 pins the low-rank part and a fingerprint over the
    probe's hidden states: its shared settings must say so."""
    import io
    for name, ssm in (("blocks-text-preset-5", False), ("blocks-text-preset-5-ssm", True)):
        packed = (GOLDEN / f"{name}.nc").read_bytes()
        shared = stream.read_layout(io.BytesIO(packed), len(packed))[0].params
        assert shared["probe"] == ["ensemble", True, ssm, 576], name
