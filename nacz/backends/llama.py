"""The LLM backend: llama.cpp through llama-cpp-python's low-level API.

One llama.cpp sequence per stream; each step feeds one token to every active stream in a
single ``llama_decode`` and returns their logits as one numpy array. Each sequence keeps a
bounded KV window: when full, the oldest tokens after a few "sink" tokens are dropped and
the rest shifted in place (never re-evaluated). Keeping the sinks matters: dropping from
position 0 ruins prediction (docs/design.md).
"""

from __future__ import annotations

import ctypes
import os
import re
import sys
import threading
from pathlib import Path

import numpy as np

from ..errors import NaczError
from ..frozen import PROBE_TEXT  # noqa: F401  (the fingerprint probe, used by codec.py)

# llama.cpp's OpenMP threads busy-wait between steps. Unbounded spinning (OMP_WAIT_POLICY
# =ACTIVE, or libgomp's default of 300,000 spins) is catastrophic when another process wants
# a core: 700 bytes took 130 s with 2 threads instead of 4 s. Never spinning (PASSIVE) costs
# up to 3x when the machine is idle. A bounded spin measured best overall on 2 cores
# (idle: 108 tok/s at 1 stream, 279 at 16; one busy neighbour: 45 and 101).
SPINCOUNT = "30000"


def bound_openmp_spinning(env=os.environ) -> None:
    """Set a bounded OpenMP spin in ``env`` unless the user chose a wait policy. libgomp
    reads it once, when llama.cpp is loaded, so process entry points (the CLI, worker
    processes) call this before anything imports llama_cpp; importing nacz changes no
    environment."""
    if "OMP_WAIT_POLICY" not in env and "GOMP_SPINCOUNT" not in env:
        env["GOMP_SPINCOUNT"] = SPINCOUNT


NAME = "llama.cpp"
POOLING_NONE = 0  # LLAMA_POOLING_TYPE_NONE: per-token hidden states, not pooled
FLASH_ATTN_DISABLED = 0  # fixed, not "auto": the choice changes logits

# Which buffer types llama.cpp may put the weights in. "plain": the CPU backend's own
# buffers only (model params use_extra_bufts = False). "extra": llama.cpp's default, which
# adds the CPU's "extra" buffer types: CPU_REPACK (weights re-laid for the SIMD kernels)
# and, on Intel CPUs with AMX, the AMX buffer type. nacz writes "plain" only:
# - the AMX path crashes (SIGSEGV in ggml_backend_amx_mul_mat) on any llama_decode with two
#   or more sequences (llama.cpp issue 20824), and nacz decodes many streams at once;
# - the buffer type changes logits (one stream, 3 KB of English: 0.6383 bits/byte with AMX
#   + repack, 0.6369 without), so a file made on an AMX machine with it would decode only
#   on AMX machines. With "plain", Intel AMX machines reproduce AMD AVX-512 logits;
# - on x86 llama.cpp repacks neither model nacz runs (shipped Q4_1, derived Q8_0): with
#   extra buffers they still load into CPU_Mapped, with the same logits, so keeping
#   CPU_REPACK would only matter for other models (bench/results/2026-12-04.md).
# "extra" is kept only to decode files written before nacz recorded the choice (whose
# header has no weight_buffers key), where that cannot crash (see allows()).
WEIGHT_BUFFERS = "plain"
LEGACY_WEIGHT_BUFFERS = "extra"
WEIGHT_BUFFER_CHOICES = (WEIGHT_BUFFERS, LEGACY_WEIGHT_BUFFERS)

_init_lock = threading.Lock()
_initialised = False
_verbose = 99  # lowest ggml log level shown (99: none)
_last_shown = False
_log_callback = None  # keep the ctypes callback alive for the process lifetime
_captured: list[str] | None = None  # log text kept while a model loads (buffer types)


def _lib():
    try:
        import llama_cpp
    except ImportError as e:  # pragma: no cover - install problem
        raise NaczError(f"llama-cpp-python is not installed: {e}") from None
    return llama_cpp


def version() -> str:
    return _lib().__version__


def system_info() -> str:
    """llama.cpp's own summary of the CPU features it was built for and detects."""
    _ensure_init()
    return _lib().llama_print_system_info().decode(errors="replace").strip()


