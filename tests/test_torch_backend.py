"""The torch backend on the CPU: the real SmolLM2 GGUF, real torch (CPU build), the real
coder. Round trips, identical bytes, agreement with llama.cpp, and refusals before decoding."""

from __future__ import annotations

import copy
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (pip install 'nacz[gpu]')")

from nacz import backends, codec, container  # noqa: E402
from nacz.backends import llama  # noqa: E402
from nacz.errors import FormatError, MismatchError, NaczError  # noqa: E402
from nacz.resources import default_model_path  # noqa: E402

from conftest import assert_one_line_error, os_text, run_nacz  # noqa: E402

TEXT = os_text("GPL-3", 700)  # short: the torch backend does ~10 steps/s on 2 busy cores
# The original Q4_1 file, given explicitly, so every test here shares one set of weights.
MODEL = str(default_model_path())
OPTS = dict(model=MODEL, streams=3, window=64, slide=32)  # slides several times


@pytest.fixture(scope="module")
def torch_backend(runtime):
    return backends.make(runtime, backends.TORCH, "cpu", 64, 32, 4, threads=2)


def _run(backend, streams, steps, start):
    backend.reset(len(streams))
    outs = []
    prev = np.array([start] * len(streams), dtype=np.int32)
    for t in range(steps):
        outs.append(backend.step(prev).copy())
        prev = np.array([s[t] for s in streams], dtype=np.int32)
    return outs


def test_reruns_are_identical_and_wanted_rows_alone_are_computed(runtime, torch_backend):
    toks = runtime.tokenizer.tokenize(b"Once upon a time there was a little compressor.")
    streams = [toks, toks[::-1].copy(), toks]
    a = _run(torch_backend, streams, 6, runtime.model.start_token)
    b = _run(torch_backend, streams, 6, runtime.model.start_token)
    assert a[0].shape == (3, runtime.model.vocab_size) and a[0].dtype == np.float32
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    # Skipping a row's output leaves the other rows' logits exactly as they were.
    torch_backend.reset(3)
    prev = np.array([runtime.model.start_token] * 3, dtype=np.int32)
    out = torch_backend.step(prev, np.array([True, False, True]))
    assert np.array_equal(out[0], a[0][0]) and np.array_equal(out[2], a[0][2])


def _ideal_bits(logits: np.ndarray, tokens: np.ndarray) -> float:
    lg = logits.astype(np.float64)
    top = lg.max(axis=1, keepdims=True)
    lse = top[:, 0] + np.log(np.exp(lg - top).sum(axis=1))
    return float((lse - lg[np.arange(len(tokens)), tokens]).sum() / np.log(2))


def test_agrees_with_llama_cpp_through_slides(runtime, torch_backend):
    """Same model, same window (64, slide 32, 4 sinks: each stream slides 4 times), same
    tokens: top-1 agreement and ideal code length (bits/byte) within 1%."""
    data = os_text("GPL-3", 3000)
    toks = runtime.tokenizer.tokenize(data)
    n = len(toks) // 3
    streams = [toks[i * n:(i + 1) * n] for i in range(3)]
    start = runtime.model.start_token
    got = {}
    for name, be in (("llama", runtime.backend(64, 32, 4, threads=2)),
                     ("torch", torch_backend)):
        got[name] = np.stack(_run(be, streams, n, start), axis=1)  # (streams, steps, V)
    truth = np.stack(streams)
    top1 = np.mean(got["llama"].argmax(-1) == got["torch"].argmax(-1))
    bits = {k: sum(_ideal_bits(v[s], truth[s]) for s in range(3)) for k, v in got.items()}
    n_bytes = len(runtime.tokenizer.detokenize(toks[:3 * n]))
    bpb = {k: v / n_bytes for k, v in bits.items()}
    print(f"top-1 agreement {top1:.4f}, bits/byte llama {bpb['llama']:.4f} "
          f"torch {bpb['torch']:.4f} over {3 * n} tokens")
    assert top1 >= 0.9
    assert abs(bpb["torch"] / bpb["llama"] - 1) < 0.01


def test_hidden_states_agree_with_llama_cpp(runtime, torch_backend):
    """The final hidden states (what the low-rank correction reads) of both backends:
    the same size and nearly the same values (cosine > 0.99 on every row)."""
    toks = runtime.tokenizer.tokenize(os_text("GPL-3", 400))[:40]
    start = runtime.model.start_token
    states = {}
    for name, be in (("llama", runtime.backend(64, 32, 4, threads=2)),
                     ("torch", torch_backend)):
        be.reset(1, hidden=True)
        prev, rows = start, []
        for tok in toks.tolist():
            be.step(np.array([prev], dtype=np.int32))
            rows.append(be.hidden_states(1)[0].astype(np.float64))
            prev = tok
        states[name] = np.stack(rows)
    a, b = states["llama"], states["torch"]
    assert a.shape == b.shape == (len(toks), torch_backend.hidden_size)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.99


