"""The binary stream: all binary segments, concatenated, packed with the best of
stored / zstd / xz. Unpacking grows its output only as data arrives, up to the size the
(validated) header claims — never allocating from a claimed size."""

from __future__ import annotations

import io
import lzma

import zstandard

from .container import METHOD_STORED, METHOD_XZ, METHOD_ZSTD
from .errors import FormatError

ZSTD_LEVEL = 19
# Raw LZMA2 (no .xz container: the header already says what this is), xz -9e's settings.
XZ_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}]
_BLOCK = 1 << 20


def pack(data: bytes) -> tuple[int, bytes]:
    """(method, payload): the smallest of the three; stored wins ties."""
    params = zstandard.ZstdCompressionParameters.from_level(
        ZSTD_LEVEL, source_size=len(data), enable_ldm=True)
    candidates = [
        (METHOD_STORED, data),
        (METHOD_ZSTD, zstandard.ZstdCompressor(compression_params=params).compress(data)),
        (METHOD_XZ, lzma.compress(data, format=lzma.FORMAT_RAW, filters=XZ_FILTERS)),
    ]
    return min(candidates, key=lambda c: (len(c[1]), c[0]))


def unpack(method: int, payload: bytes, size: int) -> bytes:
    if method == METHOD_STORED:
        out = payload
    elif method == METHOD_ZSTD:
        out = _unzstd(payload, size)
    elif method == METHOD_XZ:
        out = _unxz(payload, size)
    else:
        raise FormatError(f"unknown binary method {method}")
    if len(out) != size:
        raise FormatError("corrupt binary stream (wrong decompressed size)")
    return out


def _unzstd(payload: bytes, size: int) -> bytes:
    out = bytearray()
    try:
        with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(payload)) as r:
            while len(out) < size:
                block = r.read(min(_BLOCK, size - len(out)))
                if not block:
                    break
                out += block
            if r.read(1):
                raise FormatError("corrupt binary stream (more data than declared)")
    except zstandard.ZstdError as e:
        raise FormatError(f"corrupt binary stream ({e})") from None
    return bytes(out)


def _unxz(payload: bytes, size: int) -> bytes:
    d = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=XZ_FILTERS)
    out = bytearray()
    try:
        chunk = d.decompress(payload, max_length=min(_BLOCK, size + 1))
        while True:
            out += chunk
            if len(out) > size:
                raise FormatError("corrupt binary stream (more data than declared)")
            if d.eof or not chunk:
                break
            chunk = d.decompress(b"", max_length=min(_BLOCK, size + 1 - len(out)))
    except lzma.LZMAError as e:
        raise FormatError(f"corrupt binary stream ({e})") from None
    if not d.eof:
        raise FormatError("corrupt binary stream (truncated xz data)")
    return bytes(out)
