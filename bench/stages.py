"""Where the time goes per token, stage by stage, at a given number of streams.

Usage: python bench/stages.py [--backend llama|torch] [--device cpu|cuda] [--streams 256]
                              [--dtype float32|bfloat16|float16]
                              [--steps 6] [--window 1024] [--bytes-file FILE] [--model PATH]
                              [--ensemble-threads 1,2]

Runs the real step loop (engine.run) over S streams of real text, with the real backend,
the default ensemble and the real range coder, and times each call of each stage:

  backend step      the LLM's batched decode (logits of all active streams)
  ensemble predict  wants_llm + predict: the dense pass over the vocabulary per stream
                    (the rows of a step on --ensemble-threads threads; same bits)
  ensemble update   the online models learning the true tokens
  coder             constriction: quantising each distribution and encoding the token
  python            everything else in the loop (total minus the stages above)

The first step is a warm-up and is not counted. Prints one markdown row per stream count:
microseconds per token of each stage, and tokens/s. Timings depend on the machine's load:
compare rows of one run only (several --streams values run in one process).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nacz.backends.llama import bound_openmp_spinning  # noqa: E402

bound_openmp_spinning()  # as the CLI does, before llama.cpp loads

from nacz import backends, codec, engine  # noqa: E402
from nacz.coder import Encoder  # noqa: E402
from nacz.models import mixed  # noqa: E402
from nacz.models.ensemble import default_spec, make_ensemble  # noqa: E402
from nacz.presets import SINKS  # noqa: E402

STAGES = ("backend step", "ensemble predict", "ensemble update", "coder")


class Timed:
    """Adds the time spent in the named methods of an object to a shared table."""

    def __init__(self, inner, table: dict, methods: dict):
        self._inner, self._table, self._methods = inner, table, methods

    def __getattr__(self, name):
        attr = getattr(self._inner, name)
        stage = self._methods.get(name)
        if stage is None:
            return attr

        def timed(*a, **k):
            t0 = time.perf_counter()
            try:
                return attr(*a, **k)
            finally:
                self._table[stage].append(time.perf_counter() - t0)
        return timed


def text_tokens(rt, n_tokens: int, source: Path | None) -> np.ndarray:
    """At least n_tokens of real text: a given file, else the OS's licence texts."""
    if source is not None:
        data = source.read_bytes()
    else:
        data = b"".join(p.read_bytes() for p in sorted(Path("/usr/share/common-licenses")
                                                        .glob("*")) if p.is_file())
    data = bytes(b for b in data[:8 * n_tokens] if 32 <= b < 127 or b == 10)  # plain ASCII
    toks = rt.tokenizer.tokenize(data)
    while len(toks) < n_tokens:
        toks = np.concatenate([toks, toks])
    return toks[:n_tokens]


def measure(rt, args, n_streams: int) -> dict:
    n_tokens = n_streams * args.steps
    toks = text_tokens(rt, n_tokens, args.bytes_file)
    lengths = engine.split_streams(n_tokens, n_streams)
    matrix = toks.reshape(n_streams, args.steps)
    table = {s: [] for s in STAGES}
    backend = backends.make(rt, args.backend, args.device, args.window, args.window // 2,
                            SINKS, threads=codec.default_threads(), dtype=args.dtype)
    # the default level's ensemble: preset 5 reads the LLM's hidden states (engine.run then
    # asks the backend for them, and llama.cpp outputs every row)
    ensemble = make_ensemble(default_spec(n_tokens, uses_llm=True, hidden=backend.hidden_size),
                             rt.model.vocab_size)
    encoder = Encoder()

    def code(probs, t):
        t0 = time.perf_counter()
        out = encoder(matrix[:probs.shape[0], t], probs)
        table["coder"].append(time.perf_counter() - t0)
        return out

    steps_done = []
    t_start = [0.0]

    def progress(done):  # marks the end of each step
        steps_done.append(time.perf_counter())
        if len(steps_done) == 1:
            for s in STAGES:
                table[s].clear()  # the first step is a warm-up
            t_start[0] = steps_done[0]

    tb = Timed(backend, table, {"step": "backend step"})
    te = Timed(ensemble, table, {"wants_llm": "ensemble predict",
                                 "predict": "ensemble predict", "update": "ensemble update"})
    engine.run(tb, te, lengths, rt.model.start_token, code, progress)
    wall = steps_done[-1] - t_start[0]
    counted = n_tokens - n_streams  # all streams are active at every step here
    per_tok = {s: 1e6 * sum(v) / counted for s, v in table.items()}
    per_tok["python"] = 1e6 * wall / counted - sum(per_tok.values())
    per_tok["tokens/s"] = counted / wall
    return per_tok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", choices=backends.CHOICES, default="llama")
    ap.add_argument("--device", choices=backends.DEVICES, default="cpu")
    ap.add_argument("--dtype", choices=backends.DTYPES, default=backends.DEFAULT_DTYPE,
                    help="the torch backend's compute dtype")
    ap.add_argument("--streams", default="256", help="comma-separated stream counts")
    ap.add_argument("--steps", type=int, default=6, help="steps per measurement (first: warm-up)")
    ap.add_argument("--window", type=int, default=1024)
    ap.add_argument("--bytes-file", type=Path, default=None)
    ap.add_argument("--model", default=None, help="GGUF (default: the level-6 q8_0 model)")
    ap.add_argument("--ensemble-threads", default="1",
                    help="comma-separated thread counts for the ensemble's predict")
    args = ap.parse_args()
    if args.steps < 2:
        ap.error("--steps must be at least 2 (the first is a warm-up)")
    rt = codec.load_runtime(args.model, "q8_0")
    cols = (*STAGES, "python")
    print(f"backend {args.backend} on {args.device} in {args.dtype}, model {rt.path.name}, window "
          f"{args.window}, {args.steps - 1} timed steps; microseconds per token")
    print("| streams | ensemble threads | " + " | ".join(cols) + " | tokens/s |")
    print("|---:|---:|" + "---:|" * (len(cols) + 1))
    for s in (int(x) for x in args.streams.split(",")):
        for et in (int(x) for x in args.ensemble_threads.split(",")):
            mixed.use_threads(et)
            r = measure(rt, args, s)
            print(f"| {s} | {et} | " + " | ".join(f"{r[c]:.1f}" for c in cols) +
                  f" | {r['tokens/s']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