def test_codec_round_trip_identical_bytes():
    opts = codec.Options(backend="torch", **OPTS)
    a = codec.compress(TEXT, opts)
    b = codec.compress(TEXT, codec.Options(backend="torch", threads=1, **OPTS))
    assert a == b  # nacz's --threads never reaches torch's fixed thread count
    p = codec.inspect(a).params
    assert p["backend"]["name"] == "torch"
    assert p["backend"]["device"]["device"] == "cpu"
    assert p["backend"]["device"]["torch"] == torch.__version__
    assert [s.kind_name for s in codec.inspect(a).segments] == ["neural"]
    assert codec.decompress(a) == TEXT


def _retagged(data: bytes, name: str, device: dict | None) -> bytes:
    """The same container with another backend named in its header."""
    c = container.read(data)
    c.params = copy.deepcopy(c.params)
    c.params["backend"]["name"] = name
    c.params["backend"].pop("device", None)
    if device is not None:
        c.params["backend"]["device"] = device
    return container.write(c)


@pytest.fixture(scope="module")
def files():
    return {"torch": codec.compress(TEXT, codec.Options(backend="torch", **OPTS)),
            "llama": codec.compress(TEXT, codec.Options(**OPTS))}


def test_each_backend_refuses_the_others_files(files):
    # A torch file handed to llama.cpp, and a llama.cpp file handed to torch: both are
    # refused by the fingerprint, before a single token is decoded.
    with pytest.raises(MismatchError, match="fingerprint mismatch"):
        codec.decompress(_retagged(files["torch"], llama.NAME, None))
    cpu = backends.torch_module().describe("cpu")
    with pytest.raises(MismatchError, match="fingerprint mismatch"):
        codec.decompress(_retagged(files["llama"], backends.TORCH_NAME, cpu))
    # A file from another torch setup is refused by its description, naming the difference.
    other = dict(cpu, torch="0.0.1")
    with pytest.raises(MismatchError, match=r"torch 0\.0\.1 \(here"):
        codec.decompress(_retagged(files["torch"], backends.TORCH_NAME, other))
    with pytest.raises(FormatError, match="without its device description"):
        codec.decompress(_retagged(files["torch"], backends.TORCH_NAME, None))


GPU_FILE = {"torch": "2.13.0+cu128", "device": "cuda", "dtype": "float32", "cuda": "12.8",
            "cublas": "12.8.4.1", "gpu": "NVIDIA H200", "capability": "9.0"}


def test_cli_round_trip_and_cuda_file_refused_in_one_line(tmp_path, files):
    src = tmp_path / "in.txt"
    src.write_bytes(TEXT[:300])
    r = run_nacz("compress", "-k", "--backend", "torch", "--model", MODEL, "--streams", "2",
                 "--window", "64", src)
    assert r.returncode == 0, r.stderr
    r = run_nacz("decompress", "-c", "--model", MODEL, f"{src}.nc")
    assert r.returncode == 0 and r.stdout == TEXT[:300], r.stderr
    gpu = tmp_path / "gpu.nc"
    gpu.write_bytes(_retagged(files["torch"], backends.TORCH_NAME, GPU_FILE))
    r = run_nacz("decompress", "-c", "--model", MODEL, gpu)
    assert_one_line_error(r)
    err = r.stderr.decode()
    assert "NVIDIA H200" in err and "CUDA 12.8" in err and "capability 9.0" in err
    if not torch.cuda.is_available():
        assert "no CUDA device" in err
        r = run_nacz("compress", "-c", "--backend", "torch", "--device", "cuda", src)
        assert_one_line_error(r)
        assert "no CUDA device" in r.stderr.decode()


# nacz as installed without torch: torch's import fails in this interpreter.
WITHOUT_TORCH = "import sys; sys.modules['torch'] = None; from nacz.cli import entry; entry()"


def _nacz_without_torch(*args, input=None):
    return subprocess.run([sys.executable, "-c", WITHOUT_TORCH, *map(str, args)],
                          input=input, capture_output=True, timeout=300)


