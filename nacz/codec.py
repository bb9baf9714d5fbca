"""Library API: ``compress(bytes) -> bytes`` and ``decompress(bytes) -> bytes``.

The settings come from a pure plan (``plan``); here are their mechanics: one builder of
backend + ensemble (``build_encoder``/``build_decoder``) and two mirror functions,
``encode_block`` and ``decode_block``, over the one step loop (``engine.run``). Byte
layout lives in ``container``, the LLM in ``backends``, blocks and workers in ``stream``.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from . import alphabet, binary, container, engine, params as hparams
from . import backends
from .backends import llama
from .coder import Decoder, Encoder, min_bits_per_symbol
from .container import KIND_BINARY, KIND_NEURAL, Container, Segment
from .errors import FormatError, IntegrityError, MismatchError, NaczError
from .frozen import CODER_SPEC
from .models import mixed
from .models.ensemble import hidden_size_of, make_ensemble, probe_kind, probe_spec
from .plan import LLM_FREE, MAX_BLOCK_SIZE, Plan, is_llm_free, make_plan
from .resources import MODEL_ENV, derived_model, model_sha256, resolve_model_path
from .segment import Region, merge_adjacent, split_regions
from .tokenizer import Tokenizer

NO_BACKEND = "none"  # the backend name recorded for LLM-free files

Progress = Callable[[float], None]  # fraction of the work done, 0..1


@dataclass
class Options:
    model: str | os.PathLike | None = None  # --model > $NACZ_MODEL > default
    level: int | None = None  # 1..9, see presets; None = default level
    threads: int = 0  # 0 = all available cores; never changes the output
    # Expert overrides of the level's preset (all recorded in the header):
    streams: int | None = None
    window: int | None = None
    slide: int | None = None  # default: half the window
    sinks: int | None = None
    block_size: int | None = None  # format version 2; None: the level's default
    backend: str = backends.LLAMA  # llama (llama.cpp) | torch (recorded in the header)
    device: str = "cpu"  # cpu | cuda (torch only)
    dtype: str = backends.DEFAULT_DTYPE  # float32 | bfloat16 | float16 (torch only)
    progress: Progress | None = None


def default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


# -- the model, loaded once per process -------------------------------------------------
class Runtime:
    """A model file with its hash, weights, tokenizer, and (lazily) a backend."""

    def __init__(self, path: Path, vocab_only: bool = False,
                 weight_buffers: str = llama.WEIGHT_BUFFERS):
        self.path = path
        self.vocab_only = vocab_only
        self.sha256 = model_sha256(path)
        self.size = path.stat().st_size
        self.model = llama.LlamaModel(path, vocab_only=vocab_only,
                                      weight_buffers=weight_buffers)
        self.tokenizer = Tokenizer(self.model)
        self._probe = self.tokenizer.tokenize(llama.PROBE_TEXT)
        self._fingerprints: dict[tuple, str] = {}

    def backend(self, window: int, slide: int, sinks: int, threads: int):
        return llama.LlamaBackend(self.model, window, slide, sinks, threads)

    def fingerprint(self, backend, ensemble_spec: dict, legacy: bool = False) -> str:
        """Hash of the LLM's exact logits on a fixed probe (if there is an LLM) and of the
        probabilities an ensemble of the same kind computes over that probe: libm's exp and
        log can differ between CPUs too. With llama.cpp it covers the weight-buffer choice
        too, unless ``legacy`` (files from before that choice was recorded); with torch, the
        backend's description (backends.fingerprint_salt). Cached per setup."""
        key = (None if backend is None else backends.cache_key(backend),
               probe_kind(ensemble_spec), legacy)
        if key not in self._fingerprints:
            h = hashlib.blake2b(digest_size=16)
            h.update(backends.fingerprint_salt(backend))
            if backend is not None and backend.name == llama.NAME and not legacy:
                h.update(f"llama.cpp weight buffers: {self.model.weight_buffers}\n".encode())
            hidden = hidden_size_of(ensemble_spec) if backend is not None else 0
            if hidden and hidden != backend.hidden_size:
                raise FormatError(f"corrupt header (hidden size {hidden}; the model's is "
                                  f"{backend.hidden_size})")
            logits = states = None
            if backend is not None:
                logits, states = backend.probe_states(self._probe, hidden=bool(hidden))
            if logits is not None:
                h.update(logits.tobytes())
            if states is not None:
                h.update(states.tobytes())
            ens = make_ensemble(probe_spec(ensemble_spec, len(self._probe)),
                                self.model.vocab_size)
            ens.reset(1)
            for i, tok in enumerate(self._probe.tolist()):
                row = None if logits is None else logits[i:i + 1]
                st = None if states is None else states[i:i + 1]
                h.update(ens.predict(row, None, n_active=1, hidden=st).tobytes())
                ens.update(np.array([tok], dtype=np.int32))
            self._fingerprints[key] = h.hexdigest()
        return self._fingerprints[key]


