"""Write the golden files: small originals and their .nc files, decoded by the test suite
forever (tests/test_golden.py). Files already here are never rewritten (they must keep
decoding with every later nacz); a new form of file (a new header field, preset or format
version) gets a new name here, and this writes only the missing ones.

    python formats/golden/make_golden.py
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

from nacz import codec, stream  # noqa: E402

PROSE = (b"A compressor is only worth using if a file written today decodes next year, and a "
         b"damaged file fails loudly. These golden files pin the byte layout, the parameter "
         b"block and the numerics behind every probability: if a change to nacz makes one of "
         b"them decode differently, that change needs a new format version.\n")


def word_salad(n_words: int = 400) -> bytes:
    """PROSE's words in a pseudo-random order: text that zstd cannot shrink as well as
    the LLM-free mode (so the file stays neural) and that needs no data files."""
    words, x, out = PROSE.split(), 12345, []
    for _ in range(n_words):
        x = (x * 1103515245 + 12345) % (1 << 31)
        out.append(words[(x >> 16) % len(words)])
    return b" ".join(out) + b"\n"


def originals() -> dict[str, tuple[bytes, codec.Options]]:
    binary = bytes((i * 73 + 41) % 256 for i in range(600))
    return {
        "empty": (b"", codec.Options()),
        "binary": (binary, codec.Options()),
        "text": (PROSE, codec.Options()),
        "text-llm-free": (PROSE * 2, codec.Options(model="none")),  # full vocabulary
        # LLM-free with its token alphabet (alphabet.py) and mixer preset 3
        "text-llm-free-alphabet": (word_salad(), codec.Options(model="none")),
        "hybrid": (PROSE + bytes(range(40)) + b"\xff\xfe" * 8 + PROSE[::-1], codec.Options()),
        # Format version 2 (names starting "blocks-"): header, independent blocks, index.
        "blocks-empty": (b"", codec.Options(level=1)),
        "blocks-binary": (binary * 3, codec.Options(level=1, block_size=1024)),
        # LLM-free: three 1 KiB blocks with neural and binary segments, token alphabets.
        "blocks-llm-free": (word_salad(300) + bytes(range(40)) + PROSE,
                            codec.Options(level=1, block_size=1024)),
        # The default level's LLM: two blocks of prose, one with a binary run.
        "blocks-text": (PROSE * 3 + bytes(range(20)) + PROSE[:200],
                        codec.Options(block_size=1024)),
        # Ensemble preset 4 (the default with an LLM since 2026-12-04): SSE of the LLM's
        # top token (models/sse.py)
        "blocks-text-preset-4": (PROSE * 3 + bytes(range(20)) + PROSE[:200],
                                 codec.Options(block_size=1024)),
        # Ensemble preset 5 (the default with an LLM since 2026-12-04, later that day):
        # the low-rank correction from the LLM's hidden state (models/lowrank.py); its
        # fingerprint hashes the probe's hidden states too
        "blocks-text-preset-5": (PROSE * 3 + bytes(range(20)) + PROSE[:200],
                                 codec.Options(block_size=1024)),
        # Preset 5 with the SSM (levels 7-9): the blocks are too short for the SSM, but
        # the file's probe, and so its fingerprint, runs preset 5 on the SSM's dense input
        "blocks-text-preset-5-ssm": (PROSE * 2, codec.Options(level=7, block_size=1024)),
        # nacz 0.2: the header records llama.cpp's weight buffers ("plain"), and the
        # fingerprint covers them; two streams decode in one batch (the AMX crash's case)
        "text-plain-buffers": (PROSE, codec.Options()),
        "text-plain-buffers-2-streams": (PROSE * 2, codec.Options(streams=2)),
    }


def main() -> None:
    for name, (data, opts) in originals().items():
        if (HERE / f"{name}.nc").exists():
            continue
        (HERE / f"{name}.bin").write_bytes(data)
        packed = (stream.compress_bytes(data, opts) if name.startswith("blocks-")
                  else codec.compress(data, opts))
        assert codec.decompress(packed) == data
        (HERE / f"{name}.nc").write_bytes(packed)
        print(f"{name}: {len(data)} -> {len(packed)} bytes")


if __name__ == "__main__":
    main()
