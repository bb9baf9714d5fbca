"""Short timing of the online SSM predictor (about a minute): tokens/s per direction.

    python bench/bench_ssm.py [--impl c|numba|both] [--vocab 49152] [--types 2000,8000]

Each run: A streams in lockstep (A = 1 and 16), vocabulary V, a Zipf-like token stream
over ``types`` distinct token ids (the head grows to about that many classes), one
``logprobs(A)`` (dense (A, V) float64 output) + one ``update`` per step, training
included. Reported: tokens/s, and the split between logprobs (head + dense output),
and update (state step + growth + amortised chunk training with Adam). Without a built C
library, ``--impl c`` compiles csrc/ssm.c into a temporary directory first.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nacz import native  # noqa: E402
from nacz.models.ssm import OnlineSSM, default_spec  # noqa: E402


def zipf_stream(rng, ids: np.ndarray, shape) -> np.ndarray:
    n_types = len(ids)
    ranks = np.arange(1, n_types + 1, dtype=np.float64)
    p = 1.0 / ranks
    p /= p.sum()
    return ids[rng.choice(n_types, size=shape, p=p)].astype(np.int32)


def run(impl: str, A: int, vocab: int, n_types: int, seconds: float) -> dict:
    m = OnlineSSM.from_spec(default_spec(), vocab, impl=impl)
    m.reset(A)
    rng = np.random.default_rng(1)
    ids = rng.permutation(vocab)[:n_types]
    # pre-grow the head: every type once, then some Zipf tokens (untimed)
    warm = np.concatenate([ids, zipf_stream(rng, ids, 64 * A)]).astype(np.int32)
    steps_w = len(warm) // A
    warm = warm[: steps_w * A].reshape(steps_w, A)
    for t in range(steps_w):
        m.update(warm[t])
    toks = zipf_stream(rng, ids, (200000 // A + 64, A))
    tl = tu = 0.0
    n = 0
    t_end = time.perf_counter() + seconds
    t = 0
    while t < m.spec["chunk"] or time.perf_counter() < t_end or t % m.spec["chunk"]:
        a0 = time.perf_counter()
        m.logprobs(A)
        a1 = time.perf_counter()
        m.update(toks[t])
        a2 = time.perf_counter()
        tl += a1 - a0
        tu += a2 - a1
        n += A
        t += 1
    return {"impl": impl, "A": A, "K": m.K, "tok_s": n / (tl + tu),
            "logprobs_us": tl / n * 1e6, "update_us": tu / n * 1e6}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--impl", default="both", choices=["c", "numba", "both"])
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--types", default="2000,8000")
    ap.add_argument("--streams", default="1,16")
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    impls = ["c", "numba"] if args.impl == "both" else [args.impl]
    if "c" in impls and not native.c_available():
        tmp = tempfile.mkdtemp(prefix="nacz-bench-")
        native.load_c_library(native.compile_c(tmp))
        print(f"(compiled csrc/ssm.c into {tmp})")
    # compile / warm the numba kernels outside the timing
    for impl in impls:
        run(impl, 2, 1000, 50, 0.0)
    print(f"V={args.vocab}  spec={default_spec()}")
    print(f"{'impl':6s} {'A':>3s} {'K':>6s} {'tok/s':>8s} {'logprobs us/tok':>16s} "
          f"{'update us/tok':>14s}")
    for n_types in map(int, args.types.split(",")):
        for A in map(int, args.streams.split(",")):
            for impl in impls:
                r = run(impl, A, args.vocab, n_types, args.seconds)
                print(f"{r['impl']:6s} {r['A']:3d} {r['K']:6d} {r['tok_s']:8.0f} "
                      f"{r['logprobs_us']:16.1f} {r['update_us']:14.1f}", flush=True)


if __name__ == "__main__":
    main()
