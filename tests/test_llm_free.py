"""LLM-free mode (-1 / --model none): SSM + n-grams + match + mixer on the default model's
tokenizer, with no weights evaluated. Every byte value survives; the C and numba SSM
kernels write and read the same files."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import os_text, run_nacz
from nacz import codec
from nacz.container import KIND_NEURAL
from nacz.params import parse
from nacz.segment import is_text_safe

FREE = codec.Options(model=codec.LLM_FREE)


@pytest.fixture(scope="module")
def prose() -> bytes:
    return os_text("GPL-3", 1200)


def _neural_bytes(packed: bytes) -> int:
    return sum(s.orig_len for s in codec.inspect(packed).segments if s.kind == KIND_NEURAL)


def _licence_prose(n: int) -> bytes:
    """n bytes of distinct English (Debian's licence texts), ASCII only; else skip."""
    from conftest import LICENSES

    data = b"".join(p.read_bytes() for p in sorted(LICENSES.glob("*")) if p.is_file())
    data = bytes(b for b in data if 32 <= b < 127 or b == 10)
    if len(data) < n:
        pytest.skip("needs /usr/share/common-licenses (distinct prose, not zstd-friendly)")
    return data[:n]


def test_every_byte_value_round_trips_inside_text():
    """Every byte value 0..255, three times in a row between pieces of ASCII prose, round
    trips exactly. The 98 the tokenizer can carry stay in the neural segment; the others
    go to the binary stream, exactly those 3 bytes each."""
    safe = [v for v in range(256) if is_text_safe(bytes([v]) * 3)]
    unsafe = [v for v in range(256) if v not in safe]
    assert len(safe) == 98  # tab, LF, CR and printable ASCII
    text = _licence_prose(300 * 99 + 120 * 159 + 900 * 9)

    def woven(values, piece, start):
        chunks = [text[start + i * piece:start + (i + 1) * piece] for i in range(len(values) + 1)]
        return b"".join(c + bytes([v]) * 3 for c, v in zip(chunks, values)) + chunks[-1]

    data = woven(safe, 300, 0)  # all 98 safe values: one neural segment
    packed = codec.compress(data, FREE)
    assert codec.decompress(packed, FREE) == data and _neural_bytes(packed) == len(data)
    data = woven(unsafe, 120, 300 * 99)  # all 158 others (so many runs: may go all-binary)
    assert codec.decompress(codec.compress(data, FREE), FREE) == data
    some = [0x00, 0x1b, 0x7f, 0x80, 0xc3, 0xed, 0xf5, 0xff]  # C0, DEL, lone/overlong/invalid
    data = woven(some, 900, 300 * 99 + 120 * 159)
    packed = codec.compress(data, FREE)
    assert codec.decompress(packed, FREE) == data
    assert _neural_bytes(packed) == len(data) - 3 * len(some)


def test_all_byte_values_and_all_pairs_round_trip():
    data = bytes(range(256)) * 8 + bytes((i * 7 + j) % 256 for i in range(256) for j in (0, 1))
    assert codec.decompress(codec.compress(data, FREE), FREE) == data


def test_llm_free_files_name_no_model_weights(prose):
    packed = codec.compress(prose, codec.Options(level=1))
    p = parse(codec.inspect(packed).params)
    assert p.backend_name == "none" and p.level == 1
    assert codec.decompress(packed) == prose  # no flags needed to decode


def test_level_and_model_choose_each_others_settings(prose):
    """--model none at the default level runs -1's settings; -1 with a model named runs
    the LLM with -2's (one LLM stream would be slow)."""
    from nacz.resources import resolve_model_path

    p = parse(codec.inspect(codec.compress(prose, FREE)).params)
    assert p.backend_name == "none" and p.level == 1 and len(p.streams) == 1
    data = prose[:300]
    packed = codec.compress(data, codec.Options(level=1, model=resolve_model_path(None)))
    p = parse(codec.inspect(packed).params)
    assert p.backend_name != "none" and p.level == 2 and p.window == 384
    assert codec.decompress(packed) == data


@pytest.mark.parametrize("enc,dec", [("c", "numba"), ("numba", "c")])
def test_c_and_numba_kernels_read_each_others_files(tmp_path, prose, enc, dec):
    from nacz import native

    if not native.c_available():
        pytest.skip("C SSM library not built here")
    src = tmp_path / "prose.txt"
    src.write_bytes(prose)
    a = run_nacz("compress", "-1", "-c", src, env={"NACZ_SSM_IMPL": enc})
    b = run_nacz("compress", "-1", "-c", src, env={"NACZ_SSM_IMPL": dec})
    assert a.returncode == 0 and b.returncode == 0
    assert a.stdout == b.stdout  # the same bits from either implementation
    packed = tmp_path / "prose.txt.nc"
    packed.write_bytes(a.stdout)
    r = run_nacz("decompress", "-c", packed, env={"NACZ_SSM_IMPL": dec})
    assert r.returncode == 0 and r.stdout == prose, r.stderr


text_like = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=400)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(text_like.map(lambda s: (s * 3).encode()), st.binary(max_size=600)))
def test_property_round_trip_llm_free(data):
    assert codec.decompress(codec.compress(data, FREE), FREE) == data