_runtimes: dict[tuple, Runtime] = {}


def load_runtime_path(path: Path, vocab_only: bool = False,
                      weight_buffers: str = llama.WEIGHT_BUFFERS) -> Runtime:
    """A loaded model, cached (one at a time); a full load serves vocab-only needs too."""
    st = path.stat()
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    wanted = [(False, weight_buffers)]
    if vocab_only:  # any full load has the vocabulary
        wanted = [(False, wb) for wb in llama.WEIGHT_BUFFER_CHOICES] + [(True, None)]
    for only, wb in wanted:
        if key + (only, wb) in _runtimes:
            return _runtimes[key + (only, wb)]
    _runtimes.clear()
    wb = None if vocab_only else weight_buffers
    _runtimes[key + (vocab_only, wb)] = Runtime(path, vocab_only, weight_buffers)
    return _runtimes[key + (vocab_only, wb)]


def resolve_runtime(model: str | os.PathLike | None = None,
                    fmt: str = "original") -> tuple[Runtime, dict | None]:
    """The runtime for ``--model``/``$NACZ_MODEL``/default, re-quantised to ``fmt`` when
    that is the default model (an explicit model is always used as given), and the
    derivation the header records (None: the model as given). The cached runtime is never
    modified: the derivation travels next to it."""
    base = resolve_model_path(None if is_llm_free(model) else model)
    if is_llm_free(model):
        return load_runtime_path(base, vocab_only=True), None
    explicit = bool(model or os.environ.get(MODEL_ENV))
    if fmt == "original" or explicit:
        return load_runtime_path(base), None
    base_sha = model_sha256(base)
    return (load_runtime_path(derived_model(base, fmt, base_sha)),
            {"from": base_sha, "format": fmt})


def load_runtime(model: str | os.PathLike | None = None, fmt: str = "original") -> Runtime:
    return resolve_runtime(model, fmt)[0]


# -- the builder: backend + ensemble from the settings ---------------------------------
@dataclass
class Coding:
    """What one process (or worker) needs to code blocks: the model, its derivation (for
    the header), and one backend reused by every block (each block resets it)."""

    rt: Runtime
    derived: dict | None
    backend: object | None  # None: no LLM
    llm_free: bool

    @property
    def hidden_size(self) -> int:
        """The size of the hidden states the backend can give (0: none, or no LLM)."""
        return getattr(self.backend, "hidden_size", 0) if self.backend is not None else 0

    def fingerprint(self, ensemble_spec: dict) -> str:
        return self.rt.fingerprint(self.backend, ensemble_spec)


def build_encoder(plan: Plan, threads: int = 0) -> Coding:
    """The model and backend a plan needs (the model loaded once per process)."""
    rt, derived = resolve_runtime(plan.model, plan.model_format)
    mixed.use_threads(threads or default_threads())
    backend = (None if plan.llm_free else
               backends.make(rt, plan.backend, plan.device, plan.window, plan.slide,
                             plan.sinks, threads or default_threads(), plan.dtype))
    return Coding(rt, derived, backend, plan.llm_free)


