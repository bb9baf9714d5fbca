"""Format version 2: independent blocks, the index, streaming, ranges, hostile files.

Real model (its tokenizer for the LLM-free level; the LLM for one small case), real coder,
real subprocesses for the command line.
"""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import zlib

import pytest

from nacz import blockfile, codec, container, stream
from nacz.blockfile import MAGIC, uvarint
from nacz.errors import FormatError, IntegrityError, NaczError

from conftest import assert_one_line_error, os_text, run_nacz

FREE_1K = codec.Options(model="none", block_size=1024)
# Prose, a binary run and more prose: several 1 KiB blocks, neural and binary segments.
HYBRID = os_text("GPL-3", 2500) + bytes(range(200)) + os_text("Apache-2.0", 1500)


@pytest.fixture(scope="module")
def packed() -> bytes:
    return stream.compress_bytes(HYBRID, FREE_1K)


def _blocks(raw: bytes):
    src = blockfile.Source(io.BytesIO(raw))
    header = blockfile.read_header(src)
    out = []
    while True:
        item = blockfile.read_next(src, header)
        if isinstance(item, blockfile.Index):
            return header, out, item
        out.append(item)


def _damage_block(raw: bytes, i: int) -> bytes:
    """Flip a bit inside block i's payload (caught by its payload CRC)."""
    _, index = stream.read_layout(io.BytesIO(raw), len(raw))
    e = index.entries[i]
    bad = bytearray(raw)
    bad[e.offset + e.comp_size - 6] ^= 0x01
    return bytes(bad)