def cpu_features() -> str:
    """The features llama.cpp reports as enabled, comma-separated (e.g. "AVX2,FMA")."""
    feats = []
    for item in system_info().split("|"):
        name, _, value = item.rpartition("=")
        name = name.split(":")[-1].strip()
        if name and value.strip() not in ("", "0"):
            feats.append(name)
    return ",".join(feats)


# The widest SIMD instruction set a ggml build's kernels use, widest first: logits differ
# between levels (a portable AVX2 build vs a native AVX-512 one), so a fingerprint
# mismatch names it. Narrower extensions (AVX512_VNNI, AVX_VNNI, ...) are not named: an
# Intel machine with AVX_VNNI reproduced an AMD machine's logits without it.
SIMD_LEVELS = ("AVX512", "AVX2", "AVX", "SSSE3", "SSE3", "SVE", "NEON")


def simd_level(features: str) -> str:
    """The widest of SIMD_LEVELS in a comma-separated feature list (cpu_features())."""
    have = set(features.split(","))
    return next((lvl for lvl in SIMD_LEVELS if lvl in have), "none")


# ggml log levels: 1 debug, 2 info, 3 warn, 4 error, 5 continuation of the previous line
_LEVEL_SHOWN = {0: 99, 1: 3, 2: 1}


def set_verbose(level: int) -> None:
    """0: llama.cpp says nothing; 1: its warnings and errors; 2: everything."""
    global _verbose
    _verbose = _LEVEL_SHOWN[min(max(level, 0), 2)]


def _ensure_init() -> None:
    """Initialise llama.cpp once, routing its log through a filter (silent unless -v)."""
    global _initialised, _log_callback
    with _init_lock:
        if _initialised:
            return
        lib = _lib()

        def _log(level, text, user_data):  # noqa: ARG001 - ctypes signature
            global _last_shown
            show = _last_shown if level == 5 else level >= _verbose
            _last_shown = show
            if _captured is not None and text:
                _captured.append(text.decode(errors="replace"))
            if show and text:
                sys.stderr.write(text.decode(errors="replace"))

        _log_callback = lib.llama_log_callback(_log)
        lib.llama_log_set(_log_callback, ctypes.c_void_p(0))
        lib.llama_backend_init()
        _initialised = True


def has_amx() -> bool:
    """Whether llama.cpp sees AMX on this CPU (then its AMX weight buffers would be used
    with ``extra`` buffers, and decoding two or more sequences would crash)."""
    return any(f.startswith("AMX") for f in cpu_features().split(","))


def allows(weight_buffers: str, n_streams: int) -> str | None:
    """None if a model with these weight buffers can decode ``n_streams`` streams here,
    else why not (one line)."""
    if weight_buffers not in WEIGHT_BUFFER_CHOICES:
        return f"unknown llama.cpp weight buffers {weight_buffers!r}"
    if weight_buffers == LEGACY_WEIGHT_BUFFERS and n_streams > 1 and has_amx():
        return ("it was written with llama.cpp's extra weight buffers, whose AMX path "
                "crashes on this CPU with more than one stream (llama.cpp issue 20824)")
    return None


_BUFFER_LINE = re.compile(r"(\w+) model buffer size")


