"""Format version 2 end to end: read blocks, code them with workers, write in order.

Compression reads the input one block at a time (``block_size`` bytes; block boundaries
depend on nothing else), hands blocks to the workers, and writes each coded block as soon
as it and all blocks before it are done; memory holds a bounded number of blocks, never
the whole input. Decompression mirrors it: each block is checked against its checksum
before it is written, the index and the whole-file checksum at the end.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from typing import BinaryIO, Callable

from . import blockfile, codec, container
from .blockfile import FileHeader, Index, IndexEntry, Source
from .container import CHECKSUM_SIZE, Container
from .errors import FormatError, IntegrityError, NaczError
from .workers import DecodeJob, EncodeJob, InlinePool, ProcessPool, ordered, \
    threads_per_worker

Progress = Callable[[int], None]  # bytes of the original done so far


@dataclass(frozen=True)
class Parallel:
    """Where blocks are coded: ``jobs`` local processes (1: in this process), or Ray
    workers (``ray``: True, ``ray_address``: a cluster, else $RAY_ADDRESS, else local)."""

    jobs: int = 1
    ray: bool = False
    ray_address: str | None = None
    ray_workers: int | None = None  # None: one per CPU Ray reports


def _pool(job_for_threads, parallel: Parallel, threads: int):
    """A pool for ``job_for_threads(threads per worker)``."""
    if parallel.ray:
        from .ray_pool import RayPool
        return RayPool(job_for_threads, parallel, threads)
    jobs = parallel.jobs or codec.default_threads()
    job = job_for_threads(threads_per_worker(threads, jobs))
    return InlinePool(job) if jobs == 1 else ProcessPool(job, jobs)


def _read_block(f: BinaryIO, size: int) -> bytes:
    """Exactly ``size`` bytes, fewer only at the end of the input."""
    parts, left = [], size
    while left:
        got = f.read(left)
        if not got:
            break
        parts.append(got)
        left -= len(got)
    return b"".join(parts)


def _write(f: BinaryIO, data: bytes) -> None:
    view = memoryview(data)
    while view:  # an unbuffered stdout may take only part of a write
        n = f.write(view)
        if n is None:  # a non-blocking stream that took nothing
            continue
        if not n:
            raise OSError("could not write the output")
        view = view[n:]


# -- compression ------------------------------------------------------------------------
def compress_stream(fin: BinaryIO, fout: BinaryIO, options: codec.Options | None = None,
                    parallel: Parallel = Parallel(), progress: Progress | None = None
                    ) -> tuple[int, int]:
    """Compress ``fin`` to ``fout`` in format version 2; returns (bytes in, bytes out)."""
    opts = options or codec.Options()
    plan = codec.plan_for(opts)
    first = _read_block(fin, plan.block_size)
    if len(first) < plan.block_size and not codec.has_text(first):
        # The whole input is one block without text: no model is needed at all.
        blocks = [blockfile.write_block(codec._binary_only(first))] if first else []
        return _write_file(fout, plan.block_size, None, [first] if first else [],
                           iter(blocks), progress)
    threads = opts.threads or codec.default_threads()
    pool = _pool(lambda t: EncodeJob(plan, t), parallel, threads)
    ok = False
    try:
        shared = pool.submit("shared").result()

        def originals():
            data = first
            while data:
                yield data
                if len(data) < plan.block_size:
                    return
                data = _read_block(fin, plan.block_size)

        seen: list[bytes] = []

        def items():
            for data in originals():
                seen.append(data)
                yield shared, data

        coded = ordered(pool, "encode", items())
        result = _write_file(fout, plan.block_size, shared, seen, coded, progress)
        ok = True
        return result
    finally:
        pool.close(abort=not ok)


def _write_file(fout, block_size: int, shared: dict | None, originals: list[bytes],
                coded, progress: Progress | None) -> tuple[int, int]:
    """Header, each coded block as it comes (``originals`` grows alongside: block i's
    bytes are ``originals[i]`` until written), index, footer."""
    head = blockfile.write_header(block_size, shared)
    _write(fout, head)
    pos, total, entries = len(head), 0, []
    whole = hashlib.blake2b(digest_size=CHECKSUM_SIZE)
    for i, raw in enumerate(coded):
        data = originals[i]
        originals[i] = b""  # written: let it go
        _write(fout, raw)
        entries.append(IndexEntry(pos, len(raw), len(data), container.checksum(data)))
        whole.update(data)
        pos += len(raw)
        total += len(data)
        if progress is not None:
            progress(total)
    tail = blockfile.write_index(Index(entries, total, whole.digest(), pos))
    _write(fout, tail)
    fout.flush()
    return total, pos + len(tail)


# -- decompression ----------------------------------------------------------------------
def is_blocks_file(prefix: bytes) -> bool:
    return prefix[:4] == container.MAGIC and prefix[4:5] == bytes([blockfile.VERSION])


def _named(i: int, e: NaczError) -> NaczError:
    msg = str(e)
    if msg.startswith("block "):
        return e
    return type(e)(f"block {i}: {msg}")


def decompress_stream(fin: BinaryIO, fout: BinaryIO, options: codec.Options | None = None,
                      parallel: Parallel = Parallel(), progress: Progress | None = None,
                      prefix: bytes = b"") -> tuple[int, int]:
    """Decompress a version-2 file from ``fin`` to ``fout`` block by block; each block is
    verified before it is written, the index and whole checksum at the end. On a damaged
    block, the blocks before it have been written already (the caller removes an output
    file). ``prefix``: the first bytes of ``fin``, if read already. Returns (in, out)."""
    opts = options or codec.Options()
    src = Source(fin)
    header = blockfile.read_header(src, prefix)
    threads = opts.threads or codec.default_threads()
    pool = _pool(lambda t: DecodeJob(header.params, _model_arg(opts), t), parallel, threads)
    found: list[IndexEntry] = []
    end: list[Index] = []

    def blocks():
        i = 0
        while True:
            start = src.pos
            try:
                item = blockfile.read_next(src, header)
                if isinstance(item, Index):
                    end.append(item)
                    return
                _check_block_shape(item, header, found)
            except NaczError as e:
                raise _named(i, e) from None
            found.append(IndexEntry(start, src.pos - start, item.orig_len, item.checksum))
            yield item
            i += 1

    ok = False
    try:
        total = 0
        whole = hashlib.blake2b(digest_size=CHECKSUM_SIZE)
        results = ordered(pool, "decode", blocks())
        i = 0
        while True:
            try:
                out = next(results)
            except StopIteration:
                break
            except NaczError as e:
                raise _named(i, e) from None
            entry = found[i]
            if len(out) != entry.orig_size or container.checksum(out) != entry.checksum:
                raise IntegrityError(f"block {i}: does not match its checksum")
            _write(fout, out)
            whole.update(out)
            total += len(out)
            i += 1
            if progress is not None:
                progress(total)
        index = end[0]
        if index.entries != found or index.orig_size != total:
            raise FormatError("corrupt index (does not describe the blocks read)")
        if whole.digest() != index.checksum:
            raise IntegrityError("decompressed data does not match the stored checksum")
        fout.flush()
        ok = True
        return src.pos, total
    finally:
        pool.close(abort=not ok)


def _model_arg(opts: codec.Options):
    return None if opts.model is None else str(opts.model)


def _check_block_shape(c: Container, header: FileHeader, before: list[IndexEntry]) -> None:
    """Blocks are exactly ``block_size`` long, the last one at most that."""
    if before and before[-1].orig_size != header.block_size:
        raise FormatError("corrupt file (a short block before the last)")
    if c.params is not None and header.params is None:
        raise FormatError("corrupt file (a neural block without shared settings)")


def decompress_bytes(data: bytes, options: codec.Options | None = None,
                     parallel: Parallel = Parallel()) -> bytes:
    out = io.BytesIO()
    decompress_stream(io.BytesIO(data), out, options, parallel)
    return out.getvalue()


def compress_bytes(data: bytes, options: codec.Options | None = None,
                   parallel: Parallel = Parallel()) -> bytes:
    out = io.BytesIO()
    compress_stream(io.BytesIO(data), out, options, parallel)
    return out.getvalue()


# -- random access ----------------------------------------------------------------------
def read_layout(f: BinaryIO, file_size: int) -> tuple[FileHeader, Index]:
    """Header and index of a seekable version-2 file (index checked against the header)."""
    f.seek(0)
    header = blockfile.read_header(Source(f))
    index = blockfile.read_index_at_end(f, file_size, header)
    blockfile.check_index(index, header)
    return header, index


def decompress_range(f: BinaryIO, file_size: int, start: int, end: int | None,
                     fout: BinaryIO,
                     options: codec.Options | None = None,
                     parallel: Parallel = Parallel()) -> int:
    """Write bytes ``start:end`` of the original, decoding only the blocks that cover
    them (each verified against its checksum). Returns the bytes written."""
    opts = options or codec.Options()
    header, index = read_layout(f, file_size)
    end = index.orig_size if end is None else end
    if not 0 <= start <= end <= index.orig_size:
        raise NaczError(f"range {start}:{end} is outside the original "
                        f"(0:{index.orig_size})")
    if start == end:
        return 0
    bs = header.block_size
    first, last = start // bs, (end - 1) // bs
    threads = opts.threads or codec.default_threads()
    pool = _pool(lambda t: DecodeJob(header.params, _model_arg(opts), t), parallel, threads)

    def blocks():
        for i in range(first, last + 1):
            e = index.entries[i]
            f.seek(e.offset)
            src = Source(f, e.offset)
            try:
                c = blockfile.read_next(src, header)
                if not isinstance(c, Container) or src.pos - e.offset != e.comp_size \
                        or c.orig_len != e.orig_size or c.checksum != e.checksum:
                    raise FormatError("corrupt file (block does not match the index)")
                _check_block_shape(c, header, [])
            except NaczError as err:
                raise _named(i, err) from None
            yield c

    ok, written = False, 0
    try:
        results = ordered(pool, "decode", blocks())
        for i in range(first, last + 1):
            try:
                out = next(results)
            except NaczError as e:
                raise _named(i, e) from None
            if container.checksum(out) != index.entries[i].checksum:
                raise IntegrityError(f"block {i}: does not match its checksum")
            lo = max(start - i * bs, 0)
            hi = min(end - i * bs, len(out))
            _write(fout, out[lo:hi])
            written += hi - lo
        fout.flush()
        ok = True
        return written
    finally:
        pool.close(abort=not ok)
