"""Human-readable description of a container (``nacz info``), without decoding it."""

from __future__ import annotations

from collections import Counter

from . import container
from .container import KIND_NAMES, KIND_NEURAL, METHOD_NAMES
from .errors import FormatError
from .backends import llama
from .params import parse


def describe(name: str, data: bytes, verbose: bool = False) -> str:
    if data[:4] == container.MAGIC and data[4:5] == bytes([container.BLOCKS_VERSION]):
        return describe_blocks(name, data, verbose)
    c = container.read(data)
    lines = [name, f"  format version  {c.version}"]
    lines.append(f"  original        {c.orig_len} bytes")
    if c.orig_len:
        lines.append(f"  compressed      {len(data)} bytes (ratio {c.orig_len / len(data):.3f}, "
                     f"{8 * len(data) / c.orig_len:.4f} bits per byte)")
    else:
        lines.append(f"  compressed      {len(data)} bytes")
    counts = Counter(s.kind for s in c.segments)
    sizes = Counter()
    for s in c.segments:
        sizes[s.kind] += s.orig_len
    lines.append("  segments        " + (", ".join(
        f"{counts[k]} {KIND_NAMES[k]} ({sizes[k]} bytes)" for k in sorted(counts)) or "none"))
    if c.has_binary:
        lines.append(f"  binary stream   {METHOD_NAMES[c.binary_method]}, {c.binary_len} -> "
                     f"{len(c.binary_payload)} bytes")
    if c.params is not None:
        try:
            p = parse(c.params)
        except FormatError as e:
            raise FormatError(f"{e} in neural parameters") from None
        lines += _model_and_backend(p)
        lines.append(f"  streams         {len(p.streams)} ({p.n_tokens} tokens, "
                     f"{8 * len(c.neural_payload) / max(1, p.n_tokens):.3f} bits per token)")
        if p.alphabet:
            lines.append(f"  alphabet        {p.alphabet} token types of {p.vocab_size}")
        lines.append(f"  context         window {p.window}, slide {p.slide}, {p.sinks} sink tokens")
        lines.append(f"  ensemble        {container.canonical_json(p.ensemble).decode()}")
    if verbose:
        offset = 0
        for i, s in enumerate(c.segments):
            what = f", {s.tokens} tokens" if s.kind == KIND_NEURAL else ""
            lines.append(f"  segment {i:<7} {KIND_NAMES[s.kind]:<7} at {offset}, "
                         f"{s.orig_len} bytes{what}")
            offset += s.orig_len
    return "\n".join(lines)


def describe_backends() -> str:
    """What this installation computes with (``nacz info --backends``): the llama.cpp
    build and the CPU features it uses, the SSM implementation (C or numba), the coder and
    the default model. Probability-relevant differences show up in the fingerprint."""
    from importlib.metadata import version

    from . import native, resources

    impl = native.ssm_impl()
    if impl == "c":
        ssm = f"C ({native.c_library_path()})"
    else:
        why = "forced by NACZ_SSM_IMPL" if native.c_available() else "C library not built"
        ssm = f"numba {version('numba')} ({why})"
    feats = llama.cpu_features()
    lines = ["backends",
             f"  llama.cpp       llama-cpp-python {llama.version()}",
             f"  CPU features    {feats or 'none reported'} (SIMD level "
             f"{llama.simd_level(feats)})",
             f"  weight buffers  {llama.WEIGHT_BUFFERS}: llama.cpp's extra buffer types "
             "(CPU_REPACK, AMX) off; AMX crashes multi-stream decode (llama.cpp issue 20824)"
             + ("; this CPU has AMX" if llama.has_amx() else ""),
             f"  SSM kernels     {ssm}",
             f"  ensemble        numba {version('numba')}",
             f"  range coder     constriction {version('constriction')}"]
    try:
        model = resources.default_model_path()
        lines.append(f"  default model   {model}")
        loaded = llama.LlamaModel(model)
        lines.append(f"                  weights held in {', '.join(loaded.buffer_types)} "
                     "(llama.cpp's report when loading it)")
    except Exception as e:  # noqa: BLE001 - report, not fail: info must work without it
        lines.append(f"  default model   unavailable: {e}")
    return "\n".join(lines)


