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
FORMAT_VERSION = 1  # one container: the whole original as one block (codec.compress)
BLOCKS_VERSION = 2  # a header, independent blocks, an index, a footer (the command line)
SUPPORTED_VERSIONS = (1, 2)

KIND_BINARY = 0
KIND_NEURAL = 1
KIND_NAMES = {KIND_BINARY: "binary", KIND_NEURAL: "neural"}

METHOD_STORED = 0
METHOD_ZSTD = 1
METHOD_XZ = 2
METHOD_NAMES = {METHOD_STORED: "stored", METHOD_ZSTD: "zstd", METHOD_XZ: "xz"}

FLAG_NEURAL = 0x01
FLAG_BINARY = 0x02
KNOWN_FLAGS = FLAG_NEURAL | FLAG_BINARY

CHECKSUM_SIZE = 8  # BLAKE2b-64 of the whole original
DIGEST_SIZE = 4  # BLAKE2b-32 of one segment's original bytes (says which segment broke)
MAX_PARAMS_SIZE = 1 << 16
MAX_PARAMS_JSON = 1 << 16
MAX_ORIGINAL_SIZE = 1 << 48

_U32 = struct.Struct("<I")

# The neural parameter block is canonical JSON, raw-deflated with this preset dictionary:
# a typical block, so the usual keys and the default model's name and hash cost almost
# nothing. Part of format version 1: changing it needs a new format version.
PARAMS_DICT = (
    b'"ssm":{"beta1":0.8,"beta2":0.99,"boost":3.0,"boost_steps":1000,"chunk":32,"clip":1.0,'
    b'"count_prior":1,"d_conv":4,"d_model":32,"d_state":16,"dt_rank":2,"early_passes":2,'
    b'"early_steps":64,"eps":0.001,"expand":2,"kind":"ssm","lr":0.003,"n_layers":2,'
    b'"seed":1851876218,"version":1}}'
    b'{"backend":{"cpu":"SSE3,SSSE3,AVX,AVX2,F16C,FMA,BMI2,AVX512,AVX512_VBMI,AVX512_VNNI,'
    b'AVX512_BF16,LLAMAFILE,OPENMP,REPACK","fingerprint":"","name":"llama.cpp",'
    b'"version":"0.3.36"},"coder":{"name":"constriction.range","perfect":false,'
    b'"precision":24},"context":{"sinks":4,"slide":512,"window":1024},"ensemble":{"kind":'
    b'"ensemble","llm":true,"mixer":{"dense":0,"kind":"mixed","n_tokens":,"preset":1,'
    b'"version":1},"ssm":null},"level":6,"model":{"derived":{"format":"q8_0","from":'
    b'"b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"},"name":'
    b'"SmolLM2-135M-Instruct.Q4_1.b179c9523d0e6a0f.q8_0.gguf","sha256":'
    b'"7b46609d11703c058397e5cfe4cc6e4b2508cb1eb4c80ddc472a5d421fbdb508","size":144811072},'
    b'"streams":[],"tokenizer":{"start_token":1,"vocab_size":49152}}')


def checksum(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=CHECKSUM_SIZE).digest()


def digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=DIGEST_SIZE).digest()


@dataclass(frozen=True)
class Segment:
    """One region of the original, in order. ``tokens`` is the token count of a neural
    segment (0 for binary ones, whose bytes live in the shared binary stream)."""

    kind: int
    orig_len: int
    tokens: int
    digest: bytes

    @property
    def kind_name(self) -> str:
        return KIND_NAMES[self.kind]


@dataclass
class Container:
    orig_len: int
    checksum: bytes
    segments: list[Segment]
    binary_method: int = METHOD_STORED  # how the concatenated binary segments are packed
    binary_payload: bytes = b""
    params: dict | None = None  # neural parameters; present iff a neural segment exists
    neural_payload: bytes = b""
    version: int = FORMAT_VERSION
    header_size: int = field(default=0, compare=False)

    @property
    def has_neural(self) -> bool:
        return any(s.kind == KIND_NEURAL for s in self.segments)

    @property
    def has_binary(self) -> bool:
        return any(s.kind == KIND_BINARY for s in self.segments)

    @property
    def binary_len(self) -> int:
        return sum(s.orig_len for s in self.segments if s.kind == KIND_BINARY)