def build_decoder(p: hparams.NeuralParams, opts: Options, probe: dict) -> Coding:
    """The model and backend that reproduce the file's fingerprint (computed with the
    ensemble spec ``probe``), checked before any decoding; else a MismatchError saying
    what differs (model hash, tokenizer, coder, weight buffers, build).

    A file that records its weight buffers gets exactly those. One written before nacz
    recorded them used llama.cpp's default ("extra"): plain buffers are tried first (on
    CPUs without AMX or repacked weights they compute the same logits, and they never
    crash), then "extra" where that cannot crash (llama.allows)."""
    backends.check(p.backend_name, p.device)  # before loading anything
    mixed.use_threads(opts.threads or default_threads())
    if p.backend_name in (NO_BACKEND, backends.TORCH_NAME):
        rt, derived = _runtime_for(p, opts)
        check_compatible(p, rt)
        backend = None if p.backend_name == NO_BACKEND else backends.make(
            rt, backends.TORCH, p.device["device"], p.window, p.slide, p.sinks,
            opts.threads or default_threads(), p.device["dtype"])
        coding = Coding(rt, derived, backend, backend is None)
        fp = coding.fingerprint(probe)
        if fp != p.fingerprint:
            raise MismatchError(_fingerprint_message(p, fp))
        return coding
    legacy = p.weight_buffers is None
    choices = (llama.WEIGHT_BUFFERS, llama.LEGACY_WEIGHT_BUFFERS) if legacy else (
        p.weight_buffers,)
    fp, refused = None, None
    for wb in choices:
        refused = llama.allows(wb, len(p.streams))
        if refused:
            continue
        rt, derived = _runtime_for(p, opts, wb)
        check_compatible(p, rt)
        backend = rt.backend(p.window, p.slide, p.sinks, opts.threads or default_threads())
        fp = rt.fingerprint(backend, probe, legacy=legacy)
        if fp == p.fingerprint:
            return Coding(rt, derived, backend, False)
    if fp is None:  # no choice could even be tried
        raise MismatchError(f"cannot decode this file here: {refused}")
    raise MismatchError(_fingerprint_message(p, fp, refused))


# -- containers without a neural part ------------------------------------------------
def _binary_only(data: bytes) -> Container:
    if not data:
        return Container(0, container.checksum(data), [])
    method, payload = binary.pack(data)
    seg = Segment(KIND_BINARY, len(data), 0, container.digest(data))
    return Container(len(data), container.checksum(data), [seg], method, payload)


def has_text(data: bytes) -> bool:
    return any(r.is_text for r in split_regions(data))


