"""The torch backend: the same GGUF model as llama.cpp, run by torch on the CPU or a GPU.

It reads the GGUF file itself (the ``gguf`` package's reader and dequantisers), keeps the
weights in float32 (or, as a recorded setting, bfloat16/float16) and runs one batched
decode step for all active streams at a time, with a preallocated KV cache per stream
whose sliding window behaves as the llama.cpp backend's: keep the ``sinks`` first cells,
drop ``slide`` cells after them, move the rest down and rotate their cached keys back by
``slide`` positions (llama.cpp's "K shift").

Determinism: every batch shape is a function of the header (active streams and position
at each step follow from the stream lengths, window and slide), deterministic algorithms
only, no TF32, a fixed cuBLAS workspace, a fixed CPU thread count. What the results then
still depend on (torch, CUDA and cuBLAS versions, the device, the dtype) is described by
``describe()`` and goes into the header and the fingerprint.

Rotary pairs: llama.cpp's converter permutes the rows of the Q and K weights of Llama
models so that the two halves of each rotary pair sit next to each other; llama.cpp then
rotates adjacent pairs ("normal" rope). Rotating adjacent pairs of the permuted rows is the
same computation as HF's rotate-half on the original rows, so the rows stay as stored.
"""

from __future__ import annotations

import importlib.metadata
import os
import threading
from pathlib import Path

import numpy as np

# cuBLAS picks reduction strategies by workspace unless this is fixed before CUDA starts.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import torch  # noqa: E402  (after the cuBLAS setting)
import torch.nn.functional as F  # noqa: E402

from ..errors import NaczError  # noqa: E402

NAME = "torch"
# Compute dtypes by name (backends.DTYPES; recorded in the header). float32 is the
# reference; in the others the weights, activations and KV cache are half-width while the
# RMS norms' statistics stay in float32, and logits and hidden states leave as float32.
TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE = "float32"  # the default
# Intra-op threads on the CPU: a constant, never the machine's core count, because a
# matrix product's reduction may be split differently with another count. One thread: on
# a busy 2-core machine a step of 3 streams took 252 ms with 1 thread, 1.9-7.0 s with 2
# (OpenMP barriers), and the CPU path exists for tests and small inputs; GPUs are for speed.
CPU_THREADS = 1
ARCHITECTURES = ("llama",)

_lock = threading.Lock()
_weights_cache: dict[tuple, "TorchWeights"] = {}


def _deterministic() -> None:
    torch.use_deterministic_algorithms(True)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = False
    torch.set_float32_matmul_precision("highest")


def cuda_available() -> bool:
    return torch.cuda.is_available()


def _cublas_version() -> str:
    for dist in ("nvidia-cublas-cu13", "nvidia-cublas-cu12", "nvidia-cublas-cu11",
                 "nvidia-cublas"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "unknown"


def describe(device: str, dtype: str = DTYPE) -> dict:
    """What the logits depend on besides the model, as short strings (header + fingerprint)."""
    d = {"torch": torch.__version__, "device": device, "dtype": dtype}
    if device == "cpu":
        d["cpu"] = torch.backends.cpu.get_cpu_capability()
        d["threads"] = str(CPU_THREADS)
    else:
        cap = torch.cuda.get_device_capability(0)
        d.update(cuda=str(torch.version.cuda), cublas=_cublas_version(),
                 gpu=torch.cuda.get_device_name(0), capability=f"{cap[0]}.{cap[1]}")
    return d


# -- the model --------------------------------------------------------------------------
class TorchWeights:
    """A Llama-family GGUF's hyper-parameters and weights on one device, in one dtype."""

    def __init__(self, path: Path, device: str, dtype: str = DTYPE):
        if dtype not in TORCH_DTYPES:
            raise NaczError(f"unknown torch dtype {dtype!r}")
        self.dtype_name, self.dtype = dtype, TORCH_DTYPES[dtype]
        try:
            from gguf import GGUFReader
            from gguf.quants import dequantize
        except ImportError as e:
            raise NaczError(f"the torch backend needs the gguf package ({e}): "
                            "pip install 'nacz[gpu]'") from None
        try:
            reader = GGUFReader(str(path))
        except Exception as e:  # noqa: BLE001 - any parse failure is a bad model file
            raise NaczError(f"cannot read model {Path(path).name} with gguf: {e}") from None
        meta = {k: f.contents() for k, f in reader.fields.items()
                if not k.startswith("tokenizer.ggml.")}
        arch = meta.get("general.architecture")
        if arch not in ARCHITECTURES:
            raise NaczError(f"the torch backend runs {', '.join(ARCHITECTURES)} models, "
                            f"not {arch!r}")

        def hp(key, default=None):
            v = meta.get(f"{arch}.{key}", default)
            if v is None:
                raise NaczError(f"model {Path(path).name} lacks {arch}.{key}")
            return v

        self.n_layers = int(hp("block_count"))
        self.d_model = int(hp("embedding_length"))
        self.n_heads = int(hp("attention.head_count"))
        self.n_kv_heads = int(hp("attention.head_count_kv", self.n_heads))
        self.head_dim = self.d_model // self.n_heads
        self.rope_dims = int(hp("rope.dimension_count", self.head_dim))
        self.rope_base = float(hp("rope.freq_base", 10000.0))
        self.eps = float(hp("attention.layer_norm_rms_epsilon"))
        if self.rope_dims != self.head_dim or self.n_heads % self.n_kv_heads:
            raise NaczError("the torch backend needs full-width rope and whole GQA groups")
        self.device = torch.device(device)

        def tensor(name: str):
            for t in reader.tensors:
                if t.name == name:
                    arr = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
                    return torch.from_numpy(np.array(arr, dtype=np.float32, order="C")).to(
                        self.device, dtype=self.dtype)
            return None

        def need(name: str):
            t = tensor(name)
            if t is None:
                raise NaczError(f"model {Path(path).name} lacks tensor {name}")
            return t

        self.embed = need("token_embd.weight")  # (V, d)
        self.vocab_size = int(self.embed.shape[0])
        out = tensor("output.weight")
        self.output = self.embed if out is None else out  # tied embeddings (SmolLM2)
        self.output_norm = need("output_norm.weight")
        self.layers = []
        for i in range(self.n_layers):
            p = f"blk.{i}."
            self.layers.append({k: need(p + k + ".weight") for k in (
                "attn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
                "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")})


def load_weights(path: Path, device: str, dtype: str = DTYPE) -> TorchWeights:
    """Weights of one model on one device in one dtype, loaded once per process (the last
    one kept)."""
    st = Path(path).stat()
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns, device, dtype)
    with _lock:
        if key not in _weights_cache:
            _weights_cache.clear()
            _weights_cache[key] = TorchWeights(Path(path), device, dtype)
        return _weights_cache[key]