# -- small encodings --------------------------------------------------------------------
def uvarint(n: int) -> bytes:
    """Unsigned LEB128."""
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


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
    except (zlib.error, UnicodeDecodeError, ValueError, RecursionError):
        raise FormatError("corrupt header (bad parameter block)") from None
    if not isinstance(params, dict):
        raise FormatError("corrupt header (parameter block is not an object)")
    return params


# -- writing ----------------------------------------------------------------------------
def write(c: Container) -> bytes:
    """Serialise a container; checks the same invariants the reader checks."""
    _check_invariants(c)
    head = bytearray(MAGIC + bytes([FORMAT_VERSION])) + _fields(c)
    head += _U32.pack(zlib.crc32(head))
    body = c.binary_payload + c.neural_payload
    return bytes(head) + body + _U32.pack(zlib.crc32(body))


def _fields(c: Container) -> bytes:
    """Everything of a container after the version byte, up to its header CRC (shared by
    format version 1's one container and version 2's blocks)."""
    flags = (FLAG_NEURAL if c.has_neural else 0) | (FLAG_BINARY if c.has_binary else 0)
    params = pack_params(c.params) if c.params is not None else b""
    head = bytearray([flags])
    head += uvarint(c.orig_len) + c.checksum
    head += uvarint(len(params)) + params
    head += uvarint(len(c.segments))
    for s in c.segments:
        head += bytes([s.kind]) + uvarint(s.orig_len)
        if s.kind == KIND_NEURAL:
            head += uvarint(s.tokens)
        head += s.digest
    if c.has_binary:
        head += bytes([c.binary_method]) + uvarint(len(c.binary_payload))
    if c.has_neural:
        head += uvarint(len(c.neural_payload))
    return bytes(head)


# -- reading ----------------------------------------------------------------------------
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

    def byte(self, what: str) -> int:
        return self.take(1, what)[0]

    def uvarint(self, what: str, limit: int) -> int:
        value, shift = 0, 0
        while True:
            b = self.byte(what)
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                break
            shift += 7
            if shift > 63:
                raise FormatError(f"corrupt header ({what} too long)")
        if value > limit:
            raise FormatError(f"corrupt header ({what} out of range)")
        return value


def read_segment_table(r: _Reader, flags: int, max_count: int, max_size: int,
                       max_payload: int) -> tuple[list[Segment], int, int, int]:
    """The segment table and the payload fields after it (format version 1's header and
    version 2's blocks alike): (segments, binary method, binary size, neural size).
    ``max_count``, ``max_size`` and ``max_payload`` bound what a lying header can claim."""
    nseg = r.uvarint("segment count", max_count)
    segments = []
    for _ in range(nseg):
        kind = r.byte("segment table")
        if kind not in KIND_NAMES:
            raise FormatError(f"corrupt header (unknown segment kind {kind})")
        slen = r.uvarint("segment size", max_size)
        tokens = r.uvarint("token count", slen) if kind == KIND_NEURAL else 0
        segments.append(Segment(kind, slen, tokens, r.take(DIGEST_SIZE, "segment table")))
    has_binary = any(s.kind == KIND_BINARY for s in segments)
    has_neural = any(s.kind == KIND_NEURAL for s in segments)
    if bool(flags & FLAG_BINARY) != has_binary or bool(flags & FLAG_NEURAL) != has_neural:
        raise FormatError("corrupt header (flags disagree with the segment table)")
    method, binary_size, neural_size = METHOD_STORED, 0, 0
    if has_binary:
        method = r.byte("binary method")
        if method not in METHOD_NAMES:
            raise FormatError(f"corrupt header (unknown binary method {method})")
        binary_size = r.uvarint("binary payload size", max_payload)
    if has_neural:
        neural_size = r.uvarint("neural payload size", max_payload)
    return segments, method, binary_size, neural_size