def test_without_torch_nacz_works_and_refuses_torch_files(tmp_path, files):
    tf = tmp_path / "t.nc"
    tf.write_bytes(files["torch"])
    r = _nacz_without_torch("decompress", "-c", "--model", MODEL, tf)
    assert_one_line_error(r)
    assert "pip install 'nacz[gpu]'" in r.stderr.decode()
    assert "torch 2." in r.stderr.decode()  # names the torch the file needs
    r = _nacz_without_torch("compress", "-c", "--backend", "torch", input=TEXT[:200])
    assert_one_line_error(r)
    assert "pip install 'nacz[gpu]'" in r.stderr.decode()
    # llama.cpp files decode as before.
    lf = tmp_path / "l.nc"
    lf.write_bytes(files["llama"])
    r = _nacz_without_torch("decompress", "-c", "--model", MODEL, lf)
    assert r.returncode == 0 and r.stdout == TEXT, r.stderr


def test_backend_choices_are_checked():
    with pytest.raises(NaczError, match="needs --backend torch"):
        codec.compress(TEXT, codec.Options(device="cuda", **OPTS))
    with pytest.raises(NaczError, match="needs an LLM"):
        codec.compress(TEXT, codec.Options(backend="torch", model="none"))
    r = run_nacz("compress", "-c", "--device", "cuda", input=b"x")
    assert r.returncode == 1 and "needs --backend torch" in r.stderr.decode()


def test_cuda_files_may_ask_for_more_streams_than_cpu_files(files):
    from nacz import params
    d = copy.deepcopy(container.read(files["torch"]).params)
    d["streams"] = [4] * 1024  # 1,024 streams x window 64: more than llama.cpp's 256
    with pytest.raises(FormatError, match="stream table"):
        params.parse(d)
    d["backend"]["device"] = dict(GPU_FILE)
    assert len(params.parse(d).streams) == 1024
    d["context"]["window"] = 4096  # 1,024 x 4,096 cells: past the CUDA limit too
    with pytest.raises(FormatError, match="KV cache limit"):
        params.parse(d)


def test_a_kv_cache_that_does_not_fit_is_a_one_line_error(torch_backend):
    # 2^24 streams x window 64: ~25 TB of float32 KV cache; the allocator refuses it
    with pytest.raises(NaczError, match=r"KV cache of 16777216 streams x window 64 .* GiB"):
        torch_backend.reset(1 << 24)
    torch_backend.reset(2)  # the backend stays usable
    assert torch_backend.step(np.array([1, 2], dtype=np.int32)).shape[0] == 2


def test_half_width_dtype_is_a_recorded_setting(files):
    """--dtype bfloat16: the same round trip, identical bytes twice, the dtype in the header
    and in the fingerprint (a file retagged as float32 is refused before decoding)."""
    opts = codec.Options(backend="torch", dtype="bfloat16", **OPTS)
    a = codec.compress(TEXT, opts)
    assert codec.compress(TEXT, opts) == a
    assert codec.inspect(a).params["backend"]["device"]["dtype"] == "bfloat16"
    assert codec.decompress(a) == TEXT
    # a model of about the same quality as float32 (a broken cast would not be)
    assert len(a) < 1.05 * len(files["torch"])
    as_f32 = dict(codec.inspect(a).params["backend"]["device"], dtype="float32")
    with pytest.raises(MismatchError, match="fingerprint mismatch"):
        codec.decompress(_retagged(a, backends.TORCH_NAME, as_f32))
    unknown = dict(as_f32, dtype="float8")
    with pytest.raises(MismatchError, match="dtype 'float8'"):
        codec.decompress(_retagged(a, backends.TORCH_NAME, unknown))


def test_float16_logits_stay_close_to_float32(runtime):
    toks = runtime.tokenizer.tokenize(TEXT[:400])
    top = {}
    for dtype in ("float32", "float16"):
        b = backends.make(runtime, backends.TORCH, "cpu", 64, 32, 4, threads=1, dtype=dtype)
        assert b.describe()["dtype"] == dtype
        b.reset(1)
        prev, rows = runtime.model.start_token, []
        for tok in toks.tolist():
            out = b.step(np.array([prev], dtype=np.int32))
            assert out.dtype == np.float32 and np.isfinite(out).all()
            rows.append(int(out[0].argmax()))
            prev = tok
        top[dtype] = np.array(rows)
    assert (top["float32"] == top["float16"]).mean() > 0.9


def test_dtype_needs_the_torch_backend():
    with pytest.raises(NaczError, match="--dtype bfloat16 needs --backend torch"):
        codec.compress(TEXT, codec.Options(dtype="bfloat16", **OPTS))
    r = run_nacz("compress", "-c", "--dtype", "float16", input=b"x")
    assert r.returncode != 0 and "needs --backend torch" in r.stderr.decode()
