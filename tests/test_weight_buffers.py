"""llama.cpp's weight buffers: nacz holds the weights in plain CPU buffers, never in the
AMX (or CPU_REPACK) extra buffer types, records that in the header, and covers it with the
fingerprint; files from before it was recorded decode where their logits are reproduced,
or are refused with one line -- never a crash (the AMX path segfaults on two or more
sequences, llama.cpp issue 20824)."""

from __future__ import annotations

import numpy as np
import pytest

from nacz import codec, container, engine
from nacz.backends import llama
from nacz.errors import MismatchError
from nacz.params import parse

from conftest import assert_one_line_error, os_text, run_nacz

TEXT = os_text("Apache-2.0", 500)


def _reseal(raw: bytes, edit) -> bytes:
    c = container.read(raw)
    edit(c.params)
    return container.write(c)


@pytest.fixture(scope="module")
def two_streams() -> bytes:
    """A real multi-stream file (the case that crashed on AMX CPUs)."""
    return codec.compress(TEXT, codec.Options(streams=2, window=64, slide=32))


def test_the_model_is_loaded_without_extra_buffer_types(runtime):
    assert llama.WEIGHT_BUFFERS == "plain"
    assert runtime.model.weight_buffers == "plain"
    # llama.cpp's own load report: the weights sit in the CPU backend's buffers only.
    assert runtime.model.buffer_types, "llama.cpp reported no weight buffer"
    assert not any("AMX" in b or "REPACK" in b for b in runtime.model.buffer_types)


def test_multi_stream_files_record_plain_buffers_and_round_trip(two_streams):
    p = parse(codec.inspect(two_streams).params)
    assert len(p.streams) == 2 and p.weight_buffers == "plain"
    assert codec.decompress(two_streams) == TEXT


def test_the_fingerprint_covers_the_buffer_choice(runtime):
    be = runtime.backend(1024, 512, 4, threads=2)
    assert runtime.fingerprint(be, {"kind": "llm"}) != \
        runtime.fingerprint(be, {"kind": "llm"}, legacy=True)


def test_a_file_claiming_other_buffers_is_refused_before_decoding(two_streams, monkeypatch):
    bad = _reseal(two_streams, lambda p: p["backend"].update(weight_buffers="extra"))
    monkeypatch.setattr(engine, "run", lambda *a, **k: pytest.fail("decoding started"))
    # Where "extra" can run (no AMX) its fingerprint differs; on an AMX CPU it cannot run.
    with pytest.raises(MismatchError, match="weight buffers 'extra' in the file, 'plain'|"
                                            "extra weight buffers, whose AMX path crashes"):
        codec.decompress(bad)
    unknown = _reseal(two_streams, lambda p: p["backend"].update(weight_buffers="amx9"))
    with pytest.raises(MismatchError, match="unknown llama.cpp weight buffers 'amx9'"):
        codec.decompress(unknown)


def _as_legacy(raw: bytes) -> bytes:
    """The same file as nacz 0.1 wrote it: no weight_buffers key, and the fingerprint of
    that time (the probe logits, without the buffer choice)."""
    p = parse(codec.inspect(raw).params)
    rt = codec.load_runtime(None, "q8_0")
    be = rt.backend(p.window, p.slide, p.sinks, threads=2)
    fp = rt.fingerprint(be, p.ensemble, legacy=True)

    def edit(d):
        del d["backend"]["weight_buffers"]
        d["backend"]["fingerprint"] = fp
    return _reseal(raw, edit)


def test_old_files_decode_where_plain_buffers_reproduce_their_logits(two_streams):
    old = _as_legacy(two_streams)
    assert parse(codec.inspect(old).params).weight_buffers is None
    assert codec.decompress(old) == TEXT


def test_old_multi_stream_files_on_an_amx_cpu_are_refused_not_crashed(two_streams,
                                                                      monkeypatch):
    # An old file whose logits plain buffers do not reproduce would need llama.cpp's AMX
    # path, which crashes with two streams: on an AMX CPU nacz must refuse it in one line.
    old = _reseal(_as_legacy(two_streams),
                  lambda d: d["backend"].update(fingerprint="0" * 32))
    monkeypatch.setattr(llama, "has_amx", lambda: True)
    monkeypatch.setattr(engine, "run", lambda *a, **k: pytest.fail("decoding started"))
    with pytest.raises(MismatchError) as e:
        codec.decompress(old)
    msg = str(e.value)
    assert "\n" not in msg and "default weight buffers" in msg and "issue 20824" in msg


def test_allows_only_refuses_extra_buffers_with_streams_on_amx(monkeypatch):
    for amx in (False, True):
        monkeypatch.setattr(llama, "has_amx", lambda amx=amx: amx)
        assert llama.allows("plain", 64) is None
        assert llama.allows("extra", 1) is None
        assert (llama.allows("extra", 2) is not None) == amx


def test_simd_level_names_the_widest_instruction_set():
    assert llama.simd_level("SSE3,SSSE3,AVX,AVX2,FMA,AVX512,AVX512_VNNI,AMX_INT8") == "AVX512"
    assert llama.simd_level("SSE3,SSSE3,AVX,AVX2,F16C,FMA,AVX_VNNI") == "AVX2"
    assert llama.simd_level("") == "none"
    assert llama.simd_level(llama.cpu_features()) != "none"


def test_cli_reports_the_buffer_choice_and_refuses_foreign_files_in_one_line(tmp_path,
                                                                              two_streams):
    r = run_nacz("info", "--backends")
    assert r.returncode == 0 and b"weight buffers  plain" in r.stdout, r.stderr
    bad = tmp_path / "foreign.nc"
    bad.write_bytes(_reseal(two_streams, lambda p: p["backend"].update(
        fingerprint="0" * 32, cpu="SSE3,SSSE3,AVX,AVX2,FMA", version="0.3.99")))
    r = run_nacz("decompress", "-c", bad)
    assert_one_line_error(r)
    err = r.stderr.decode()
    assert "llama-cpp-python 0.3.99 in the file" in err
    assert "SIMD level of the ggml build: AVX2 in the file" in err or \
        llama.simd_level(llama.cpu_features()) == "AVX2"
    assert r.stdout == b""
    info = run_nacz("info", bad)
    assert info.returncode == 0 and b"weight buffers plain, SIMD level AVX2" in info.stdout


def test_probe_logits_do_not_depend_on_the_batch_it_shares(runtime):
    """Two sequences in one llama_decode (the AMX crash's case) give each row the logits it
    gets alone: the plain buffers keep multi-stream decoding exact."""
    toks = runtime.tokenizer.tokenize(b"The quick brown fox jumps over the lazy dog.")
    be = runtime.backend(64, 32, 4, threads=2)
    be.reset(2)
    prev = np.full(2, runtime.model.start_token, dtype=np.int32)
    pair = []
    for t in range(5):
        pair.append(be.step(prev).copy())
        prev = np.array([toks[t], toks[t]], dtype=np.int32)
    for rows in pair:
        assert np.array_equal(rows[0], rows[1])