# -- block encode -----------------------------------------------------------------------
def encode_block(coding: Coding, plan: Plan, data: bytes,
                 serialize: Callable[[Container], bytes],
                 fingerprint: str | None = None, progress: Progress | None = None) -> bytes:
    """Code one block of the original; return ``serialize`` of its container, neural or
    binary-only, whichever is smaller. ``fingerprint``: the file's (format version 2), else
    the one of this block's ensemble (version 1)."""
    fallback = serialize(_binary_only(data))
    regions = split_regions(data)
    if not any(r.is_text for r in regions):
        return fallback
    rt = coding.rt
    token_lists: dict[int, np.ndarray] = {}
    checked: list[Region] = []
    for r in regions:
        toks = rt.tokenizer.tokenize_verified(data[r.start:r.end]) if r.is_text else None
        if toks is not None and len(toks) <= len(r):
            token_lists[r.start] = toks
            checked.append(r)
        else:
            checked.append(Region(r.start, r.end, False))
    regions = merge_adjacent(checked)
    if not token_lists:
        return fallback

    segments = [Segment(KIND_NEURAL if r.is_text else KIND_BINARY, len(r),
                        len(token_lists[r.start]) if r.is_text else 0,
                        container.digest(data[r.start:r.end])) for r in regions]
    method, binary_payload = binary.pack(
        b"".join(data[r.start:r.end] for r in regions if not r.is_text))

    tokens = np.concatenate([token_lists[r.start] for r in regions if r.is_text])
    lengths = plan.stream_lengths(len(tokens))
    spec = plan.ensemble(len(tokens), coding.hidden_size)
    # Without an LLM, tokens are coded among the types that occur (alphabet.py).
    types = alphabet.types_of(tokens, rt.model.vocab_size) if plan.llm_free else None
    if types is not None:
        tokens = alphabet.to_indices(tokens, types)
    ensemble = make_ensemble(spec, rt.model.vocab_size if types is None else len(types))
    backend = coding.backend
    np_ = hparams.NeuralParams(
        model_name=rt.path.name, model_sha256=rt.sha256, model_size=rt.size,
        model_derived=coding.derived, level=plan.level,
        backend_name=NO_BACKEND if plan.llm_free else backend.name,
        backend_version=backends.version(backend), device=backends.describe(backend),
        weight_buffers=(None if plan.llm_free or backend.name != llama.NAME
                        else rt.model.weight_buffers),
        fingerprint=fingerprint or coding.fingerprint(spec), cpu=llama.cpu_features(),
        vocab_size=rt.model.vocab_size, start_token=rt.model.start_token,
        streams=tuple(lengths), window=plan.window, slide=plan.slide, sinks=plan.sinks,
        ensemble=spec, coder=dict(CODER_SPEC),
        alphabet=None if types is None else len(types))

    # Stream s holds a contiguous run of the token sequence; row s of the matrix.
    matrix = np.zeros((len(lengths), lengths[0]), dtype=np.int32)
    offset = 0
    for s, n in enumerate(lengths):
        matrix[s, :n] = tokens[offset:offset + n]
        offset += n
    del tokens, token_lists
    encoder = Encoder()
    if types is not None:
        bits = alphabet.bitmap(types, rt.model.vocab_size)
        alphabet.code_bitmap(rt.model.vocab_size, len(types),
                             lambda p, i: encoder.bits(bits[i:i + len(p)], p))

    def code(probs: np.ndarray, t: int) -> np.ndarray:
        return encoder(matrix[:probs.shape[0], t], probs)

    engine.run(backend, ensemble, lengths, rt.model.start_token, code,
               _token_progress(progress, sum(lengths)))
    neural = Container(len(data), container.checksum(data), segments, method, binary_payload,
                       np_.to_dict(), encoder.finish())
    out = serialize(neural)
    return out if len(out) < len(fallback) else fallback


# -- compression (format version 1: the whole input as one block) -----------------------
def plan_for(opts: Options, block_size: int | None = None) -> Plan:
    return make_plan(opts.model, opts.level, opts.streams, opts.window, opts.slide,
                     opts.sinks, block_size if block_size is not None else opts.block_size,
                     backend=opts.backend, device=opts.device, dtype=opts.dtype)


def compress(data: bytes, options: Options | None = None) -> bytes:
    """One container of format version 1 (the library's one-shot form; the command line
    writes format version 2, see ``stream``)."""
    opts = options or Options()
    if not has_text(data):
        _report(opts, 1.0)
        return container.write(_binary_only(data))
    plan = plan_for(opts, block_size=MAX_BLOCK_SIZE)
    coding = build_encoder(plan, opts.threads)
    return encode_block(coding, plan, data, container.write, progress=opts.progress)


def _report(opts: Options, fraction: float) -> None:
    if opts.progress is not None:
        opts.progress(fraction)


def _token_progress(progress: Progress | None, total: int):
    if progress is None or total == 0:
        return None
    return lambda done: progress(done / total)


# -- block decode -----------------------------------------------------------------------
def inspect(data: bytes) -> Container:
    """Parse and validate a container without decoding it."""
    return container.read(data)


def decompress(data: bytes, options: Options | None = None) -> bytes:
    """Decode a container of format version 1 (version 2: ``stream.decompress_bytes``)."""
    opts = options or Options()
    if data[:5] == container.MAGIC + bytes([2]):
        from .stream import decompress_bytes
        return decompress_bytes(data, opts)
    c = container.read(data)
    coding = p = ensemble = None
    if c.params is not None:
        p = hparams.parse(c.params)
        check_block(p, c)
        ensemble = _ensemble_for(p, llm_free=p.backend_name == NO_BACKEND)
        coding = build_decoder(p, opts, p.ensemble)
    out = decode_block(coding, p, c, opts.progress, ensemble)
    if len(out) != c.orig_len or container.checksum(out) != c.checksum:
        raise IntegrityError("decompressed data does not match the stored checksum")
    return out


