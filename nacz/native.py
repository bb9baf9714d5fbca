"""The C SSM kernels (csrc/ssm.c): find, build and load the library, and call it.

``CKernels`` is the C kernel set of the SSM's kernel protocol (nacz/models/ssm/kernels.py,
where ``select`` chooses between it and the numba twins); the library is checked against
the state layout of nacz/models/ssm_layout.py, which imports nothing from the model, so
there is no import circle between this module and nacz.models.

The C library is built by setup.py (an optional extension: where no C compiler exists the
install still succeeds and numba is used). Both implementations give bit-identical results
(tests/test_ssm_twins.py), so which one runs never changes a compressed file -- only speed.

``NACZ_SSM_IMPL=numba`` (or ``c``) in the environment forces a choice.
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import os
import shutil
import subprocess
from pathlib import Path

from .cflags import CFLAGS
from .models.ssm_layout import DIM_NAMES

_HERE = Path(__file__).resolve().parent
LIB_STEM = "_ssm_native"  # setup.py builds nacz/_ssm_native<EXT_SUFFIX>
ABI_VERSION = 1
CSRC = _HERE.parent / "csrc" / "ssm.c"

_lib = None  # the active C library (ctypes.CDLL) or None
_lib_path: str | None = None
_load_error: str | None = None


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    i64, vp, dbl = ctypes.c_int64, ctypes.c_void_p, ctypes.c_double
    lib.ssm_abi_version.restype = ctypes.c_int
    lib.ssm_abi_version.argtypes = []
    lib.ssm_dim_names.restype = ctypes.c_char_p
    lib.ssm_dim_names.argtypes = []
    lib.ssm_refresh.restype = None
    lib.ssm_refresh.argtypes = [vp, vp, vp]
    for fn in (lib.ssm_vlog, lib.ssm_vexp):
        fn.restype = None
        fn.argtypes = [i64, vp, vp]
    lib.ssm_step.restype = None
    lib.ssm_step.argtypes = [i64, i64, i64] + [vp] * 11
    lib.ssm_logprobs.restype = None
    lib.ssm_logprobs.argtypes = [i64, i64] + [vp] * 8 + [i64]
    lib.ssm_train.restype = dbl
    lib.ssm_train.argtypes = [i64, i64] + [vp] * 20
    lib.ssm_adam.restype = None
    lib.ssm_adam.argtypes = [vp, i64, vp, i64] + [vp] * 14
    return lib


def open_c_library(path: str | os.PathLike) -> ctypes.CDLL:
    """Load and check a build of csrc/ssm.c (without making it the active one)."""
    lib = _bind(ctypes.CDLL(str(path)))
    if lib.ssm_abi_version() != ABI_VERSION:
        raise OSError(f"{path}: SSM kernel ABI {lib.ssm_abi_version()} != {ABI_VERSION}")
    if lib.ssm_dim_names().decode().split(",") != list(DIM_NAMES):
        raise OSError(f"{path}: SSM kernel layout differs from nacz/models/ssm_layout.py")
    return lib


def load_c_library(path: str | os.PathLike) -> ctypes.CDLL:
    """Load and check a build of csrc/ssm.c; it becomes the active C library."""
    global _lib, _lib_path, _load_error
    lib = open_c_library(path)
    _lib, _lib_path, _load_error = lib, str(path), None
    return lib


def bundled_library_path() -> Path | None:
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        p = _HERE / (LIB_STEM + suffix)
        if p.is_file():
            return p
    return None


def _autoload() -> None:
    global _load_error
    if _lib is not None or _load_error is not None:
        return
    p = bundled_library_path()
    if p is None:
        _load_error = "not built"
        return
    try:
        load_c_library(p)
    except (OSError, AttributeError) as e:
        _load_error = str(e)


def c_available() -> bool:
    _autoload()
    return _lib is not None


def c_library_path() -> str | None:
    _autoload()
    return _lib_path


def ssm_impl() -> str:
    """The SSM implementation used by default: "c" when the C library is loaded, else
    "numba" (``NACZ_SSM_IMPL`` overrides)."""
    forced = os.environ.get("NACZ_SSM_IMPL", "").strip().lower()
    if forced in ("numba", "c"):
        return forced
    return "c" if c_available() else "numba"


def find_compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")


def compile_c(outdir: str | os.PathLike, cc: str | None = None, extra: tuple = (),
              name: str = "libnacz_ssm") -> Path:
    """Compile csrc/ssm.c into ``outdir`` with the required flags (tests, benchmarks,
    development); returns the library path. Raises OSError if there is no compiler."""
    cc = cc or find_compiler()
    if not cc:
        raise OSError("no C compiler found")
    out = Path(outdir) / (name + (".dll" if os.name == "nt" else ".so"))
    cmd = [cc, *CFLAGS, *extra, "-shared", "-o", str(out), str(CSRC), "-lm"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise OSError(f"compiling {CSRC} failed:\n{r.stderr}")
    return out


class CKernels:
    """ctypes calls into csrc/ssm.c; the twin of models.ssm.NumbaKernels (same calls)."""

    name = "c"

    def __init__(self, lib: ctypes.CDLL | None = None):
        if lib is None:
            _autoload()
            if _lib is None:
                raise RuntimeError(f"the C SSM kernels are not available ({_load_error})")
            lib = _lib
        self.lib = lib

    def step(self, b, A, pos):
        p = b.ptrs
        self.lib.ssm_step(A, b.S, pos, p["inputs"], p["dims"], p["P"], p["An"], p["emb"],
                          p["conv"], p["ssm"], p["hf"], p["act1"], p["dA1"], p["tmp1"])

    def logprobs(self, b, A, K):
        p = b.ptrs
        self.lib.ssm_logprobs(A, K, p["dims"], p["Whf"], p["pr"], p["hf"], p["Lon"],
                              p["Lscr"], p["type_of"], p["out"], b.out.shape[1])

    def train(self, b, a):
        p = b.ptrs
        return self.lib.ssm_train(a, b.S, p["dims"], p["inputs"], p["tgt"], p["Kt"],
                                  p["conv0"], p["ssm0"], p["P"], p["An"], p["emb"], p["Whf"],
                                  p["pr"], p["gP"], p["gWh"], p["gemb"], p["act"], p["xs"],
                                  p["hs"],
                                  p["dAs"], p["Lb"], p["bw"])

    def adam(self, b, K, rows, hp):
        p = b.ptrs
        assert rows.dtype == "int32" and rows.flags.c_contiguous and hp is b.hp
        self.lib.ssm_adam(p["dims"], K, rows.__array_interface__["data"][0], rows.shape[0],
                          p["hp"], p["P"], p["gP"], p["mP"], p["vP"], p["Whf"], p["gWh"],
                          p["mWh"], p["vWh"], p["emb"], p["gemb"], p["memb"], p["vemb"],
                          p["An"])

    def refresh(self, b):
        p = b.ptrs
        self.lib.ssm_refresh(p["dims"], p["P"], p["An"])

    def _vmap(self, fn, x):
        import numpy as np

        x = np.ascontiguousarray(x, dtype=np.float32)
        out = np.empty_like(x)
        fn(x.shape[0], x.__array_interface__["data"][0], out.__array_interface__["data"][0])
        return out

    def vlog(self, x):
        return self._vmap(self.lib.ssm_vlog, x)

    def vexp(self, x):
        return self._vmap(self.lib.ssm_vexp, x)
