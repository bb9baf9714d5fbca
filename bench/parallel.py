"""Compress and decompress speed with --jobs 1, --jobs 2 and --ray (two local workers),
on the same input in one run, and proof that the output bytes are identical.

Usage: python bench/parallel.py FILE [NACZ_COMPRESS_ARGS...]   (e.g. -1 --block-size 256K)

Each configuration runs the real command line (`python -m nacz`, start-up and model load
included). The Ray runs start one local Ray instance (2 CPUs) first, outside the timings,
and pass its address. Run it under `flock /tmp/nacz-bench.lock` (a timing benchmark).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path


def run(args: list[str], stdin: bytes) -> tuple[bytes, float]:
    t = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "nacz", *args], input=stdin,
                       capture_output=True, check=False)
    secs = time.monotonic() - t
    if r.returncode:
        raise SystemExit(f"nacz {' '.join(args)} failed: {r.stderr.decode()[-500:]}")
    return r.stdout, secs


def main() -> None:
    path = Path(sys.argv[1])
    extra = sys.argv[2:]
    data = path.read_bytes()
    import ray
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    address = ray.get_runtime_context().gcs_address
    configs = [("--jobs 1", ["-j", "1"]), ("--jobs 2", ["-j", "2"]),
               ("--ray, 2 workers", ["--ray", "--ray-address", address, "-j", "2"])]
    print(f"{path.name}: {len(data):,} bytes; nacz compress {' '.join(extra)}; "
          f"{os.cpu_count()} cores; load average at start {os.getloadavg()[0]:.1f}")
    print("| workers | compress s | KB/s | decompress s | KB/s | sha256 of .nc |")
    print("|---|---|---|---|---|---|")
    digests = set()
    for name, args in configs:
        packed, c_secs = run(["compress", "-c", *extra, *args], data)
        back, d_secs = run(["decompress", "-c", *args], packed)
        assert back == data, f"{name}: round trip failed"
        digest = hashlib.sha256(packed).hexdigest()[:16]
        digests.add(digest)
        kb = len(data) / 1024
        print(f"| {name} | {c_secs:.1f} | {kb / c_secs:.1f} | {d_secs:.1f} | "
              f"{kb / d_secs:.1f} | {digest} ({len(packed):,} bytes) |", flush=True)
    print("identical bytes across job counts and Ray:", len(digests) == 1)
    print(f"load average at end {os.getloadavg()[0]:.1f}")
    ray.shutdown()


if __name__ == "__main__":
    main()
