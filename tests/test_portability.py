"""A native and a portable llama.cpp build must not silently decode each other's files.

llama.cpp built for this CPU (GGML_NATIVE, AVX-512 here) and a portable build (no
AVX-512) run different kernels, so their logits -- and the backend fingerprint -- differ.
A file compressed by one is refused by the other with a message naming the SIMD level,
and each build still round-trips its own files.

Needs a second, portable build of llama-cpp-python installed with ``pip --target``; point
``NACZ_PORTABLE_LLAMA`` at that directory (.ci/run builds it into .ci-portable/):

    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" \
        pip install --no-deps --no-cache-dir --target .ci-portable llama-cpp-python==0.3.36
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nacz import blockfile

from conftest import assert_one_line_error, os_text, run_nacz

PORTABLE = os.environ.get("NACZ_PORTABLE_LLAMA", "")

pytestmark = pytest.mark.skipif(
    not (PORTABLE and (Path(PORTABLE) / "llama_cpp").is_dir()),
    reason="set NACZ_PORTABLE_LLAMA to a portable llama-cpp-python build (see module doc)")


def _portable_env() -> dict:
    return {"PYTHONPATH": os.pathsep.join(
        [PORTABLE] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}


def _features(env: dict | None) -> set[str]:
    code = "from nacz.backends import llama; print(llama.cpu_features())"
    full = dict(os.environ, **(env or {}))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, env=full,
                         check=True, timeout=120).stdout.decode().strip()
    return set(out.split(","))


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("port") / "prose.txt"
    path.write_bytes(os_text("GPL-3", 1500))
    return path


def test_the_portable_build_really_is_another_build():
    native, portable = _features(None), _features(_portable_env())
    assert "AVX512" in native - portable, (native, portable)


@pytest.mark.parametrize("direction", ["native->portable", "portable->native"])
def test_files_do_not_cross_builds_silently(tmp_path, sample, direction):
    enc_env, dec_env = ((None, _portable_env()) if direction == "native->portable"
                        else (_portable_env(), None))
    packed = tmp_path / "prose.txt.nc"
    r = run_nacz("compress", "-c", sample, env=enc_env)
    assert r.returncode == 0, r.stderr
    packed.write_bytes(r.stdout)
    # coded by the LLM (the file header holds the shared neural settings): its build matters
    assert blockfile.read_header(blockfile.Source(io.BytesIO(r.stdout))).params is not None
    # The build that wrote it reads it back ...
    r = run_nacz("decompress", "-c", packed, env=enc_env)
    assert r.returncode == 0 and r.stdout == sample.read_bytes(), r.stderr
    # ... the other refuses it before decoding, naming what differs and what to do.
    r = run_nacz("decompress", "-c", packed, env=dec_env)
    assert_one_line_error(r)
    err = r.stderr.decode()
    # The builds differ in SIMD level (AVX-512 native, AVX2 portable), not in weight buffers
    # or version: the message names exactly that, not every CPU flag.
    assert "fingerprint mismatch" in err and "SIMD level of the ggml build" in err
    assert "AVX512" in err and "AVX2" in err and "weight buffers" not in err
    assert "portability" in err and r.stdout == b""