def read(data: bytes) -> Container:
    """Parse and validate a container. Raises FormatError with a one-line reason."""
    if data[:4] != MAGIC:
        if data and MAGIC.startswith(data):
            raise FormatError("truncated file (while reading magic)")
        raise FormatError("not a nacz file (bad magic)" if data else "not a nacz file (empty)")
    r = _Reader(data)
    r.take(4, "magic")
    version = r.byte("version")
    check_version(version)
    if version != FORMAT_VERSION:
        raise FormatError(f"format version {version} is read block by block (nacz.blockfile)")
    flags = r.byte("flags")
    if flags & ~KNOWN_FLAGS:
        raise FormatError(f"unknown header flags 0x{flags:02x}")
    orig_len = r.uvarint("original size", MAX_ORIGINAL_SIZE)
    csum = r.take(CHECKSUM_SIZE, "checksum")
    plen = r.uvarint("parameter block size", MAX_PARAMS_SIZE)
    params_raw = r.take(plen, "parameters")
    # Each entry takes at least 1 + 1 + DIGEST_SIZE bytes: bound the count by what is there.
    segments, method, binary_size, neural_size = read_segment_table(
        r, flags, (len(data) - r.pos) // (2 + DIGEST_SIZE), MAX_ORIGINAL_SIZE, len(data))
    (crc,) = _U32.unpack(r.take(4, "header checksum"))
    if crc != zlib.crc32(data[:r.pos - 4]):
        raise FormatError("corrupt header (header checksum mismatch)")
    header_size = r.pos

    body_len = len(data) - header_size - 4
    if body_len < binary_size + neural_size:
        raise FormatError("truncated file (payload)")
    if body_len > binary_size + neural_size:
        raise FormatError("corrupt file (trailing data after the payload)")
    params = unpack_params(params_raw) if plen else None
    body = data[header_size:header_size + body_len]
    c = Container(orig_len, csum, segments, method, body[:binary_size], params,
                  body[binary_size:], version, header_size)
    _check_invariants(c)
    if zlib.crc32(body) != _U32.unpack(data[header_size + body_len:])[0]:
        raise FormatError("corrupt file (payload checksum mismatch)")
    return c


def check_version(version: int) -> None:
    if version not in SUPPORTED_VERSIONS:
        raise FormatError(
            f"format version {version} is newer than this nacz supports "
            f"(up to {max(SUPPORTED_VERSIONS)}); upgrade nacz")


def check_invariants(c: Container) -> None:
    _check_invariants(c)


def _check_invariants(c: Container) -> None:
    if len(c.checksum) != CHECKSUM_SIZE:
        raise FormatError("corrupt header (checksum size)")
    if not 0 <= c.orig_len <= MAX_ORIGINAL_SIZE:
        raise FormatError("corrupt header (original size out of range)")
    if sum(s.orig_len for s in c.segments) != c.orig_len:
        raise FormatError("corrupt header (segment sizes do not add up)")
    for s in c.segments:
        if len(s.digest) != DIGEST_SIZE or s.kind not in KIND_NAMES:
            raise FormatError("corrupt header (bad segment entry)")
        if s.orig_len == 0:
            raise FormatError("corrupt header (empty segment)")
        # Every token decodes to at least one byte: a neural segment of n bytes holds
        # between 1 and n tokens. Binary segments carry no token count.
        if s.kind == KIND_NEURAL and not 1 <= s.tokens <= s.orig_len:
            raise FormatError("corrupt header (neural token count out of range)")
        if s.kind == KIND_BINARY and s.tokens:
            raise FormatError("corrupt header (token count on a binary segment)")
    for a, b in zip(c.segments, c.segments[1:]):
        if a.kind == b.kind == KIND_BINARY:
            raise FormatError("corrupt header (adjacent binary segments)")
    if c.has_neural != (c.params is not None):
        raise FormatError("corrupt header (neural parameters missing or unexpected)")
    if not c.has_neural and c.neural_payload:
        raise FormatError("corrupt header (neural payload without neural segments)")
    if not c.has_binary and (c.binary_payload or c.binary_method != METHOD_STORED):
        raise FormatError("corrupt header (binary payload without binary segments)")
    if c.binary_method not in METHOD_NAMES:
        raise FormatError("corrupt header (unknown binary method)")
    if c.binary_method == METHOD_STORED and len(c.binary_payload) != c.binary_len:
        raise FormatError("corrupt header (stored binary size)")