def describe_blocks(name: str, data: bytes, verbose: bool = False) -> str:
    """A format-version-2 file: its shared settings, totals over the blocks, and with
    ``verbose`` one line per block. Every block is parsed and checked (not decoded)."""
    import io

    from . import blockfile, blockparams

    src = blockfile.Source(io.BytesIO(data))
    header = blockfile.read_header(src)
    blocks: list[tuple[blockfile.IndexEntry, container.Container]] = []
    while True:
        start = src.pos
        try:
            item = blockfile.read_next(src, header)
        except FormatError as e:
            raise FormatError(f"block {len(blocks)}: {e}") from None
        if isinstance(item, blockfile.Index):
            break
        blocks.append((blockfile.IndexEntry(start, src.pos - start, item.orig_len,
                                            item.checksum), item))
    index = item
    if index.entries != [e for e, _ in blocks]:
        raise FormatError("corrupt index (does not describe the blocks read)")
    blockfile.check_index(index, header)
    orig = index.orig_size
    lines = [name, f"  format version  {blockfile.VERSION}"]
    lines.append(f"  original        {orig} bytes")
    if orig:
        lines.append(f"  compressed      {len(data)} bytes (ratio {orig / len(data):.3f}, "
                     f"{8 * len(data) / orig:.4f} bits per byte)")
    else:
        lines.append(f"  compressed      {len(data)} bytes")
    lines.append(f"  blocks          {len(blocks)} of up to {header.block_size} bytes")
    counts, sizes = Counter(), Counter()
    tokens = streams = 0
    for _, c in blocks:
        for s in c.segments:
            counts[s.kind] += 1
            sizes[s.kind] += s.orig_len
        if c.params is not None:
            p = blockparams.parse_block(header.params, c.params)
            tokens += p.n_tokens
            streams = max(streams, len(p.streams))
    lines.append("  segments        " + (", ".join(
        f"{counts[k]} {KIND_NAMES[k]} ({sizes[k]} bytes)" for k in sorted(counts)) or "none"))
    if header.params is not None:
        try:
            p = blockparams.parse_shared(header.params)
        except FormatError as e:
            raise FormatError(f"{e} in neural parameters") from None
        lines += _model_and_backend(p)
        neural_bytes = sum(len(c.neural_payload) for _, c in blocks)
        lines.append(f"  streams         up to {streams} per block ({tokens} tokens, "
                     f"{8 * neural_bytes / max(1, tokens):.3f} bits per token)")
        lines.append(f"  context         window {p.window}, slide {p.slide}, {p.sinks} sink tokens")
    if verbose:
        for i, (e, c) in enumerate(blocks):
            kinds = Counter(s.kind for s in c.segments)
            what = ", ".join(f"{kinds[k]} {KIND_NAMES[k]}" for k in sorted(kinds))
            extra = ""
            if c.params is not None:
                p = blockparams.parse_block(header.params, c.params)
                extra = f", {len(p.streams)} streams, {p.n_tokens} tokens"
            lines.append(f"  block {i:<9} at {i * header.block_size}, {e.orig_size} bytes -> "
                         f"{e.comp_size} at offset {e.offset} "
                         f"({8 * e.comp_size / e.orig_size:.3f} bits/byte; {what}{extra})")
    return "\n".join(lines)


def _model_and_backend(p) -> list[str]:
    """The level, model and backend lines of a file's neural settings (any version)."""
    lines = [f"  level           {p.level}",
             f"  model           {p.model_name} (sha256 {p.model_sha256[:16]})"]
    if p.model_derived:
        lines.append(f"                  {p.model_derived['format']}, derived from sha256 "
                     f"{p.model_derived['from'][:16]}")
    built = (f"llama-cpp-python {p.backend_version}" if not p.device else
             ", ".join(f"{k} {v}" for k, v in p.device.items()))
    lines.append(f"  backend         {p.backend_name} ({built}), fingerprint "
                 f"{p.fingerprint[:16]}")
    if p.backend_name not in ("none", "torch"):  # torch: its description is above
        wb = p.weight_buffers or "not recorded (nacz 0.1: llama.cpp's default, extra)"
        lines.append(f"                  weight buffers {wb}, SIMD level "
                     f"{llama.simd_level(p.cpu)}")
    return lines
