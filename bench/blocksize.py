"""Bits per byte against block size (format version 2): what independent blocks cost.

Usage: python bench/blocksize.py LEVEL SIZE BLOCK_SIZES... [--inputs english,source,log] [-j N]
  (inputs: english, source, log, mixed (vim help + stdlib, for 10 MB), wiki)

Compresses SIZE bytes of each input (made here, from OS files, like bench/inputs.py) as a
version-2 file with each block size, checks the round trip of the first run, and prints one
line per (input, block size): compressed bytes, bits per byte, and the change against the
largest block size measured. Ratios only: timing is not its purpose.
"""

from __future__ import annotations

import argparse
import sys
import sysconfig
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from inputs import english, json_log  # noqa: E402
from nacz import codec, stream  # noqa: E402
from nacz.cli import parse_size  # noqa: E402


def source(n: int) -> bytes:
    """Python source: the standard library's top-level modules in name order."""
    lib = Path(sysconfig.get_paths()["stdlib"])
    out = bytearray()
    for p in sorted(lib.glob("*.py")):
        if len(out) >= n:
            break
        out += p.read_bytes()
    return bytes(out[:n])


def mixed(n: int) -> bytes:
    """Text of more than one kind, large enough for 10 MB: vim's help, then the stdlib."""
    half = min(n // 2, 6 << 20)
    return (english(half) + source(n - half))[:n]


def wiki(n: int) -> bytes:
    from wiki import make
    return make(n)


MAKERS = {"english": english, "source": source, "log": json_log, "mixed": mixed,
          "wiki": wiki}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("level", type=int)
    ap.add_argument("size")
    ap.add_argument("block_sizes", nargs="+")
    ap.add_argument("--inputs", default="english,source,log")
    ap.add_argument("-j", "--jobs", type=int, default=1,
                    help="worker processes (the bytes do not depend on it; only the time)")
    args = ap.parse_args()
    size = parse_size(args.size)
    sizes = [parse_size(b) for b in args.block_sizes]
    for name in args.inputs.split(","):
        data = MAKERS[name](size)
        results = {}
        for bs in sizes:
            t = time.monotonic()
            out = stream.compress_bytes(data, codec.Options(level=args.level, block_size=bs),
                                        stream.Parallel(jobs=args.jobs))
            secs = time.monotonic() - t
            results[bs] = len(out)
            blocks = -(-len(data) // bs)
            print(f"{name:8} {len(data):>9} B  -{args.level}  block {bs >> 10:>5} KiB "
                  f"({blocks:>3} blocks)  {len(out):>9} B  {8 * len(out) / len(data):.4f} "
                  f"bits/byte  {secs:7.0f} s", flush=True)
        ref = results[max(sizes)]
        for bs in sizes:
            print(f"  {name} -{args.level} block {bs >> 10} KiB: "
                  f"{100 * (results[bs] / ref - 1):+.2f}% vs {max(sizes) >> 10} KiB", flush=True)


if __name__ == "__main__":
    main()
