"""Golden files (formats/golden/): written once per format version, decoded forever.

Files without neural segments must decode everywhere. Neural ones must decode to their
original exactly, or, on a machine whose llama.cpp build or CPU computes the model
differently, be refused before decoding with a mismatch error; never anything else.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from nacz import codec, container, stream
from nacz.errors import MismatchError

GOLDEN = Path(__file__).resolve().parent.parent / "formats" / "golden"
NAMES = sorted(p.stem for p in GOLDEN.glob("*.nc"))


def test_golden_set_is_complete():
    assert {"empty", "binary", "text", "text-llm-free", "text-llm-free-alphabet",
            "hybrid", "blocks-empty", "blocks-binary", "blocks-llm-free",
            "blocks-text"} <= set(NAMES)


def _has_neural(packed: bytes) -> bool:
    if stream.is_blocks_file(packed[:5]):  # format version 2: shared settings name a model
        import io
        return stream.read_layout(io.BytesIO(packed), len(packed))[0].params is not None
    return container.read(packed).has_neural


@pytest.mark.parametrize("name", NAMES)
def test_golden_file_decodes(name):
    packed = (GOLDEN / f"{name}.nc").read_bytes()
    original = (GOLDEN / f"{name}.bin").read_bytes()
    if not _has_neural(packed):
        assert codec.decompress(packed) == original
        return
    try:
        out = codec.decompress(packed)
    except MismatchError as e:
        pytest.skip(f"made on a machine whose backend differs from this one: {e}")
    assert out == original
