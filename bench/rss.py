"""Peak memory of `nacz compress` on a large input, sampled while it runs.

Usage: python bench/rss.py [--seconds N] FILE [-- NACZ_COMPRESS_ARGS...]

Runs `nacz compress -c` on FILE (output discarded) and samples the process's resident set
(VmRSS) and high-water mark (VmHWM) once a second. With --seconds it stops the run after N
seconds: everything nacz sizes from the input (token arrays, n-gram tables, match history,
KV cells for the streams) is allocated before the first step, so a plateau reached early
is the peak of the whole run -- the samples show whether it is a plateau. Without
--seconds it runs to the end and also reports the time taken.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path


def status_kb(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("file", type=Path)
    ap.add_argument("--seconds", type=float, default=None)
    ap.add_argument("nacz_args", nargs=argparse.REMAINDER,
                    help="after --: options for nacz compress (e.g. -- -1)")
    args = ap.parse_args()
    args.nacz_args = [a for a in args.nacz_args if a != "--"]
    cmd = [sys.executable, "-m", "nacz", "compress", "-c", "-f", *args.nacz_args, str(args.file)]
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    samples = []
    while proc.poll() is None:
        elapsed = time.monotonic() - start
        samples.append((elapsed, status_kb(proc.pid, "VmRSS"), status_kb(proc.pid, "VmHWM")))
        if args.seconds is not None and elapsed > args.seconds:
            proc.terminate()
            proc.wait()
            break
        time.sleep(1.0)
    size = args.file.stat().st_size
    finished = proc.returncode == 0
    peak = max(s[2] for s in samples) if samples else 0
    print(f"{args.file.name}: {size:,} bytes, nacz compress {' '.join(args.nacz_args)}; "
          f"{'finished' if finished else 'stopped'} after {time.monotonic() - start:.0f} s; "
          f"peak RSS {peak / 1024:.0f} MB")
    step = max(1, len(samples) // 12)
    print("  t (s)   RSS MB   peak MB")
    for t, rss, hwm in samples[::step] + samples[-1:]:
        print(f"  {t:6.0f} {rss / 1024:8.0f} {hwm / 1024:9.0f}")


if __name__ == "__main__":
    main()
