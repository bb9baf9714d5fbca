"""numba's on-disk cache, made safe for kernels that call kernels of other files.

numba invalidates a cached kernel only when the kernel's *own* file changes, yet a
cached kernel contains every kernel it calls: the fused mixed kernels call across
ngram.py, match.py, bias.py, mixer.py, sse.py, lowrank.py and mixed_kernels.py, and the
SSM's forward/backward kernels call fmath.py. A change in one file could thus leave
stale code in another file's cached kernels, i.e. silently different probabilities.
Every module with such kernels therefore ends with ``refresh_kernel_cache(globals())``,
which drops its cached kernels whenever the digest of all these sources differs from the
one recorded when they were cached.

This uses numba's private ``Dispatcher._cache`` (``cache_path``, ``flush``): numba is
pinned in pyproject.toml, and tests/test_models_mixer.py checks that it still works.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from numba.core.dispatcher import Dispatcher

_MODELS = Path(__file__).resolve().parent
KERNEL_SOURCES = ("../kernels.py", "ngram.py", "match.py", "bias.py", "mixer.py",
                  "sse.py", "lowrank.py", "mixed_kernels.py", "ssm/fmath.py", "ssm/forward.py",
                  "ssm/backward.py")


def sources_digest() -> str:
    h = hashlib.sha256()
    for name in KERNEL_SOURCES:
        try:
            h.update((_MODELS / name).read_bytes())
        except OSError:
            h.update(b"missing " + name.encode())
    return h.hexdigest()


def refresh_kernel_cache(namespace: dict) -> None:
    module = namespace["__name__"]
    kernels = [k for k in namespace.values()
               if isinstance(k, Dispatcher) and k.py_func.__module__ == module
               and k._cache is not None and hasattr(k._cache, "cache_path")]
    if not kernels:
        return
    stamp = Path(kernels[0]._cache.cache_path) / f"{module.rsplit('.', 1)[-1]}.nacz-sources"
    digest = sources_digest()
    try:
        if stamp.read_text() == digest:
            return
    except OSError:
        pass
    for k in kernels:
        k._cache.flush()
    try:
        stamp.write_text(digest)
    except OSError:
        pass
