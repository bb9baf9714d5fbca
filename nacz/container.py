"""The nacz container: byte layout, writing, and strict validation on reading.

The layout is specified in ``formats/nc06.md``; this module is its only implementation.
Reading never trusts a size field before checking it against the bytes actually present,
so a hostile header cannot make us allocate or loop on a claimed size.
"""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from dataclasses import dataclass, field

from .errors import FormatError

MAGIC = b"\x8fNCZ"
FORMAT_VERSION = 1
SUPPORTED_VERSIONS = (1,)

KIND_STORED = 0
KIND_ZSTD = 1
KIND_NEURAL = 2
KIND_NAMES = {KIND_STORED: "stored", KIND_ZSTD: "zstd", KIND_NEURAL: "neural"}

FLAG_NEURAL = 0x01
KNOWN_FLAGS = FLAG_NEURAL

CHECKSUM_SIZE = 16  # BLAKE2b-128 of the whole original
DIGEST_SIZE = 8  # BLAKE2b-64 of one segment's original bytes, and of the payload area
MAX_PARAMS_SIZE = 1 << 16
MAX_ORIGINAL_SIZE = 1 << 48

_FIXED = struct.Struct("<4sBBQ")  # magic, version, flags, original length
_ENTRY = struct.Struct("<BQQ8s")  # kind, original length, aux, digest
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


def checksum(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=CHECKSUM_SIZE).digest()


def digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=DIGEST_SIZE).digest()


@dataclass(frozen=True)
class Segment:
    """One region of the original.

    ``aux`` is the payload length for stored and zstd segments and the token count for
    neural segments (whose tokens all live in the one shared neural payload).
    """

    kind: int
    orig_len: int
    aux: int
    digest: bytes

    @property
    def kind_name(self) -> str:
        return KIND_NAMES[self.kind]


@dataclass
class Container:
    orig_len: int
    checksum: bytes
    segments: list[Segment]
    payloads: list[bytes]  # one per non-neural segment, in segment order
    params: dict | None = None  # neural parameters; present iff a neural segment exists
    neural_payload: bytes = b""
    version: int = FORMAT_VERSION
    header_size: int = field(default=0, compare=False)

    @property
    def has_neural(self) -> bool:
        return any(s.kind == KIND_NEURAL for s in self.segments)


MAX_PARAMS_JSON = 1 << 16

# The neural parameter block is canonical JSON, raw-deflated with this preset dictionary:
# a typical block, so the usual keys and the default model's name and hash cost almost
# nothing. Part of format version 1: changing it needs a new format version.
PARAMS_DICT = (
    b'{"backend":{"cpu":"SSE3,SSSE3,AVX,AVX2,F16C,FMA,BMI2,AVX512,AVX512_VBMI,AVX512_VNNI,'
    b'AVX512_BF16,LLAMAFILE,OPENMP,REPACK","fingerprint":"","name":"llama.cpp",'
    b'"version":"0.3.36"},"coder":{"name":"constriction.range","perfect":false,'
    b'"precision":24},"context":{"sinks":4,"slide":512,"window":1024},'
    b'"ensemble":{"kind":"llm"},"model":{"name":"SmolLM2-135M-Instruct.Q4_1.gguf",'
    b'"sha256":"b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",'
    b'"size":98362432},"streams":[],"tokenizer":{"start_token":1,"vocab_size":49152}}')


def canonical_json(obj: dict) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def pack_params(obj: dict) -> bytes:
    z = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, PARAMS_DICT)
    return z.compress(canonical_json(obj)) + z.flush()


def unpack_params(raw: bytes) -> dict:
    try:
        z = zlib.decompressobj(-15, PARAMS_DICT)
        text = z.decompress(raw, MAX_PARAMS_JSON)
        if not z.eof or z.unconsumed_tail or z.unused_data:
            raise ValueError("bad deflate stream")
        params = json.loads(text.decode("ascii"))
    except (zlib.error, UnicodeDecodeError, ValueError):
        raise FormatError("corrupt header (bad parameter block)") from None
    if not isinstance(params, dict):
        raise FormatError("corrupt header (parameter block is not an object)")
    return params


def write(c: Container) -> bytes:
    """Serialise a container; validates the same invariants the reader checks."""
    _check_invariants(c, len(c.neural_payload), [len(p) for p in c.payloads])
    flags = FLAG_NEURAL if c.has_neural else 0
    params = pack_params(c.params) if c.params is not None else b""
    head = bytearray(_FIXED.pack(MAGIC, FORMAT_VERSION, flags, c.orig_len))
    head += c.checksum
    head += _U32.pack(len(params)) + params
    head += _U32.pack(len(c.segments))
    for s in c.segments:
        head += _ENTRY.pack(s.kind, s.orig_len, s.aux, s.digest)
    head += _U64.pack(len(c.neural_payload))
    head += _U32.pack(zlib.crc32(head))
    body = b"".join(c.payloads) + c.neural_payload
    return bytes(head) + body + digest(body)


