"""llama.cpp weight buffers: "plain" (nacz's choice) against "extra" (llama.cpp's default,
CPU_REPACK and, on AMX CPUs, AMX), measured in one run.

For each model (the shipped Q4_1 and the Q8_0 that levels -2..-9 derive from it) and each
buffer choice, in a fresh process each: the buffer types llama.cpp reports, whether the
probe logits (the fingerprint's input) equal plain's, tokens/s of bare batched decode at 1
and 16 streams, and the LLM's ideal bits/byte on English (16 streams, window 1024/512).
On a CPU with AMX the "extra" rows with 16 streams crash (that is the bug being avoided):
they are reported as such.

Usage: python bench/buffers.py [--bytes N] [--steps N]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import hashlib, json, sys, time
import numpy as np
sys.path.insert(0, sys.argv[1])
from nacz.backends import llama
llama.bound_openmp_spinning()  # as the CLI does, before llama.cpp loads
from nacz.codec import load_runtime
from nacz.resources import default_model_path, derived_model, model_sha256
from bench.inputs import english

fmt, wb, n_bytes, steps = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
base = default_model_path()
path = base if fmt == "original" else derived_model(base, fmt, model_sha256(base))
model = llama.LlamaModel(path, weight_buffers=wb)
rt = load_runtime(None)  # the tokenizer
be = lambda: llama.LlamaBackend(model, 1024, 512, 4, threads=2)
probe = be().probe(rt.tokenizer.tokenize(llama.PROBE_TEXT))
out = {"buffer_types": model.buffer_types,
       "probe": hashlib.blake2b(probe.tobytes(), digest_size=8).hexdigest()}
text = english(n_bytes)
toks = rt.tokenizer.tokenize(text)
for streams in (1, 16):
    b = be()
    b.reset(streams)
    n = len(toks) // streams
    rows = toks[:n * streams].reshape(streams, n)
    prev = np.full(streams, model.start_token, dtype=np.int32)
    bits, t0, steps_here = 0.0, None, min(steps, n)
    warm = 8
    for t in range(steps_here):
        if t == warm:
            t0 = time.perf_counter()
        logits = b.step(prev).astype(np.float64)
        m = logits.max(axis=1, keepdims=True)
        lse = np.log(np.exp(logits - m).sum(axis=1)) + m[:, 0]
        bits += float((lse - logits[np.arange(streams), rows[:, t]]).sum()) / np.log(2)
        prev = rows[:, t].copy()
    secs = time.perf_counter() - t0
    out[f"tok_s_{streams}"] = (steps_here - warm) * streams / secs
    out[f"bits_per_token_{streams}"] = bits / (steps_here * streams)
out["bytes_per_token"] = len(text) / len(toks)
print(json.dumps(out))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bytes", type=int, default=60_000)
    ap.add_argument("--steps", type=int, default=200)
    args = ap.parse_args()
    rows = []
    for fmt in ("original", "q8_0"):
        for wb in ("plain", "extra"):
            r = subprocess.run([sys.executable, "-c", CHILD, str(ROOT), fmt, wb,
                                str(args.bytes), str(args.steps)],
                               capture_output=True, text=True, timeout=3600)
            if r.returncode != 0:
                rows.append((fmt, wb, None, f"exit {r.returncode}: "
                                            f"{(r.stderr.strip().splitlines() or [''])[-1]}"))
            else:
                rows.append((fmt, wb, json.loads(r.stdout.strip().splitlines()[-1]), ""))
    plain_probe = {fmt: res["probe"] for fmt, wb, res, _ in rows if res and wb == "plain"}
    print("| model | weight buffers | buffer types used | probe logits = plain's | "
          "tok/s 1 stream | tok/s 16 streams | bits/byte (16 streams) |")
    print("|---|---|---|---|---:|---:|---:|")
    for fmt, wb, res, err in rows:
        name = "Q4_1 (shipped)" if fmt == "original" else "Q8_0 (derived)"
        if res is None:
            print(f"| {name} | {wb} | | | {err} | | |")
            continue
        bpb = res["bits_per_token_16"] / res["bytes_per_token"]
        same = "yes" if res["probe"] == plain_probe.get(fmt) else "no"
        print(f"| {name} | {wb} | {', '.join(res['buffer_types'])} | {same} | "
              f"{res['tok_s_1']:.1f} | {res['tok_s_16']:.1f} | {bpb:.4f} |")


if __name__ == "__main__":
    main()