def check_block(p: hparams.NeuralParams, c: Container) -> None:
    """Structural checks of a block's neural settings against its container: before any
    model is loaded or any token decoded."""
    neural_segs = [s for s in c.segments if s.kind == KIND_NEURAL]
    if sum(s.tokens for s in neural_segs) != p.n_tokens:
        raise FormatError("corrupt header (stream lengths do not match the segment table)")
    budget = 8 * len(c.neural_payload) + 64  # bits, with slack for the coder's tail
    if p.n_tokens * min_bits_per_symbol(p.coded_vocab) > budget:
        raise FormatError("corrupt header (more tokens than the payload can hold)")
    if p.alphabet is not None and p.backend_name != NO_BACKEND:
        raise FormatError("corrupt header (a token alphabet needs the LLM-free mode)")


def _ensemble_for(p: hparams.NeuralParams, llm_free: bool):
    """The block's ensemble, built from its spec (an unknown one is a format error)."""
    ensemble = make_ensemble(p.ensemble, p.coded_vocab)
    if llm_free == ensemble.uses_llm:
        raise FormatError("corrupt header (backend and ensemble disagree about the LLM)")
    return ensemble


def check_ensemble(coding: Coding, p: hparams.NeuralParams):
    return _ensemble_for(p, coding.llm_free)


def decode_block(coding: Coding | None, p: hparams.NeuralParams | None, c: Container,
                 progress: Progress | None = None, ensemble=None) -> bytes:
    """The mirror of ``encode_block``: a block's container -> its original bytes, each
    segment checked against its digest (the caller checks the block's checksum)."""
    neural_out: list[bytes] = []
    if c.params is not None:
        neural_out = _decode_neural(coding, p, c, progress, ensemble)
    binary_data = binary.unpack(c.binary_method, c.binary_payload, c.binary_len)
    parts, offset, neural = [], 0, iter(neural_out)
    for i, seg in enumerate(c.segments):
        if seg.kind == KIND_BINARY:
            part = binary_data[offset:offset + seg.orig_len]
            offset += seg.orig_len
        else:
            part = next(neural)
        if len(part) != seg.orig_len or container.digest(part) != seg.digest:
            raise IntegrityError(f"segment {i} ({seg.kind_name}, {seg.orig_len} bytes) "
                                 "does not match its checksum")
        parts.append(part)
    return b"".join(parts)


def _runtime_for(p: hparams.NeuralParams, opts: Options,
                 weight_buffers: str = llama.WEIGHT_BUFFERS) -> tuple[Runtime, dict | None]:
    """The model a file needs: the one given (or default), re-derived if the file was
    made with a derived format of it, its weights in ``weight_buffers``."""
    if p.backend_name == NO_BACKEND:  # the tokenizer only
        rt = load_runtime_path(resolve_model_path(None if is_llm_free(opts.model)
                                                  else opts.model), vocab_only=True)
        return rt, None
    if p.model_derived is None:
        return load_runtime_path(resolve_model_path(opts.model),
                                 weight_buffers=weight_buffers), None
    base = resolve_model_path(opts.model)
    base_sha = model_sha256(base)
    if base_sha != p.model_derived["from"]:
        raise MismatchError(
            f"file was compressed with {p.model_name}, derived from a model with sha256 "
            f"{p.model_derived['from'][:12]}…, but {base.name} (sha256 {base_sha[:12]}…) is "
            "in use; pass the original model with --model or NACZ_MODEL")
    rt = load_runtime_path(derived_model(base, p.model_derived["format"], base_sha),
                           weight_buffers=weight_buffers)
    if rt.sha256 != p.model_sha256:
        raise MismatchError(
            f"the {p.model_derived['format']} model derived here from {base.name} differs "
            f"from the one the file was made with (sha256 {rt.sha256[:12]}… vs "
            f"{p.model_sha256[:12]}…): llama.cpp's quantizer changed; use the same "
            "llama-cpp-python version as the compressing side")
    return rt, dict(p.model_derived)


