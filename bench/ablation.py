"""Ablation of the online ensemble: what each part buys, on real inputs, in one run.

Usage: python bench/ablation.py [--bytes N] [--streams S] [FILE...]

One LLM pass per input feeds the same logits (and hidden states) to every variant (LLM
only, + n-grams, + match, + bias head, + skip (preset 2), + SSE (preset 4), + low-rank
correction from the hidden state (preset 5), + SSM (-7 ... -9); --sse-weights and
--lowrank add variants with other settings), so the variants differ only in their
ensemble.
The LLM-free row is the real ``-1`` compressor on the same bytes (one stream, token
alphabet): its size is the file's, its time the whole in-process compress. Sizes are the
ideal code length Σ -log2 p(token) (the range coder adds a few bytes per file); "LLM
rows" is how many rows each variant asks the LLM for (the skip variant uses no logits on
the rows it skips). Times: the shared LLM step, and each
ensemble's own predict+update time. xz -9e is measured on the same bytes.

Default inputs (written or shipped by the OS, none downloaded): English prose (vim's
user manual), Python source (the standard library's typing.py), and a generated,
repetitive JSON-lines log.
"""

from __future__ import annotations

import argparse
import lzma
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nacz.backends.llama import bound_openmp_spinning  # noqa: E402

bound_openmp_spinning()  # as the CLI does, before llama.cpp loads
from nacz import codec, engine  # noqa: E402
from nacz.codec import load_runtime  # noqa: E402
from nacz.models import ensemble as E, mixed  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from inputs import english, json_log, source  # noqa: E402


def variants(n_tokens: int, hidden: int, sse_weights: tuple = (),
             lowrank: tuple = ()) -> dict[str, dict]:
    def mix(**kw):
        return {"kind": "ensemble", "llm": True, "ssm": None,
                "mixer": mixed.default_spec(n_tokens, **kw)}
    return {
        "LLM only": {"kind": "llm"},
        "+ n-gram": mix(match=False, bias=False, skip=False),
        "+ match": mix(bias=False, skip=False),
        "+ bias head (full mixer)": mix(skip=False),
        SKIP: E.default_spec(n_tokens, preset=2),
        "+ SSE (preset 4)": E.default_spec(n_tokens, preset=4),
        "+ low-rank (preset 5)": E.default_spec(n_tokens, preset=5, hidden=hidden),
        "+ SSM (preset 5 + SSM)": E.default_spec(n_tokens, with_ssm=True, preset=5,
                                                  hidden=hidden),
        **{f"+ SSE weight {w}": sse_weight(mix(sse=True), w) for w in sse_weights},
        **{f"+ low-rank {kv}": lowrank_variant(mix(sse=True, hidden=hidden), kv)
           for kv in lowrank},
    }


def lowrank_variant(spec: dict, settings: str) -> dict:
    """Preset 5's low-rank part with some settings changed ("rank=16,lr=0.004")."""
    for item in settings.split(","):
        key, value = item.split("=")
        old = spec["mixer"]["lowrank"][key]
        spec["mixer"]["lowrank"][key] = type(old)(value)
    return spec


def sse_weight(spec: dict, w: float) -> dict:
    spec["mixer"]["sse"]["weight"] = w
    return spec


SKIP = "+ skip (preset 2)"


