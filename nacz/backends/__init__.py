"""Which LLM backend computes the logits: llama.cpp (CPU, the default) or torch (CPU or
CUDA, optional). Building one, what it writes into the header, and refusing -- before any
decoding -- a file whose backend or device this installation lacks.

torch stays an optional import: nothing here imports it unless a torch backend is asked
for, so nacz without torch works exactly as before and refuses torch files in one line.
"""

from __future__ import annotations

import json

from ..errors import FormatError, MismatchError, NaczError

LLAMA, TORCH = "llama", "torch"  # the --backend choices
CHOICES = (LLAMA, TORCH)
DEVICES = ("cpu", "cuda")
# The torch backend's compute dtypes (--dtype): float32 is the reference and the default;
# the half-width ones are for GPUs' speed, and their files decode only with the same dtype.
DTYPES = ("float32", "bfloat16", "float16")
DEFAULT_DTYPE = "float32"
TORCH_NAME = "torch"  # the backend name a torch file records (llama.cpp files: "llama.cpp")
INSTALL_HINT = "pip install 'nacz[gpu]'"


def torch_module():
    """nacz.backends.torch, or a NaczError that says how to get torch."""
    try:
        from . import torch as torch_backend
    except ImportError as e:
        raise NaczError(f"the torch backend needs torch ({e}): {INSTALL_HINT}") from None
    return torch_backend


def require(choice: str, device: str, dtype: str = DEFAULT_DTYPE) -> None:
    """Refuse a backend choice this installation cannot run (before any work)."""
    if choice not in CHOICES or device not in DEVICES or dtype not in DTYPES:
        raise NaczError(f"unknown backend {choice!r} on {device!r} in {dtype!r}")
    if choice == LLAMA:
        if device != "cpu":
            raise NaczError("--device cuda needs --backend torch")
        if dtype != DEFAULT_DTYPE:
            raise NaczError(f"--dtype {dtype} needs --backend torch")
        return
    tb = torch_module()
    if device == "cuda" and not tb.cuda_available():
        raise NaczError(f"--device cuda: torch {tb.torch.__version__} sees no CUDA device here")


def make(rt, choice: str, device: str, window: int, slide: int, sinks: int, threads: int,
         dtype: str = DEFAULT_DTYPE):
    """The backend for a runtime (model + tokenizer) and a choice from CHOICES/DEVICES
    (and DTYPES, torch only)."""
    require(choice, device, dtype)
    if choice == LLAMA:
        return rt.backend(window, slide, sinks, threads)
    tb = torch_module()
    return tb.TorchBackend(tb.load_weights(rt.path, device, dtype), window, slide, sinks,
                           rt.model.start_token)


def choice_of(backend_name: str) -> str:
    return TORCH if backend_name == TORCH_NAME else LLAMA


def describe(backend) -> dict | None:
    """The header's device description (torch only: versions, device, dtype)."""
    return backend.describe() if backend is not None and backend.name == TORCH_NAME else None


def version(backend) -> str:
    if backend is not None and backend.name == TORCH_NAME:
        return torch_module().torch.__version__
    from . import llama
    return llama.version()


def cache_key(backend) -> tuple:
    """What a fingerprint depends on besides the ensemble (for caching it)."""
    d = describe(backend)
    return (backend.name, backend.window, backend.slide, backend.sinks,
            json.dumps(d, sort_keys=True) if d else getattr(backend, "threads", None))


def fingerprint_salt(backend) -> bytes:
    """Bytes hashed into the fingerprint before the probe's logits: the torch backend's
    description (llama.cpp files hash the logits alone, as they always did)."""
    d = describe(backend)
    return json.dumps(d, sort_keys=True).encode() if d else b""


def _needs(d: dict) -> str:
    if d.get("device") == "cuda":
        return (f"torch {d.get('torch')} on CUDA in {d.get('dtype')}: {d.get('gpu')}, compute "
                f"capability {d.get('capability')}, CUDA {d.get('cuda')}, cuBLAS "
                f"{d.get('cublas')}")
    return (f"torch {d.get('torch')} on the CPU in {d.get('dtype')} ({d.get('cpu')}, "
            f"{d.get('threads')} threads)")


def check(backend_name: str, device: dict | None) -> None:
    """Refuse a file whose backend or device is missing here, naming what it needs."""
    from . import llama

    if backend_name in (llama.NAME, "none"):
        if device is not None:
            raise FormatError(f"corrupt header (device description on a {backend_name} file)")
        return
    if backend_name != TORCH_NAME:
        raise MismatchError(f"file needs backend {backend_name!r}, which this nacz lacks")
    if not device:
        raise FormatError("corrupt header (a torch file without its device description)")
    try:
        tb = torch_module()
    except NaczError:
        raise MismatchError(f"file needs the torch backend ({_needs(device)}); torch is not "
                            f"installed here: {INSTALL_HINT}") from None
    where = device.get("device")
    if where not in DEVICES:
        raise MismatchError(f"file needs torch on device {where!r}, which nacz does not know")
    if device.get("dtype") not in DTYPES:
        raise MismatchError(f"file needs torch in dtype {device.get('dtype')!r}, which nacz "
                            "does not know")
    if where == "cuda" and not tb.cuda_available():
        raise MismatchError(f"file needs {_needs(device)}; this machine has no CUDA device")
    here = tb.describe(where, device["dtype"])
    diffs = [f"{k} {device.get(k)} (here {here.get(k)})" for k in sorted(set(device) | set(here))
             if device.get(k) != here.get(k)]
    if diffs:
        raise MismatchError(f"file needs {_needs(device)}; differs here: " + ", ".join(diffs))
