"""Bits per byte and tokens/s of one level against stream count and LLM window.

Usage: python bench/streams.py LEVEL SIZE STREAMS WINDOWS FILE...
  e.g. python bench/streams.py 6 100K 1,2,3,6 1024,2048 wiki.xml english.txt
  (--model PATH: another GGUF; "default" in STREAMS or WINDOWS = the level's own)

Each (input, streams, window) is one real in-process compression of the first SIZE
bytes as one block (the file's true size, round trip checked for the first run of each
input with --check), timed end to end: tokenizer, LLM, ensemble, coder. Cold start costs each stream
bits (its LLM context and its share of the online models' history start empty); more
streams amortise llama.cpp's per-step cost over a larger batch. Run it alone, under
``flock /tmp/nacz-bench.lock`` (it times).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nacz.backends.llama import bound_openmp_spinning  # noqa: E402

bound_openmp_spinning()  # as the CLI does, before llama.cpp loads
from nacz import codec, stream  # noqa: E402
from nacz.cli import parse_size  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("level", type=int)
    ap.add_argument("size")
    ap.add_argument("streams")
    ap.add_argument("windows")
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--model", default=None)
    ap.add_argument("--check", action="store_true",
                    help="decompress the first run of each input too (doubles its time)")
    args = ap.parse_args()
    size = parse_size(args.size)
    streams = [None if s == "default" else int(s) for s in args.streams.split(",")]
    windows = [None if w == "default" else int(w) for w in args.windows.split(",")]
    print(f"level -{args.level}, {size:,} bytes per input, model "
          f"{args.model or 'default'}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
    print("| input | streams | window | bytes | bits/byte | tokens | s | tok/s | KB/s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for path in args.files:
        data = path.read_bytes()[:size]
        n_tokens = len(codec.load_runtime(args.model, "q8_0").tokenizer.tokenize(data))
        checked = not args.check
        for w in windows:
            for s in streams:
                opts = codec.Options(model=args.model, level=args.level, streams=s, window=w,
                                     block_size=max(size, 64 << 10))
                t = time.monotonic()
                out = stream.compress_bytes(data, opts)
                secs = time.monotonic() - t
                if not checked:
                    if stream.decompress_bytes(out) != data:
                        raise SystemExit(f"{path}: round trip failed")
                    checked = True
                print(f"| {path.name} | {s or 'default'} | {w or 'default'} | {len(out):,} | "
                      f"{8 * len(out) / len(data):.4f} | {n_tokens:,} | {secs:.0f} | "
                      f"{n_tokens / secs:.0f} | {len(data) / secs / 1000:.2f} |", flush=True)


if __name__ == "__main__":
    main()