def run(data: bytes, streams: int | None, skip_timing: bool,
        sse_weights: tuple = (), lowrank: tuple = (), only: tuple = ()) -> None:
    rt = load_runtime(None, "q8_0")
    tokens = rt.tokenizer.tokenize(data)
    from nacz.presets import preset
    S = streams or preset(None).streams_for(len(tokens))
    lengths = engine.split_streams(len(tokens), S)
    counts = engine.active_counts(lengths)
    matrix = np.zeros((len(lengths), lengths[0]), dtype=np.int32)
    off = 0
    for s, n in enumerate(lengths):
        matrix[s, :n] = tokens[off:off + n]
        off += n
    hidden = rt.model.hidden_size
    vs = {name: E.make_ensemble(spec, rt.model.vocab_size)
          for name, spec in variants(len(tokens), hidden, sse_weights, lowrank).items()
          if name == "LLM only" or not only or any(o in name for o in only)}
    bits = {k: 0.0 for k in vs}
    rows = {k: 0 for k in vs}
    ens_time = {k: 0.0 for k in vs}
    backend = rt.backend(1024, 512, 4, 2)
    backend.reset(len(lengths), hidden=True)
    for v in vs.values():
        v.reset(len(lengths))
    prev = np.full(len(lengths), rt.model.start_token, dtype=np.int32)
    llm_time = 0.0
    skip_masks = []
    for t, A in enumerate(counts):
        A = int(A)
        t0 = time.perf_counter()
        logits = backend.step(prev[:A])
        states = backend.hidden_states(A)
        llm_time += time.perf_counter() - t0
        true = matrix[:A, t]
        for name, v in vs.items():
            t0 = time.perf_counter()
            want = v.wants_llm(A)
            probs = v.predict(logits if v.uses_llm else None, want, n_active=A,
                              hidden=states if v.hidden_size else None)
            p = probs[np.arange(A), true]
            v.update(true)
            ens_time[name] += time.perf_counter() - t0
            bits[name] += float(-np.log2(p).sum())
            rows[name] += A if want is None else int(want.sum())
            if name == SKIP:
                skip_masks.append(None if want is None else want.copy())
        prev[:A] = true
    xz = len(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME))
    n = len(tokens)
    print(f"{len(data):,} bytes, {n:,} tokens, {len(lengths)} streams; LLM step "
          f"{llm_time:.1f} s ({n / llm_time:.0f} tok/s, logits for every row)\n")
    print("| variant | bits/byte | vs LLM only | LLM rows | ensemble s | ensemble share of step "
          "| tok/s (LLM + ensemble) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    base = bits["LLM only"]
    for name in vs:
        share = ens_time[name] / (ens_time[name] + llm_time)
        llm = llm_time
        print(f"| {name} | {bits[name] / len(data):.4f} | {100 * (bits[name] / base - 1):+.1f}% | "
              f"{rows[name]:,} | {ens_time[name]:.1f} | {100 * share:.1f}% | "
              f"{n / (llm + ens_time[name]):.0f} |")
    t0 = time.perf_counter()
    free = len(codec.compress(data, codec.Options(level=1)))
    free_s = time.perf_counter() - t0
    print(f"| LLM-free (-1, the real file) | {8 * free / len(data):.4f} | "
          f"{100 * (8 * free / base - 1):+.1f}% | 0 | {free_s:.1f} | | {n / free_s:.0f} |")
    print(f"| xz -9e | {8 * xz / len(data):.4f} | {100 * (8 * xz / base - 1):+.1f}% | | | | |\n")
    if skip_timing and SKIP in rows and rows[SKIP] < 0.99 * n:
        # A second LLM pass asking only for the rows the skip variant wanted: what the
        # skipped logits save in llama.cpp (every token still enters the KV cache).
        backend.reset(len(lengths))
        prev[:] = rt.model.start_token
        skip_time = 0.0
        for t, A in enumerate(counts):
            A = int(A)
            t0 = time.perf_counter()
            backend.step(prev[:A], skip_masks[t])
            skip_time += time.perf_counter() - t0
            prev[:A] = matrix[:A, t]
        print(f"skip: LLM step {skip_time:.1f} s asking for {rows[SKIP]:,} of {n:,} rows, "
              f"against {llm_time:.1f} s for every row above "
              f"({100 * (1 - skip_time / llm_time):.1f}% saved; not for preset 5: with "
              "hidden states on, llama.cpp outputs every row)\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="*", type=Path)
    ap.add_argument("--bytes", type=int, default=100_000)
    ap.add_argument("--streams", type=int, default=None)
    ap.add_argument("--skip-timing", action="store_true",
                    help="a second LLM pass with only the rows the skip variant asks for")
    ap.add_argument("--sse-weights", default="",
                    help="extra SSE variants, e.g. 0.5,0.25: the maps' share of the final "
                    "probability of the LLM's top token")
    ap.add_argument("--only", default="",
                    help="run only the variants whose names contain one of these "
                    "','-separated strings (and the LLM alone), e.g. 'preset 4,preset 5'")
    ap.add_argument("--lowrank", default="",
                    help="extra low-rank variants, ';'-separated settings, e.g. "
                    "'rank=16;lr=0.004,lr_hidden=0'")
    args = ap.parse_args()
    sse_weights = tuple(float(w) for w in args.sse_weights.split(",") if w)
    lowrank = tuple(x for x in args.lowrank.split(";") if x)
    only = tuple(x for x in args.only.split(",") if x)
    inputs = ([(f.name, f.read_bytes()[:args.bytes]) for f in args.files] if args.files else
              [("English prose (vim user manual)", english(args.bytes)),
               ("Python source (stdlib)", source(args.bytes)),
               ("JSON-lines log (generated)", json_log(args.bytes))])
    for name, data in inputs:
        print(f"### {name}")
        run(data, args.streams, args.skip_timing, sse_weights, lowrank, only)


if __name__ == "__main__":
    main()