def _rope_table(positions: np.ndarray, dims: int, base: float) -> tuple[np.ndarray, ...]:
    """cos and sin of each position's rotary angles, (P, dims/2) float32, computed as
    llama.cpp does (the angle multiplied down by a float32 ratio pair after pair)."""
    ratio = np.float32(np.power(np.float32(base), np.float32(-2.0 / dims)))
    theta = positions.astype(np.float32).copy()
    cos = np.empty((len(positions), dims // 2), dtype=np.float32)
    sin = np.empty_like(cos)
    for i in range(dims // 2):
        cos[:, i] = np.cos(theta.astype(np.float64)).astype(np.float32)
        sin[:, i] = np.sin(theta.astype(np.float64)).astype(np.float32)
        theta = (theta * ratio).astype(np.float32)
    return cos, sin


def _rotate(x, cos, sin):
    """Rotate adjacent pairs of the last dimension of ``x`` by the given angles."""
    pairs = x.unflatten(-1, (-1, 2))
    x0, x1 = pairs[..., 0], pairs[..., 1]
    return torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).flatten(-2)


def _rms_norm(x, weight, eps: float):
    # the statistic in float32 whatever the dtype (.float() and .to() are no-ops in float32)
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * weight


# -- the backend ------------------------------------------------------------------------
class TorchBackend:
    """Batched multi-stream next-token logits with a per-stream sliding KV window."""

    name = NAME

    def __init__(self, weights: TorchWeights, window: int, slide: int, sinks: int,
                 start_token: int):
        if not 0 < slide <= window - sinks - 1 or sinks < 1:
            raise ValueError("need 1 <= sinks and 0 < slide < window - sinks")
        _deterministic()
        if weights.device.type == "cpu":
            torch.set_num_threads(CPU_THREADS)
        self.w = weights
        self.device = weights.device
        self.vocab_size = weights.vocab_size
        self.window, self.slide, self.sinks = window, slide, sinks
        self.start_token = start_token
        cos, sin = _rope_table(np.arange(window), weights.head_dim, weights.rope_base)
        dt = weights.dtype
        self._cos = torch.from_numpy(cos).to(self.device, dtype=dt)
        self._sin = torch.from_numpy(sin).to(self.device, dtype=dt)
        cos, sin = _rope_table(np.array([-slide]), weights.head_dim, weights.rope_base)
        self._shift_cos = torch.from_numpy(cos[0]).to(self.device, dtype=dt)
        self._shift_sin = torch.from_numpy(sin[0]).to(self.device, dtype=dt)
        self._k = self._v = None
        self._n_streams = 0

    def describe(self) -> dict:
        return describe(self.device.type, self.w.dtype_name)

    @property
    def hidden_size(self) -> int:
        return self.w.d_model

    def reset(self, n_streams: int, hidden: bool = False) -> None:
        """A zeroed KV cache of ``window`` cells per stream and layer; with ``hidden``,
        each step also keeps the final hidden states (after the output norm)."""
        w = self.w
        n_streams = max(1, n_streams)
        self._k = self._v = None  # free the old cache first
        shape = (w.n_layers, n_streams, w.n_kv_heads, self.window, w.head_dim)
        try:
            self._k = torch.zeros(shape, dtype=w.dtype, device=self.device)
            self._v = torch.zeros(shape, dtype=w.dtype, device=self.device)
        except RuntimeError as e:  # torch.OutOfMemoryError on CUDA, a RuntimeError on CPU
            self._k = self._v = None
            gib = 2 * w.embed.element_size() * np.prod(shape, dtype=np.float64) / 2**30
            raise NaczError(f"the KV cache of {n_streams} streams x window {self.window} "
                            f"({gib:.1f} GiB) does not fit in {self.device.type} memory "
                            "here; compress with fewer --streams or a smaller --block-size "
                            "or --window") from e
        self._n_streams = n_streams
        self._n_past = 0
        self._logits = np.empty((n_streams, self.vocab_size), dtype=np.float32)
        self._hidden = (np.zeros((n_streams, w.d_model), dtype=np.float32) if hidden
                        else None)

    @torch.inference_mode()
    def step(self, tokens: np.ndarray, want: np.ndarray | None = None) -> np.ndarray:
        """Feed ``tokens[i]`` to stream i (i < A); return the (A, V) logits that follow.
        Rows where ``want`` is False are not computed and hold stale values."""
        active = len(tokens)
        if not 0 < active <= self._n_streams:
            raise ValueError("bad number of active streams")
        if self._n_past >= self.window:
            self._slide(active)
        w, pos = self.w, self._n_past
        n = pos + 1
        groups = w.n_heads // w.n_kv_heads
        cos, sin = self._cos[pos], self._sin[pos]
        x = w.embed[torch.from_numpy(np.asarray(tokens, dtype=np.int64)).to(self.device)]
        for li, layer in enumerate(w.layers):
            h = _rms_norm(x, layer["attn_norm"], w.eps)
            q = _rotate(F.linear(h, layer["attn_q"]).view(active, w.n_heads, w.head_dim),
                        cos, sin)
            k = _rotate(F.linear(h, layer["attn_k"]).view(active, w.n_kv_heads, w.head_dim),
                        cos, sin)
            v = F.linear(h, layer["attn_v"]).view(active, w.n_kv_heads, w.head_dim)
            self._k[li, :active, :, pos] = k
            self._v[li, :active, :, pos] = v
            keys = self._k[li, :active, :, :n]  # (A, Hkv, n, D)
            values = self._v[li, :active, :, :n]
            # query head h reads KV head h // groups
            q = q.view(active, w.n_kv_heads, groups, w.head_dim)
            scores = torch.matmul(q, keys.transpose(-1, -2)) * (1.0 / w.head_dim ** 0.5)
            att = torch.matmul(torch.softmax(scores, dim=-1), values)
            x = x + F.linear(att.reshape(active, w.d_model), layer["attn_output"])
            h = _rms_norm(x, layer["ffn_norm"], w.eps)
            x = x + F.linear(F.silu(F.linear(h, layer["ffn_gate"])) *
                             F.linear(h, layer["ffn_up"]), layer["ffn_down"])
        self._n_past += 1
        out = self._logits[:active]
        rows = np.arange(active) if want is None else np.flatnonzero(want)
        if rows.size:
            h = _rms_norm(x[torch.from_numpy(rows).to(self.device)], w.output_norm, w.eps)
            out[rows] = F.linear(h, w.output).float().cpu().numpy()
            if self._hidden is not None:
                self._hidden[rows] = h.float().cpu().numpy()
        return out

    def hidden_states(self, active: int) -> np.ndarray:
        """The (active, hidden_size) final hidden states of the last step (rows it did
        not compute are stale); only after ``reset(..., hidden=True)``."""
        if self._hidden is None:
            raise RuntimeError("hidden states were not asked for at reset")
        return self._hidden[:active]

    def _slide(self, active: int) -> None:
        """Drop ``slide`` cells after the sinks in every active stream, move the rest down
        and rotate their keys back by ``slide`` positions, as llama.cpp's seq_rm + seq_add."""
        lo, hi, end = self.sinks, self.sinks + self.slide, self.window
        keep = end - hi
        for cache in (self._k, self._v):
            cache[:, :active, :, lo:lo + keep] = cache[:, :active, :, hi:end].clone()
        kept = self._k[:, :active, :, lo:lo + keep]
        kept.copy_(_rotate(kept, self._shift_cos, self._shift_sin))
        self._n_past -= self.slide

    # -- fingerprint --------------------------------------------------------------------
    def probe(self, probe_tokens: np.ndarray) -> np.ndarray:
        """Logits after each token of a fixed probe, fed one at a time to one stream."""
        return self.probe_states(probe_tokens, hidden=False)[0]

    def probe_states(self, probe_tokens: np.ndarray, hidden: bool) -> tuple:
        """(logits, hidden states or None) after each token of the probe."""
        self.reset(1, hidden=hidden)
        rows, states = [], []
        prev = self.start_token
        for tok in probe_tokens.tolist():
            rows.append(self.step(np.array([prev], dtype=np.int32)).copy())
            if hidden:
                states.append(self.hidden_states(1).copy())
            prev = tok
        self._k = self._v = None
        return np.concatenate(rows), (np.concatenate(states) if hidden else None)
