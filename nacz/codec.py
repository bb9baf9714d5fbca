"""Library API: ``compress(bytes) -> bytes`` and ``decompress(bytes) -> bytes``.

Policy (which regions go neural, how many streams, fallbacks) lives here; byte layout in
``container``, the step loop in ``engine``, the LLM in ``backends``. The CLI is a thin
layer over these functions.
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
from .models.ensemble import default_spec, make_ensemble, probe_kind, probe_spec
from .presets import FASTEST_LLM_LEVEL, LLM_FREE_LEVEL, SINKS, SSM_MIN_TOKENS, preset
from .resources import MODEL_ENV, derived_model, model_sha256, resolve_model_path
from .segment import Region, merge_adjacent, split_regions
from .tokenizer import Tokenizer

CODER_SPEC = {"name": "constriction.range", "precision": 24, "perfect": False}
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
    backend: str = backends.LLAMA  # llama (llama.cpp) | torch (recorded in the header)
    device: str = "cpu"  # cpu | cuda (torch only)
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
        self.derived = None
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
            logits = None if backend is None else backend.probe(self._probe)
            if logits is not None:
                h.update(logits.tobytes())
            ens = make_ensemble(probe_spec(ensemble_spec, len(self._probe)),
                                self.model.vocab_size)
            ens.reset(1)
            for i, tok in enumerate(self._probe.tolist()):
                row = None if logits is None else logits[i:i + 1]
                h.update(ens.predict(row, None, n_active=1).tobytes())
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


LLM_FREE = "none"  # --model none: no LLM; the default model's tokenizer only


def is_llm_free(model) -> bool:
    return isinstance(model, str) and model == LLM_FREE


def load_runtime(model: str | os.PathLike | None = None, fmt: str = "original"):
    """The runtime for ``--model``/``$NACZ_MODEL``/default, re-quantised to ``fmt`` when
    that is the default model (an explicit model is always used as given). Returns the
    runtime; ``runtime.derived`` describes a derivation (for the header) or is None."""
    base = resolve_model_path(None if is_llm_free(model) else model)
    if is_llm_free(model):
        rt = load_runtime_path(base, vocab_only=True)
        rt.derived = None
        return rt
    explicit = bool(model or os.environ.get(MODEL_ENV))
    if fmt == "original" or explicit:
        rt = load_runtime_path(base)
        rt.derived = None
        return rt
    base_sha = model_sha256(base)
    rt = load_runtime_path(derived_model(base, fmt, base_sha))
    rt.derived = {"from": base_sha, "format": fmt}
    return rt


# -- containers without a neural part ------------------------------------------------
def _binary_only(data: bytes) -> Container:
    if not data:
        return Container(0, container.checksum(data), [])
    method, payload = binary.pack(data)
    seg = Segment(KIND_BINARY, len(data), 0, container.digest(data))
    return Container(len(data), container.checksum(data), [seg], method, payload)


# -- compression ------------------------------------------------------------------------
def compress(data: bytes, options: Options | None = None) -> bytes:
    opts = options or Options()
    backends.require(opts.backend, opts.device)
    fallback = container.write(_binary_only(data))
    regions = split_regions(data)
    if not any(r.is_text for r in regions):
        _report(opts, 1.0)
        return fallback

    pre = preset(opts.level)
    llm_free = is_llm_free(opts.model) or (pre.model_format == LLM_FREE and not opts.model
                                           and opts.backend == backends.LLAMA)
    if llm_free and opts.backend != backends.LLAMA:
        raise NaczError(f"--backend {opts.backend} needs an LLM (not --model none)")
    if llm_free and pre.model_format != LLM_FREE:
        pre = preset(LLM_FREE_LEVEL)  # --model none: the LLM-free level's settings
    elif not llm_free and pre.model_format == LLM_FREE:
        pre = preset(FASTEST_LLM_LEVEL)  # -1 --model X: an LLM needs many streams
    rt = load_runtime(LLM_FREE if llm_free else opts.model, pre.model_format)
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
    n_streams = opts.streams if opts.streams else pre.streams_for(len(tokens))
    max_streams, max_cells = hparams.limits(
        {"device": opts.device} if opts.backend == backends.TORCH else None)
    lengths = engine.split_streams(len(tokens), min(n_streams, max_streams))
    window = opts.window or pre.window
    slide = opts.slide or (window // 2 if opts.window else pre.slide)
    sinks = opts.sinks or SINKS
    if len(lengths) * window > max_cells or window > hparams.MAX_WINDOW:
        raise NaczError(f"{len(lengths)} streams x window {window} exceed the KV cache "
                        f"limit of {max_cells} cells; use fewer streams or a "
                        "smaller window")
    threads = opts.threads or default_threads()
    backend = None if llm_free else backends.make(rt, opts.backend, opts.device, window,
                                                  slide, sinks, threads)
    with_ssm = None  # the default: SSM only without an LLM
    if pre.ensemble == "full+ssm" and len(tokens) >= SSM_MIN_TOKENS:
        with_ssm = True
    spec = (default_spec(len(tokens), uses_llm=not llm_free, with_ssm=with_ssm)
            if pre.ensemble in ("full", "full+ssm") else {"kind": "llm"})
    # Without an LLM, tokens are coded among the types that occur (alphabet.py).
    types = alphabet.types_of(tokens, rt.model.vocab_size) if llm_free else None
    if types is not None:
        tokens = alphabet.to_indices(tokens, types)
    ensemble = make_ensemble(spec, rt.model.vocab_size if types is None else len(types))
    np_ = hparams.NeuralParams(
        model_name=rt.path.name, model_sha256=rt.sha256, model_size=rt.size,
        model_derived=rt.derived, level=pre.level,
        backend_name=NO_BACKEND if llm_free else backend.name,
        backend_version=backends.version(backend), device=backends.describe(backend),
        weight_buffers=(None if llm_free or backend.name != llama.NAME
                        else rt.model.weight_buffers),
        fingerprint=rt.fingerprint(backend, spec), cpu=llama.cpu_features(),
        vocab_size=rt.model.vocab_size, start_token=rt.model.start_token,
        streams=tuple(lengths), window=window, slide=slide, sinks=sinks,
        ensemble=spec, coder=dict(CODER_SPEC),
        alphabet=None if types is None else len(types))

    # Stream s holds a contiguous run of the token sequence; row s of the matrix.
    matrix = np.zeros((len(lengths), lengths[0]), dtype=np.int32)
    offset = 0
    for s, n in enumerate(lengths):
        matrix[s, :n] = tokens[offset:offset + n]
        offset += n
    encoder = Encoder()
    if types is not None:
        bits = alphabet.bitmap(types, rt.model.vocab_size)
        alphabet.code_bitmap(rt.model.vocab_size, len(types),
                             lambda p, i: encoder.bits(bits[i:i + len(p)], p))

    def code(probs: np.ndarray, t: int) -> np.ndarray:
        return encoder(matrix[:probs.shape[0], t], probs)

    engine.run(backend, ensemble, lengths, rt.model.start_token, code,
               _token_progress(opts, len(tokens)))
    neural = Container(len(data), container.checksum(data), segments, method, binary_payload,
                       np_.to_dict(), encoder.finish())
    out = container.write(neural)
    return out if len(out) < len(fallback) else fallback


def _report(opts: Options, fraction: float) -> None:
    if opts.progress is not None:
        opts.progress(fraction)


def _token_progress(opts: Options, total: int):
    if opts.progress is None or total == 0:
        return None
    return lambda done: opts.progress(done / total)


# -- decompression ----------------------------------------------------------------------
def inspect(data: bytes) -> Container:
    """Parse and validate a container without decoding it."""
    return container.read(data)


def decompress(data: bytes, options: Options | None = None) -> bytes:
    opts = options or Options()
    c = container.read(data)
    neural_out: list[bytes] = []
    if c.params is not None:
        neural_out = _decode_neural(c, hparams.parse(c.params), opts)
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
    out = b"".join(parts)
    if len(out) != c.orig_len or container.checksum(out) != c.checksum:
        raise IntegrityError("decompressed data does not match the stored checksum")
    return out


def _runtime_for(p: hparams.NeuralParams, opts: Options,
                 weight_buffers: str = llama.WEIGHT_BUFFERS) -> Runtime:
    """The model a file needs: the one given (or default), re-derived if the file was
    made with a derived format of it, its weights in ``weight_buffers``."""
    if p.backend_name == NO_BACKEND:  # the tokenizer only
        rt = load_runtime_path(resolve_model_path(None if is_llm_free(opts.model)
                                                  else opts.model), vocab_only=True)
        return rt
    if p.model_derived is None:
        rt = load_runtime_path(resolve_model_path(opts.model), weight_buffers=weight_buffers)
        rt.derived = None
        return rt
    base = resolve_model_path(opts.model)
    base_sha = model_sha256(base)
    if base_sha != p.model_derived["from"]:
        raise MismatchError(
            f"file was compressed with {p.model_name}, derived from a model with sha256 "
            f"{p.model_derived['from'][:12]}…, but {base.name} (sha256 {base_sha[:12]}…) is "
            "in use; pass the original model with --model or NACZ_MODEL")
    rt = load_runtime_path(derived_model(base, p.model_derived["format"], base_sha),
                           weight_buffers=weight_buffers)
    rt.derived = p.model_derived
    if rt.sha256 != p.model_sha256:
        raise MismatchError(
            f"the {p.model_derived['format']} model derived here from {base.name} differs "
            f"from the one the file was made with (sha256 {rt.sha256[:12]}… vs "
            f"{p.model_sha256[:12]}…): llama.cpp's quantizer changed; use the same "
            "llama-cpp-python version as the compressing side")
    return rt


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


def _decode_neural(c: Container, p: hparams.NeuralParams, opts: Options) -> list[bytes]:
    neural_segs = [s for s in c.segments if s.kind == KIND_NEURAL]
    if sum(s.tokens for s in neural_segs) != p.n_tokens:
        raise FormatError("corrupt header (stream lengths do not match the segment table)")
    budget = 8 * len(c.neural_payload) + 64  # bits, with slack for the coder's tail
    if p.n_tokens * min_bits_per_symbol(p.coded_vocab) > budget:
        raise FormatError("corrupt header (more tokens than the payload can hold)")
    if p.alphabet is not None and p.backend_name != NO_BACKEND:
        raise FormatError("corrupt header (a token alphabet needs the LLM-free mode)")
    backends.check(p.backend_name, p.device)  # before loading anything
    ensemble = make_ensemble(p.ensemble, p.coded_vocab)
    if (p.backend_name == NO_BACKEND) == ensemble.uses_llm:
        raise FormatError("corrupt header (backend and ensemble disagree about the LLM)")
    rt, backend = _checked_backend(p, opts)
    decoder = Decoder(c.neural_payload, p.coded_vocab)
    types = None
    if p.alphabet is not None:
        types = alphabet.code_bitmap(p.vocab_size, p.alphabet, lambda pr, i: decoder.bits(pr))

    def code(probs: np.ndarray, t: int) -> np.ndarray:
        return decoder(probs)

    streams = engine.run(backend, ensemble, p.streams, p.start_token, code,
                         _token_progress(opts, p.n_tokens))
    tokens = np.concatenate(streams)
    if types is not None:
        tokens = alphabet.to_tokens(tokens, types)
    out, offset = [], 0
    for seg in neural_segs:
        out.append(rt.tokenizer.detokenize(tokens[offset:offset + seg.tokens]))
        offset += seg.tokens
    return out


def _checked_backend(p: hparams.NeuralParams, opts: Options):
    """The runtime and backend (None without an LLM) that reproduce the file's
    fingerprint, checked before any decoding; else a MismatchError saying what differs.

    A file that records its weight buffers gets exactly those. One written before nacz
    recorded them used llama.cpp's default ("extra"): plain buffers are tried first (on
    CPUs without AMX or repacked weights they compute the same logits, and they never
    crash), then "extra" where that cannot crash (llama.allows)."""
    if p.backend_name in (NO_BACKEND, backends.TORCH_NAME):
        rt = _runtime_for(p, opts)
        check_compatible(p, rt)
        backend = None if p.backend_name == NO_BACKEND else backends.make(
            rt, backends.TORCH, p.device["device"], p.window, p.slide, p.sinks,
            opts.threads or default_threads())
        fp = rt.fingerprint(backend, p.ensemble)
        if fp != p.fingerprint:
            raise MismatchError(_fingerprint_message(p, fp))
        return rt, backend
    legacy = p.weight_buffers is None
    choices = (llama.WEIGHT_BUFFERS, llama.LEGACY_WEIGHT_BUFFERS) if legacy else (
        p.weight_buffers,)
    fp, refused = None, None
    for wb in choices:
        refused = llama.allows(wb, len(p.streams))
        if refused:
            continue
        rt = _runtime_for(p, opts, wb)
        check_compatible(p, rt)
        backend = rt.backend(p.window, p.slide, p.sinks, opts.threads or default_threads())
        fp = rt.fingerprint(backend, p.ensemble, legacy=legacy)
        if fp == p.fingerprint:
            return rt, backend
    if fp is None:  # no choice could even be tried
        raise MismatchError(f"cannot decode this file here: {refused}")
    raise MismatchError(_fingerprint_message(p, fp, refused))


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