class _Reader:
    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise FormatError(f"truncated file (while reading {what})")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, st: struct.Struct, what: str):
        return st.unpack(self.take(st.size, what))


def read_header_version(data: bytes) -> int:
    if len(data) < len(MAGIC) or data[:4] != MAGIC:
        raise FormatError("not a nacz file (bad magic)")
    if len(data) < 5:
        raise FormatError("truncated file (while reading version)")
    return data[4]


def read(data: bytes) -> Container:
    """Parse and validate a container. Raises FormatError with a one-line reason."""
    version = read_header_version(data)
    if version not in SUPPORTED_VERSIONS:
        raise FormatError(
            f"format version {version} is newer than this nacz supports "
            f"(up to {max(SUPPORTED_VERSIONS)}); upgrade nacz")
    r = _Reader(data)
    _, version, flags, orig_len = r.unpack(_FIXED, "header")
    if flags & ~KNOWN_FLAGS:
        raise FormatError(f"unknown header flags 0x{flags:02x}")
    if orig_len > MAX_ORIGINAL_SIZE:
        raise FormatError("corrupt header (original size out of range)")
    csum = r.take(CHECKSUM_SIZE, "checksum")
    (plen,) = r.unpack(_U32, "parameter length")
    if plen > MAX_PARAMS_SIZE:
        raise FormatError("corrupt header (parameter block too large)")
    params_raw = r.take(plen, "parameters")
    (nseg,) = r.unpack(_U32, "segment count")
    if nseg * _ENTRY.size > len(data) - r.pos:
        raise FormatError("truncated file (segment table)")
    entries = [r.unpack(_ENTRY, "segment table") for _ in range(nseg)]
    (neural_len,) = r.unpack(_U64, "neural payload length")
    (crc,) = r.unpack(_U32, "header checksum")
    if crc != zlib.crc32(data[:r.pos - _U32.size]):
        raise FormatError("corrupt header (header checksum mismatch)")
    header_size = r.pos

    segments = []
    for kind, slen, aux, dig in entries:
        if kind not in KIND_NAMES:
            raise FormatError(f"corrupt header (unknown segment kind {kind})")
        segments.append(Segment(kind, slen, aux, dig))

    params = unpack_params(params_raw) if plen else None
    if bool(flags & FLAG_NEURAL) != (params is not None):
        raise FormatError("corrupt header (neural flag and parameters disagree)")

    stored_lens = [s.aux for s in segments if s.kind != KIND_NEURAL]
    body_len = len(data) - header_size - DIGEST_SIZE
    if body_len < 0 or sum(stored_lens) + neural_len != body_len:
        raise FormatError("truncated file" if body_len < sum(stored_lens) + neural_len
                          else "corrupt file (trailing data or wrong payload sizes)")
    c = Container(orig_len, csum, segments, [], params, b"", version, header_size)
    _check_invariants(c, neural_len, stored_lens)

    body = data[header_size:header_size + body_len]
    if digest(body) != data[header_size + body_len:]:
        raise FormatError("corrupt file (payload checksum mismatch)")
    pos = 0
    for n in stored_lens:
        c.payloads.append(body[pos:pos + n])
        pos += n
    c.neural_payload = body[pos:]
    return c


def _check_invariants(c: Container, neural_len: int, stored_lens: list[int]) -> None:
    if len(c.checksum) != CHECKSUM_SIZE:
        raise FormatError("corrupt header (checksum size)")
    if sum(s.orig_len for s in c.segments) != c.orig_len:
        raise FormatError("corrupt header (segment sizes do not add up)")
    if c.orig_len and not c.segments:
        raise FormatError("corrupt header (no segments)")
    if len(stored_lens) != sum(1 for s in c.segments if s.kind != KIND_NEURAL):
        raise FormatError("corrupt header (payload count)")
    for s in c.segments:
        if len(s.digest) != DIGEST_SIZE:
            raise FormatError("corrupt header (digest size)")
        if s.orig_len == 0:
            raise FormatError("corrupt header (empty segment)")
        if s.kind == KIND_STORED and s.aux != s.orig_len:
            raise FormatError("corrupt header (stored segment size)")
        if s.kind == KIND_ZSTD and s.aux == 0:
            raise FormatError("corrupt header (empty zstd payload)")
        # Every token decodes to at least one byte, so a neural segment of n bytes
        # holds between 1 and n tokens.
        if s.kind == KIND_NEURAL and not 1 <= s.aux <= s.orig_len:
            raise FormatError("corrupt header (neural token count out of range)")
    if c.has_neural != (c.params is not None):
        raise FormatError("corrupt header (neural parameters missing)")
    if not c.has_neural and neural_len:
        raise FormatError("corrupt header (neural payload without neural segments)")