def test_round_trip_in_blocks(packed):
    header, blocks, index = _blocks(packed)
    assert header.block_size == 1024 and len(blocks) == -(-len(HYBRID) // 1024)
    assert [c.orig_len for c in blocks] == [1024] * (len(blocks) - 1) + [len(HYBRID) % 1024]
    assert any(c.has_neural for c in blocks) and any(c.has_binary for c in blocks)
    assert index.orig_size == len(HYBRID) and index.checksum == container.checksum(HYBRID)
    assert stream.decompress_bytes(packed) == HYBRID
    assert codec.decompress(packed) == HYBRID  # the library's decompress reads both versions


@pytest.mark.parametrize("data", [b"", b"x", bytes(range(256)) * 9, b"plain text\n"])
def test_small_and_binary_inputs(data):
    out = stream.compress_bytes(data, FREE_1K)
    assert stream.decompress_bytes(out) == data
    header, blocks, _ = _blocks(out)
    if len(data) <= 1024 and not codec.has_text(data):
        assert header.params is None  # no model was needed, and none is named


def test_blocks_depend_only_on_their_bytes(packed):
    """Block i of a file equals block 0 of the same bytes compressed alone: no state
    crosses a block boundary (so any worker may code any block)."""
    _, blocks, _ = _blocks(packed)
    alone = stream.compress_bytes(HYBRID[1024:2048], FREE_1K)
    assert _blocks(alone)[1][0] == blocks[1]


def test_shared_settings_are_in_the_header_once(packed):
    header, blocks, _ = _blocks(packed)
    p = header.params
    assert p["model"]["sha256"] and p["backend"]["fingerprint"] and p["probe"]
    for c in blocks:
        if c.params is not None:
            assert set(c.params) <= {"streams", "ensemble", "alphabet"}


def test_byte_changes_and_truncations_are_refused(packed):
    # Every byte of the header and the index; every 9th in between (each decode of a
    # change in a late block decodes the blocks before it: a full sweep takes minutes).
    header_size = blockfile.read_header(blockfile.Source(io.BytesIO(packed))).size
    index_size = 8 + struct.unpack("<I", packed[-8:-4])[0]
    positions = sorted(set(range(header_size)) | set(range(header_size, len(packed), 9))
                       | set(range(len(packed) - index_size, len(packed))))
    for i in positions:
        bad = bytearray(packed)
        bad[i] ^= 0x41
        with pytest.raises(NaczError):
            stream.decompress_bytes(bytes(bad))
    for n in range(0, len(packed), 7):
        with pytest.raises(NaczError):
            stream.decompress_bytes(packed[:n])
    with pytest.raises(FormatError, match="trailing"):
        stream.decompress_bytes(packed + b"\0")


def _header(block_size: int, params: bytes = b"") -> bytes:
    head = MAGIC + bytes([2, 0]) + uvarint(block_size) + uvarint(len(params)) + params
    return head + struct.pack("<I", zlib.crc32(head))


def test_hostile_sizes_are_one_line_errors_without_allocation():
    cases = [
        (_header(1 << 40), "block size out of range"),  # a terabyte block
        (_header(100), "block size out of range"),
        (MAGIC + bytes([2, 0]) + uvarint(4096) + uvarint(1 << 40), "out of range"),
    ]
    # A block claiming a 2^40-byte payload in a 4 KiB-block file: refused from its header.
    seg = bytes([0]) + uvarint(4096) + bytes(4)
    block = (bytes([1, 2]) + uvarint(4096) + bytes(8) + uvarint(0) + uvarint(1) + seg
             + bytes([1]) + uvarint(1 << 40))
    cases.append((_header(4096) + block + struct.pack("<I", zlib.crc32(block)), "out of range"))
    # An index claiming 2^60 blocks.
    index = bytes([0]) + uvarint(1 << 60)
    cases.append((_header(4096) + index, "out of range"))
    for raw, message in cases:
        with pytest.raises(FormatError, match=message):
            stream.decompress_bytes(raw)


def test_a_damaged_block_is_named(packed):
    """A payload that passes the structure checks but decodes wrong (resealed CRC)."""
    header, blocks, _ = _blocks(packed)
    i = next(k for k, c in enumerate(blocks) if c.has_neural and k > 0)
    bad_block = blocks[i]
    payload = bytearray(bad_block.neural_payload)
    payload[len(payload) // 2] ^= 0x20
    bad_block.neural_payload = bytes(payload)
    raw = bytearray(packed)
    src = blockfile.Source(io.BytesIO(packed))
    blockfile.read_header(src)
    offsets = []
    for _ in range(i + 1):
        offsets.append(src.pos)
        blockfile.read_next(src, header)
    new = blockfile.write_block(bad_block)
    raw[offsets[i]:src.pos] = new
    with pytest.raises((IntegrityError, FormatError), match=f"block {i}"):
        stream.decompress_bytes(bytes(raw))


def test_cli_damaged_block_removes_the_output_file_and_keeps_verified_blocks_on_stdout(
        tmp_path, packed):
    n_blocks = -(-len(HYBRID) // 1024)
    src = tmp_path / "d.bin.nc"
    src.write_bytes(_damage_block(packed, n_blocks - 1))
    r = run_nacz("decompress", src)
    assert_one_line_error(r)
    assert "block" in r.stderr.decode()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.bin.nc"]
    assert f"block {n_blocks - 1}:" in r.stderr.decode()
    r = run_nacz("decompress", "-c", src)
    assert_one_line_error(r)
    assert r.stdout == HYBRID[:(n_blocks - 1) * 1024]  # the blocks verified before it


def test_pipeline_streams_blocks(tmp_path):
    src = tmp_path / "in.txt"
    src.write_bytes(HYBRID)
    py = sys.executable
    cmd = (f"cat {src} | {py} -m nacz compress -1 --block-size 1K | "
           f"{py} -m nacz decompress | cmp - {src}")
    r = subprocess.run(cmd, shell=True, capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr


def test_range_decodes_only_the_covering_blocks(tmp_path, packed):
    f = tmp_path / "r.nc"
    f.write_bytes(packed)
    for lo, hi in [(0, 1), (1000, 1100), (1024, 2048), (3000, len(HYBRID)), (5, 5)]:
        r = run_nacz("decompress", "-c", "--range", f"{lo}:{hi}", f)
        assert r.returncode == 0 and r.stdout == HYBRID[lo:hi], r.stderr
    r = run_nacz("decompress", "-c", "--range", f"0:{len(HYBRID) + 1}", f)
    assert_one_line_error(r)
    # Damage a block outside the range: the range still decodes; inside: refused.
    f.write_bytes(_damage_block(packed, -(-len(HYBRID) // 1024) - 1))
    assert run_nacz("decompress", "-c", "--range", "0:100", f).stdout == HYBRID[:100]
    r = run_nacz("decompress", "-c", "--range", f"{len(HYBRID) - 10}:", f)
    assert_one_line_error(r)


def test_info_lists_the_blocks(tmp_path, packed):
    f = tmp_path / "i.nc"
    f.write_bytes(packed)
    r = run_nacz("info", "-v", f)
    out = r.stdout.decode()
    assert r.returncode == 0, r.stderr
    n = -(-len(HYBRID) // 1024)
    assert f"blocks          {n} of up to 1024 bytes" in out
    assert sum(line.lstrip().startswith("block ") for line in out.splitlines()) == n


def test_block_size_option_and_its_errors(tmp_path):
    src = tmp_path / "t.txt"
    src.write_bytes(HYBRID)
    r = run_nacz("compress", "-1", "--block-size", "2K", "-c", src)
    assert r.returncode == 0
    assert blockfile.read_header(blockfile.Source(io.BytesIO(r.stdout))).block_size == 2048
    for bad in ("12", "2G"):  # out of range: one line
        assert_one_line_error(run_nacz("compress", "-1", "--block-size", bad, "-c", src))
    for bad in ("2X", "-4K"):  # not a size: a usage error (exit 1)
        r = run_nacz("compress", "-1", "--block-size", bad, "-c", src)
        assert r.returncode == 1 and b"not a size" in r.stderr and b"Traceback" not in r.stderr


def test_identical_bytes_for_any_job_count_llm_free():
    data = HYBRID * 2
    one = stream.compress_bytes(data, FREE_1K)
    two = stream.compress_bytes(data, FREE_1K, stream.Parallel(jobs=2))
    assert one == two
    assert stream.decompress_bytes(two, parallel=stream.Parallel(jobs=2)) == data


@pytest.mark.timeout(1800)  # the LLM at ~100 tokens/s, three times over
def test_identical_bytes_for_any_job_count_with_the_llm():
    data = os_text("GPL-2", 1800)  # two 1 KiB blocks, a few hundred tokens each
    one = stream.compress_bytes(data, codec.Options(level=2, block_size=1024, threads=2))
    two = stream.compress_bytes(data, codec.Options(level=2, block_size=1024, threads=1),
                                stream.Parallel(jobs=2))
    assert one == two
    assert stream.decompress_bytes(one, parallel=stream.Parallel(jobs=2)) == data
