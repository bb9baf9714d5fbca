"""nacz against xz, zstd, bzip2 (and brotli if installed), measured in one run.

Usage: bench.sh [FILE...] [--bytes N] [--nacz-args "..."] [--raw-steps N]

Prints one markdown table per input: bytes, bits per byte, compress/decompress seconds,
KB/s, peak RSS and whether the round trip was exact. It also measures the raw llama.cpp
batched decode rate (same model, streams and threads, no ensemble, no coder) in the same
run and reports nacz's efficiency = nacz tokens/s / raw tokens/s. Speeds are only
comparable within one run: the machine may be shared.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPORA = ROOT / "corpora"
DEFAULT_BYTES = 1_000_000


def fetch_enwik8() -> Path:
    import json

    spec = json.loads((CORPORA / "manifest.json").read_text())["enwik8"]
    dest = CORPORA / "downloads" / "enwik8"
    if dest.is_file() and dest.stat().st_size == spec["size"]:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    archive = dest.with_suffix(".zip")
    try:
        print(f"fetching {spec['url']} ...", file=sys.stderr)
        urllib.request.urlretrieve(spec["url"], archive)
    except OSError as e:
        sys.exit(f"bench: cannot download enwik8 ({e}).\n"
                 f"Download {spec['url']} elsewhere, unzip it, and put 'enwik8' at {dest}\n"
                 f"(sha256 {spec['sha256']}), or pass a FILE to bench.sh.")
    with zipfile.ZipFile(archive) as z, z.open(spec["member"]) as src, open(dest, "wb") as out:
        shutil.copyfileobj(src, out)
    archive.unlink()
    digest = hashlib.sha256(dest.read_bytes()).hexdigest()
    if digest != spec["sha256"]:
        dest.unlink()
        sys.exit(f"bench: enwik8 checksum mismatch ({digest}); file removed")
    return dest


def run_measured(cmd: list[str], stdin_path: Path, stdout_path: Path) -> tuple[float, int, int]:
    """Run a command with files as stdin/stdout; return (seconds, peak RSS KiB, exit code)."""
    with open(stdin_path, "rb") as fin, open(stdout_path, "wb") as fout:
        start = time.monotonic()
        proc = subprocess.Popen(cmd, stdin=fin, stdout=fout, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.monotonic() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        err = proc.stderr.read().decode(errors="replace")
    if proc.returncode != 0:
        print(f"bench: {' '.join(cmd)} failed: {err.strip()}", file=sys.stderr)
    return elapsed, usage.ru_maxrss, proc.returncode


def tools(nacz_args: list[str]) -> list[tuple[str, list[str], list[str]]]:
    nacz = [sys.executable, "-m", "nacz"]
    out = [("nacz " + " ".join(nacz_args)).strip(),
           [*nacz, "compress", "-c", "-f", *nacz_args], [*nacz, "decompress", "-c"]]
    table = [tuple(out)]
    for name, comp, dec in [("xz -9e", ["xz", "-9e", "-c"], ["xz", "-dc"]),
                            ("zstd -19 --long", ["zstd", "-19", "--long=27", "-c", "-q"],
                             ["zstd", "-d", "--long=27", "-c", "-q"]),
                            ("bzip2 -9", ["bzip2", "-9", "-c"], ["bzip2", "-dc"]),
                            ("brotli -q 11", ["brotli", "-q", "11", "-c"], ["brotli", "-dc"])]:
        if shutil.which(comp[0]):
            table.append((name, comp, dec))
    return table


def raw_decode_rate(params: dict, threads: int, steps: int, sample: bytes,
                    warm: int) -> float:
    """Tokens/s of bare batched llama.cpp decode with the file's model, streams and window:
    the ceiling nacz is measured against. The first ``warm`` steps are not timed, so the
    timed ones run at contexts like nacz's (a full window costs more per token than an
    empty one); sliding is included, as in nacz."""
    sys.path.insert(0, str(ROOT))
    import numpy as np

    from nacz.backends.llama import bound_openmp_spinning
    bound_openmp_spinning()  # as the CLI does, before llama.cpp loads
    from nacz.codec import load_runtime

    n_streams = len(params["streams"])
    fmt = params["model"].get("derived", {}).get("format", "original")
    rt = load_runtime(None, fmt)
    sample = bytes(b for b in sample if 32 <= b < 127) or b"text"  # tokenizer-safe
    toks = rt.tokenizer.tokenize(sample)
    ctx = params["context"]
    backend = rt.backend(ctx["window"], ctx["slide"], ctx["sinks"], threads)
    backend.reset(n_streams)
    prev = np.full(n_streams, rt.model.start_token, dtype=np.int32)
    start = None
    for t in range(warm + steps):
        if t == warm:
            start = time.monotonic()
        backend.step(prev)
        prev[:] = toks[(t * 7 + np.arange(n_streams)) % len(toks)]
    return steps * n_streams / (time.monotonic() - start)


def nacz_info(packed: bytes) -> dict:
    sys.path.insert(0, str(ROOT))
    from nacz import codec

    c = codec.inspect(packed)
    return c.params or {}


def bench_file(path: Path, limit: int, nacz_args: list[str], raw_steps: int) -> None:
    data = path.read_bytes()[:limit]
    with tempfile.TemporaryDirectory(prefix="nacz-bench-") as tmp:
        tmp = Path(tmp)
        src = tmp / "input"
        src.write_bytes(data)
        print(f"\n### {path.name}: {len(data):,} bytes\n")
        print("| compressor | bytes | bits/byte | compress s | decompress s | "
              "compress KB/s | decompress KB/s | peak RSS MB | round trip |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
        nacz_times = None
        for name, comp, dec in tools(nacz_args):
            packed, unpacked = tmp / "packed", tmp / "unpacked"
            ct, crss, crc = run_measured(comp, src, packed)
            dt, drss, drc = run_measured(dec, packed, unpacked)
            ok = crc == 0 and drc == 0 and unpacked.read_bytes() == data
            size = packed.stat().st_size
            kb = len(data) / 1000
            print(f"| {name} | {size:,} | {8 * size / max(1, len(data)):.4f} | {ct:.2f} | "
                  f"{dt:.2f} | {kb / ct:.1f} | {kb / dt:.1f} | "
                  f"{max(crss, drss) / 1024:.0f} | {'OK' if ok else 'FAILED'} |")
            if name.startswith("nacz"):
                nacz_times = (ct, dt, packed.read_bytes())
        # Only now import nacz here: a big parent process would inflate the children's
        # peak RSS (ru_maxrss counts the forked image).
        params = nacz_info(nacz_times[2]) if nacz_times else {}
        if params.get("streams") and params["backend"]["name"] == "none":
            ct, dt, _ = nacz_times
            n_tokens = sum(params["streams"])
            print(f"\nnacz (no LLM): {n_tokens:,} tokens in {len(params['streams'])} streams; "
                  f"compress {n_tokens / ct:.0f} tok/s, decompress {n_tokens / dt:.0f} tok/s "
                  "(whole-process times, start-up included)")
        elif params.get("streams"):
            ct, dt, _ = nacz_times
            streams = params["streams"]
            n_tokens = sum(streams)
            threads = _threads(nacz_args)
            window = params["context"]["window"]
            warm = min(window, max(0, streams[0] - raw_steps))
            steps = min(raw_steps, streams[0] - warm)
            raw = raw_decode_rate(params, threads, steps, data[:20000], warm)
            print(f"\nnacz: {n_tokens:,} tokens in {len(streams)} streams; "
                  f"compress {n_tokens / ct:.1f} tok/s, decompress {n_tokens / dt:.1f} tok/s; "
                  f"raw llama.cpp batched decode ({len(streams)} streams, {threads} threads, "
                  f"after {warm} untimed steps) "
                  f"{raw:.1f} tok/s; efficiency compress {n_tokens / ct / raw:.2f}, "
                  f"decompress {n_tokens / dt / raw:.2f} (whole-process times, model load "
                  "included)")


def _threads(nacz_args: list[str]) -> int:
    for i, a in enumerate(nacz_args):
        if a in ("-T", "--threads") and i + 1 < len(nacz_args):
            n = int(nacz_args[i + 1])
            if n:
                return n
    return len(os.sched_getaffinity(0))


def main() -> None:
    ap = argparse.ArgumentParser(prog="bench.sh", description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="*", type=Path, help="inputs (default: enwik8)")
    ap.add_argument("--bytes", type=int, default=DEFAULT_BYTES,
                    help=f"use a prefix of this many bytes (default {DEFAULT_BYTES:,})")
    ap.add_argument("--nacz-args", default="", help="extra nacz compress options")
    ap.add_argument("--raw-steps", type=int, default=300,
                    help="steps of the raw llama.cpp decode measurement")
    args = ap.parse_args()
    files = args.files or [fetch_enwik8()]
    print(f"nacz benchmark, {time.strftime('%Y-%m-%d %H:%M')}, "
          f"{len(os.sched_getaffinity(0))} CPUs")
    for f in files:
        bench_file(f, args.bytes, shlex.split(args.nacz_args), args.raw_steps)


if __name__ == "__main__":
    main()
