"""The levels' trade-off on one input: bits per byte, compress KB/s and peak RSS per level.

Usage: python bench/levels.py FILE [--levels 1,2,6,9] [--bytes N]

Compression only (decompression runs the same step loop at the same speed: bench.sh
measures both at one level). xz -9e runs in the same session as the baseline. Whole-process
times, model load included; run nothing else meanwhile (two LLM processes on two cores
slow each other down far more than twice).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def measured(cmd: list[str], src: Path, dst: Path) -> tuple[float, int, int]:
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        start = time.monotonic()
        proc = subprocess.Popen(cmd, stdin=fin, stdout=fout)
        _, status, usage = os.wait4(proc.pid, 0)
        return time.monotonic() - start, usage.ru_maxrss, os.waitstatus_to_exitcode(status)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("file", type=Path)
    ap.add_argument("--levels", default="1,2,6,9")
    ap.add_argument("--bytes", type=int, default=1_000_000)
    args = ap.parse_args()
    data = args.file.read_bytes()[:args.bytes]
    with tempfile.TemporaryDirectory(prefix="nacz-levels-") as tmp:
        src, dst = Path(tmp) / "in", Path(tmp) / "out"
        src.write_bytes(data)
        print(f"### {args.file.name}: {len(data):,} bytes, {time.strftime('%Y-%m-%d %H:%M')}\n")
        print("| compressor | bytes | bits/byte | compress s | compress KB/s | peak RSS MB |")
        print("|---|---:|---:|---:|---:|---:|")
        runs = [(f"nacz -{n}", [sys.executable, "-m", "nacz", "compress", "-c", "-f", f"-{n}"])
                for n in map(int, args.levels.split(","))]
        runs.append(("xz -9e", ["xz", "-9e", "-c"]))
        for name, cmd in runs:
            secs, rss, rc = measured(cmd, src, dst)
            if rc != 0:
                print(f"| {name} | failed (exit {rc}) | | | | |")
                continue
            size = dst.stat().st_size
            print(f"| {name} | {size:,} | {8 * size / len(data):.4f} | {secs:.1f} | "
                  f"{len(data) / 1000 / secs:.2f} | {rss / 1024:.0f} |", flush=True)


if __name__ == "__main__":
    main()