class LlamaModel:
    """A loaded GGUF file: its vocabulary always, its weights unless ``vocab_only``.
    ``weight_buffers`` ("plain" or "extra", see WEIGHT_BUFFERS) says which buffer types
    llama.cpp may hold the weights in; ``buffer_types`` lists the ones it reported using."""

    def __init__(self, path: Path, vocab_only: bool = False,
                 weight_buffers: str = WEIGHT_BUFFERS):
        global _captured
        _ensure_init()
        lib = _lib()
        if weight_buffers not in WEIGHT_BUFFER_CHOICES:
            raise ValueError(f"weight_buffers must be one of {WEIGHT_BUFFER_CHOICES}")
        self.path = Path(path)
        self.vocab_only = vocab_only
        self.weight_buffers = weight_buffers
        params = lib.llama_model_default_params()
        params.vocab_only = vocab_only
        params.n_gpu_layers = 0
        params.use_extra_bufts = weight_buffers == LEGACY_WEIGHT_BUFFERS
        with _init_lock:
            _captured = []
            try:
                self._model = lib.llama_model_load_from_file(os.fsencode(self.path), params)
            finally:
                log, _captured = "".join(_captured), None
        # e.g. "load_tensors:   CPU_Mapped model buffer size =    81.99 MiB" (the log of the
        # load; "CPU_REPACK" or "AMX" appear there when those buffer types hold weights)
        self.buffer_types = tuple(sorted(set(_BUFFER_LINE.findall(log))))
        if not self._model:
            raise NaczError(f"cannot load model {self.path} (not a GGUF file llama.cpp accepts)")
        self.vocab = lib.llama_model_get_vocab(self._model)
        self.vocab_size = int(lib.llama_vocab_n_tokens(self.vocab))
        self.hidden_size = int(lib.llama_model_n_embd(self._model))
        bos = int(lib.llama_vocab_bos(self.vocab))
        self.start_token = bos if bos >= 0 else int(lib.llama_vocab_eos(self.vocab))
        if not 0 <= self.start_token < self.vocab_size:
            raise NaczError(f"model {self.path.name} has neither a BOS nor an EOS token")

    def __del__(self):
        model = getattr(self, "_model", None)
        if model:
            try:
                _lib().llama_model_free(model)
            except Exception:  # noqa: BLE001 - interpreter shutdown
                pass
            self._model = None

    @property
    def handle(self):
        return self._model


