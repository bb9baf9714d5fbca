"""Format version 2: a file header, independent blocks, an index and a footer.

Written in one pass (to a pipe too): the header holds what all blocks share, each block is
a version-1 container body on its own (its segment table, streams, payloads, checksum),
and the index at the end lists every block's offset, sizes and checksum, followed by a
fixed-size footer that locates the index from the end of the file (random access).
The byte layout is specified in ``formats/nc06.md``. Reading never allocates from a
claimed size before the bytes are there: payloads are read in bounded chunks.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import BinaryIO

from . import container
from .container import (CHECKSUM_SIZE, KNOWN_FLAGS, MAGIC, MAX_ORIGINAL_SIZE,
                        MAX_PARAMS_SIZE, METHOD_STORED, Container, uvarint)
from .errors import FormatError
from .plan import MAX_BLOCK_SIZE, MIN_BLOCK_SIZE

VERSION = container.BLOCKS_VERSION
TAG_BLOCK = 0x01
TAG_INDEX = 0x00
END_MAGIC = b"ZCN\x8f"  # the magic reversed: the last four bytes of every version-2 file
FOOTER_SIZE = 8  # index size (u32) + END_MAGIC
INDEX_ENTRY_MIN = 3 + CHECKSUM_SIZE  # offset, sizes (one byte each at least), checksum
# A block's payloads never exceed its original size by more than this: a neural block
# is only kept when it is smaller than the block stored as binary (codec.encode_block).
PAYLOAD_SLACK = 1024
_U32 = struct.Struct("<I")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class FileHeader:
    block_size: int
    params: dict | None  # the settings shared by all blocks; None: no neural block
    size: int  # bytes, i.e. the offset of the first block


@dataclass(frozen=True)
class IndexEntry:
    offset: int  # of the block's tag byte, from the start of the file
    comp_size: int  # bytes of the block, tag to payload CRC
    orig_size: int
    checksum: bytes  # BLAKE2b-64 of the block's original bytes


@dataclass(frozen=True)
class Index:
    entries: list[IndexEntry]
    orig_size: int
    checksum: bytes  # of the whole original
    offset: int  # of the index's tag byte


# -- writing ----------------------------------------------------------------------------
def write_header(block_size: int, params: dict | None) -> bytes:
    if not MIN_BLOCK_SIZE <= block_size <= MAX_BLOCK_SIZE:
        raise ValueError("block size out of range")
    packed = container.pack_params(params) if params is not None else b""
    head = bytearray(MAGIC + bytes([VERSION, 0])) + uvarint(block_size)
    head += uvarint(len(packed)) + packed
    return bytes(head + _U32.pack(zlib.crc32(head)))


def write_block(c: Container) -> bytes:
    container.check_invariants(c)
    head = bytes([TAG_BLOCK]) + container._fields(c)
    body = c.binary_payload + c.neural_payload
    return head + _U32.pack(zlib.crc32(head)) + body + _U32.pack(zlib.crc32(body))


def write_index(index: Index) -> bytes:
    """The index and the footer: the last bytes of the file."""
    out = bytearray([TAG_INDEX]) + uvarint(len(index.entries))
    for e in index.entries:
        out += uvarint(e.offset) + uvarint(e.comp_size) + uvarint(e.orig_size) + e.checksum
    out += uvarint(index.orig_size) + index.checksum
    out += _U32.pack(zlib.crc32(out))
    return bytes(out + _U32.pack(len(out)) + END_MAGIC)


# -- reading ----------------------------------------------------------------------------
class Source(container._Reader):
    """A readable file object as a reader: counts bytes, reads claimed sizes in bounded
    chunks (a hostile size costs what is really there, no more), CRC of a stretch."""

    def __init__(self, f: BinaryIO, pos: int = 0):
        super().__init__(b"")
        self.f = f
        self.pos = pos
        self.crc: int | None = None

    def take(self, n: int, what: str) -> bytes:
        if n < 0:
            raise FormatError(f"truncated file (while reading {what})")
        chunks, left = [], n
        while left:
            got = self.f.read(min(left, _CHUNK))
            if not got:
                raise FormatError(f"truncated file (while reading {what})")
            chunks.append(got)
            left -= len(got)
        out = b"".join(chunks)
        self.pos += n
        if self.crc is not None:
            self.crc = zlib.crc32(out, self.crc)
        return out

    def at_end(self) -> bool:
        return not self.f.read(1)

    def check_crc(self, what: str) -> None:
        expect = self.crc
        self.crc = None
        (crc,) = _U32.unpack(self.take(4, f"{what} checksum"))
        if crc != expect:
            raise FormatError(f"corrupt {what} ({what} checksum mismatch)")


def read_header(src: Source, prefix: bytes = b"") -> FileHeader:
    """The file header. ``prefix``: its first bytes, when the caller read them already
    (magic and version, to tell the format versions apart)."""
    src.crc = zlib.crc32(prefix)
    src.pos = len(prefix)
    head = prefix + src.take(5 - len(prefix), "header")
    if head[:4] != MAGIC or head[4] != VERSION:
        raise FormatError("not a nacz file of format version 2")
    flags = src.byte("flags")
    if flags:
        raise FormatError(f"unknown header flags 0x{flags:02x}")
    block_size = src.uvarint("block size", MAX_BLOCK_SIZE)
    if block_size < MIN_BLOCK_SIZE:
        raise FormatError("corrupt header (block size out of range)")
    plen = src.uvarint("parameter block size", MAX_PARAMS_SIZE)
    raw = src.take(plen, "parameters")
    src.check_crc("header")
    params = container.unpack_params(raw) if plen else None
    return FileHeader(block_size, params, src.pos)


def read_next(src: Source, header: FileHeader) -> Container | Index:
    """The next block, or the index (then the footer and the end of the file are
    checked too)."""
    start = src.pos
    src.crc = 0
    tag = src.byte("block tag")
    if tag == TAG_INDEX:
        return _read_index(src, start)
    if tag != TAG_BLOCK:
        raise FormatError(f"corrupt file (unknown block tag {tag})")
    return _read_block(src, header.block_size)


def _read_block(src: Source, block_size: int) -> Container:
    flags = src.byte("block flags")
    if flags & ~KNOWN_FLAGS:
        raise FormatError(f"unknown block flags 0x{flags:02x}")
    orig_len = src.uvarint("block size", block_size)
    csum = src.take(CHECKSUM_SIZE, "checksum")
    plen = src.uvarint("parameter block size", MAX_PARAMS_SIZE)
    params_raw = src.take(plen, "parameters")
    # Every segment covers at least one byte: at most orig_len of them.
    segments, method, binary_size, neural_size = container.read_segment_table(
        src, flags, orig_len, orig_len, orig_len + PAYLOAD_SLACK)
    src.check_crc("block header")
    params = container.unpack_params(params_raw) if plen else None
    # Invariants that need no payload first, so a lying header costs no payload read.
    c = Container(orig_len, csum, segments, method, b"", params, b"", VERSION)
    if orig_len == 0:
        raise FormatError("corrupt header (empty block)")
    if method == METHOD_STORED and c.has_binary and binary_size != c.binary_len:
        raise FormatError("corrupt header (stored binary size)")
    src.crc = 0
    c.binary_payload = src.take(binary_size, "binary payload")
    c.neural_payload = src.take(neural_size, "neural payload")
    src.check_crc("payload")
    container.check_invariants(c)
    return c


def _read_index(src: Source, start: int) -> Index:
    count = src.uvarint("block count", start // INDEX_ENTRY_MIN + 1)
    entries = []
    for _ in range(count):
        entries.append(IndexEntry(src.uvarint("block offset", MAX_ORIGINAL_SIZE << 1),
                                  src.uvarint("block size", MAX_ORIGINAL_SIZE << 1),
                                  src.uvarint("block size", MAX_BLOCK_SIZE),
                                  src.take(CHECKSUM_SIZE, "index")))
    orig_size = src.uvarint("original size", MAX_ORIGINAL_SIZE)
    csum = src.take(CHECKSUM_SIZE, "checksum")
    index_len = src.pos - start
    src.check_crc("index")
    (size,) = _U32.unpack(src.take(4, "footer"))
    if src.take(4, "footer") != END_MAGIC or size != index_len + 4:
        raise FormatError("corrupt file (bad footer)")
    if not src.at_end():
        raise FormatError("corrupt file (trailing data after the footer)")
    return Index(entries, orig_size, csum, start)


def read_index_at_end(f: BinaryIO, file_size: int, header: FileHeader) -> Index:
    """The index of a seekable file, found through the footer (random access)."""
    if file_size < header.size + 1 + FOOTER_SIZE:
        raise FormatError("truncated file (no index)")
    f.seek(file_size - FOOTER_SIZE)
    tail = f.read(FOOTER_SIZE)
    if len(tail) != FOOTER_SIZE or tail[4:] != END_MAGIC:
        raise FormatError("corrupt file (bad footer)")
    (size,) = _U32.unpack(tail[:4])
    start = file_size - FOOTER_SIZE - size
    if not header.size <= start < file_size - FOOTER_SIZE:
        raise FormatError("corrupt file (index size out of range)")
    f.seek(start)
    src = Source(f, start)
    src.crc = 0
    if src.byte("index tag") != TAG_INDEX:
        raise FormatError("corrupt file (no index where the footer points)")
    return _read_index(src, start)


def check_index(index: Index, header: FileHeader) -> None:
    """The index describes whole blocks of the recorded size, back to back from the
    header to the index itself."""
    pos, total = header.size, 0
    for i, e in enumerate(index.entries):
        last = i == len(index.entries) - 1
        if e.offset != pos or e.comp_size < 1:
            raise FormatError(f"corrupt index (block {i} offset)")
        if not (1 <= e.orig_size <= header.block_size if last
                else e.orig_size == header.block_size):
            raise FormatError(f"corrupt index (block {i} size)")
        pos += e.comp_size
        total += e.orig_size
    if pos != index.offset or total != index.orig_size:
        raise FormatError("corrupt index (sizes do not add up)")