def check_compatible(p: hparams.NeuralParams, rt: Runtime) -> None:
    """Refuse, before decoding, a file made with another model or an incompatible build."""
    if p.model_sha256 != rt.sha256:
        raise MismatchError(
            f"file was compressed with model {p.model_name} (sha256 {p.model_sha256[:12]}…) "
            f"but {rt.path.name} (sha256 {rt.sha256[:12]}…) is in use; "
            "pass that model with --model or NACZ_MODEL")
    backends.check(p.backend_name, p.device)
    if p.vocab_size != rt.model.vocab_size or p.start_token != rt.model.start_token:
        raise MismatchError("file's tokenizer parameters do not match the model")
    if p.coder != CODER_SPEC:
        raise FormatError(f"unsupported coder parameters {p.coder!r:.80}")


def _decode_neural(coding: Coding, p: hparams.NeuralParams, c: Container,
                   progress: Progress | None, ensemble=None) -> list[bytes]:
    if ensemble is None:
        ensemble = check_ensemble(coding, p)
    decoder = Decoder(c.neural_payload, p.coded_vocab)
    types = None
    if p.alphabet is not None:
        types = alphabet.code_bitmap(p.vocab_size, p.alphabet, lambda pr, i: decoder.bits(pr))

    def code(probs: np.ndarray, t: int) -> np.ndarray:
        return decoder(probs)

    streams = engine.run(coding.backend, ensemble, p.streams, p.start_token, code,
                         _token_progress(progress, p.n_tokens))
    tokens = np.concatenate(streams)
    if types is not None:
        tokens = alphabet.to_tokens(tokens, types)
    out, offset = [], 0
    for seg in (s for s in c.segments if s.kind == KIND_NEURAL):
        out.append(coding.rt.tokenizer.detokenize(tokens[offset:offset + seg.tokens]))
        offset += seg.tokens
    return out


def _fingerprint_message(p: hparams.NeuralParams, fp: str, refused: str | None = None) -> str:
    """Name what plausibly differs between the compressing backend and this one (weight
    buffers, llama-cpp-python version, SIMD level of the ggml build), and what to do."""
    if p.device:  # torch: the description matched (backends.check), the logits did not
        return (f"backend fingerprint mismatch (file {p.fingerprint[:12]}, here {fp[:12]}): "
                f"same torch setup ({', '.join(f'{k} {v}' for k, v in p.device.items())}), "
                "different logits; decompress where it was compressed")
    what = []
    if p.backend_name != NO_BACKEND:
        if p.weight_buffers is None:
            what.append("the file was written by nacz 0.1 with llama.cpp's default weight "
                        "buffers (AMX or CPU_REPACK where the CPU has them), whose logits "
                        "this machine does not reproduce" + (f"; {refused}" if refused else ""))
        elif p.weight_buffers != llama.WEIGHT_BUFFERS:
            what.append(f"llama.cpp weight buffers {p.weight_buffers!r} in the file, "
                        f"{llama.WEIGHT_BUFFERS!r} here")
        here_version = llama.version()
        if p.backend_version != here_version:
            what.append(f"llama-cpp-python {p.backend_version} in the file, {here_version} here")
        theirs, ours = llama.simd_level(p.cpu), llama.simd_level(llama.cpu_features())
        if theirs != ours:
            what.append(f"SIMD level of the ggml build: {theirs} in the file, {ours} here")
        if not what:
            what.append(f"same llama-cpp-python version, weight buffers and SIMD level "
                        f"({ours}): the llama.cpp builds differ otherwise (compiler or build "
                        "options, e.g. a portable build) or the CPU computes differently")
    else:
        what.append("this CPU's libm or numba computes the online models differently")
    return (f"backend fingerprint mismatch (file {p.fingerprint[:12]}, here {fp[:12]}): "
            f"{'; '.join(what)}; decompress with the llama-cpp-python build and kind of CPU "
            "it was compressed with (see README: portability)")