class LlamaBackend:
    """Batched multi-sequence next-token logits with a per-stream sliding KV window."""

    name = NAME

    def __init__(self, model: LlamaModel, window: int, slide: int, sinks: int, threads: int):
        if model.vocab_only:
            raise ValueError("the LLM backend needs the model's weights")
        if not 0 < slide <= window - sinks - 1 or sinks < 1:
            raise ValueError("need 1 <= sinks and 0 < slide < window - sinks")
        self.model = model
        self.vocab_size = model.vocab_size
        self.hidden_size = model.hidden_size
        self.window, self.slide, self.sinks = window, slide, sinks
        self.threads = max(1, threads)
        self._ctx = None
        self._batch = None
        self._n_streams = 0

    # -- context lifetime -------------------------------------------------------------
    def _free(self) -> None:
        lib = _lib()
        if self._batch is not None:
            lib.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx:
            lib.llama_free(self._ctx)
            self._ctx = None

    def __del__(self):
        try:
            self._free()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def reset(self, n_streams: int, hidden: bool = False) -> None:
        """A fresh context with one sequence (and ``window`` KV cells) per stream; with
        ``hidden``, each step also keeps the model's final hidden states (the normalised
        state its output layer reads: llama.cpp's token embeddings, pooling none). Asking
        for them leaves the logits bit-identical (tests/test_backend.py), but every row
        is then an output (``step``'s ``want`` saves nothing)."""
        lib = _lib()
        self._free()
        n_streams = max(1, n_streams)
        p = lib.llama_context_default_params()
        p.n_seq_max = n_streams
        p.n_ctx = n_streams * self.window
        p.n_batch = p.n_ubatch = max(8, n_streams)
        p.n_threads = p.n_threads_batch = self.threads
        p.kv_unified = False
        p.flash_attn_type = FLASH_ATTN_DISABLED
        p.no_perf = True
        if hidden:
            p.embeddings = True
            p.pooling_type = POOLING_NONE
        self._ctx = lib.llama_init_from_model(self.model.handle, p)
        if not self._ctx:
            raise NaczError("llama.cpp could not create a context (out of memory?)")
        if lib.llama_n_ctx(self._ctx) < p.n_ctx:
            raise NaczError("llama.cpp gave a smaller context than asked for")
        self._mem = lib.llama_get_memory(self._ctx)
        self._batch = lib.llama_batch_init(n_streams, 0, 1)
        b = self._batch
        for i in range(n_streams):  # batch row i always belongs to stream i
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = i
            b.logits[i] = 1
        self._tok = np.ctypeslib.as_array(b.token, shape=(n_streams,))
        self._pos = np.ctypeslib.as_array(b.pos, shape=(n_streams,))
        self._flags = np.ctypeslib.as_array(b.logits, shape=(n_streams,))
        self._n_streams = n_streams
        self._n_past = 0  # all active streams are at the same position (lockstep)
        self._logits = np.empty((n_streams, self.vocab_size), dtype=np.float32)
        self._hidden = (np.zeros((n_streams, self.hidden_size), dtype=np.float32) if hidden
                        else None)

    def step(self, tokens: np.ndarray, want: np.ndarray | None = None) -> np.ndarray:
        """Feed ``tokens[i]`` to stream i (i < A); return the (A, V) logits that follow.
        Rows where ``want`` is False are not computed (llama.cpp skips their output
        layer) and hold stale values, except with hidden states: llama.cpp's embeddings
        mode makes every row an output, so there every row is computed."""
        lib = _lib()
        active = len(tokens)
        if not 0 < active <= self._n_streams:
            raise ValueError("bad number of active streams")
        if self._n_past >= self.window:
            self._slide(active)
        if self._hidden is not None:
            want = None  # llama.cpp's embeddings mode outputs every row anyway
        self._tok[:active] = tokens
        self._pos[:active] = self._n_past
        self._flags[:active] = 1 if want is None else want
        self._batch.n_tokens = active
        rc = lib.llama_decode(self._ctx, self._batch)
        if rc != 0:
            raise NaczError(f"llama_decode failed (code {rc})")
        self._n_past += 1
        out = self._logits[:active]
        n_out = active if want is None else int(np.count_nonzero(want))
        if n_out:
            rows = np.ctypeslib.as_array(lib.llama_get_logits(self._ctx),
                                         shape=(n_out, self.vocab_size))
            if want is None:
                out[...] = rows
            else:
                out[want] = rows  # outputs come in batch order
            if self._hidden is not None:
                ptr = lib.llama_get_embeddings(self._ctx)
                if not ptr:
                    raise NaczError("llama.cpp returned no hidden states")
                self._hidden[:active] = np.ctypeslib.as_array(ptr, shape=(n_out,
                                                                           self.hidden_size))
        return out

    def hidden_states(self, active: int) -> np.ndarray:
        """The (active, hidden_size) final hidden states of the last step (rows it did
        not compute are stale); only after ``reset(..., hidden=True)``."""
        if self._hidden is None:
            raise RuntimeError("hidden states were not asked for at reset")
        return self._hidden[:active]

    def _slide(self, active: int) -> None:
        """Drop ``slide`` tokens after the sinks from every active stream; shift the rest."""
        lib = _lib()
        lo, hi = self.sinks, self.sinks + self.slide
        for s in range(active):
            if not lib.llama_memory_seq_rm(self._mem, s, lo, hi):
                raise NaczError("llama.cpp refused to remove KV cells")
            lib.llama_memory_seq_add(self._mem, s, hi, -1, -self.slide)
        self._n_past -= self.slide

    # -- fingerprint --------------------------------------------------------------------
    def probe(self, probe_tokens: np.ndarray) -> np.ndarray:
        """Logits after each token of a fixed probe, fed one at a time to one stream.
        Their exact bits differ when this build or CPU computes the model differently."""
        return self.probe_states(probe_tokens, hidden=False)[0]

    def probe_states(self, probe_tokens: np.ndarray, hidden: bool) -> tuple:
        """(logits, hidden states or None) after each token of the probe."""
        self.reset(1, hidden=hidden)
        rows, states = [], []
        prev = self.model.start_token
        for tok in probe_tokens.tolist():
            rows.append(self.step(np.array([prev], dtype=np.int32)).copy())
            if hidden:
                states.append(self.hidden_states(1).copy())
            prev = tok
        self._free()
        return np.concatenate(rows), (np.concatenate(states) if hidden else None)


FTYPE_Q8_0 = 7  # LLAMA_FTYPE_MOSTLY_Q8_0
FTYPES = {"q8_0": FTYPE_Q8_0}


def quantize(src: Path, dst: Path, ftype: int = FTYPE_Q8_0, threads: int = 1) -> None:
    """Re-quantise a GGUF (e.g. the shipped Q4_1 to Q8_0). ``threads`` is fixed by the
    caller so the derived file's bytes can be compared from run to run."""
    _ensure_init()
    lib = _lib()
    p = lib.llama_model_quantize_default_params()
    p.nthread = threads
    p.ftype = ftype
    p.allow_requantize = True
    rc = lib.llama_model_quantize(os.fsencode(src), os.fsencode(dst), ctypes.byref(p))
    if rc != 0:
        raise NaczError(f"llama_model_quantize failed ({rc}) for {src}")
