"""Ablation of the online ensemble: what each part buys, on real inputs, in one run.

Usage: python bench/ablation.py [--bytes N] [--streams S] [FILE...]

One LLM pass per input feeds the same logits to every variant (LLM only, + n-grams,
+ match, + bias head, + skip, + SSM, and LLM-free), so the variants differ only in their
ensemble. Sizes are the ideal code length Σ -log2 p(token) (the range coder adds a few
bytes per file); "LLM rows" is how many rows each variant asks the LLM for (the skip
variant uses no logits on the rows it skips). Times: the shared LLM step, and each
ensemble's own predict+update time. xz -9e is measured on the same bytes.

Default inputs (written or shipped by the OS, none downloaded): English prose (vim's
user manual), Python source (the standard library's typing.py), and a generated,
repetitive JSON-lines log.
"""

from __future__ import annotations

import argparse
import json
import lzma
import random
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nacz import engine  # noqa: E402
from nacz.codec import load_runtime  # noqa: E402
from nacz.models import ensemble as E, mixed  # noqa: E402


def english(n: int) -> bytes:
    docs = sorted(Path("/usr/share/vim").glob("vim*/doc/usr_*.txt"))
    data = b"".join(p.read_bytes() for p in docs)
    if len(data) < n:
        data += b"".join(p.read_bytes() for p in sorted(Path("/usr/share/common-licenses").glob("*")))
    return data[:n]


def source(n: int) -> bytes:
    lib = Path(sysconfig.get_paths()["stdlib"])
    data = b"".join((lib / f).read_bytes() for f in ("typing.py", "inspect.py", "argparse.py"))
    return data[:n]


def json_log(n: int) -> bytes:
    rnd = random.Random(7)
    users = [f"user{i:03d}" for i in range(40)]
    paths = ["/api/v1/items", "/api/v1/orders", "/login", "/static/app.js", "/api/v1/search"]
    lines, t = [], 1_700_000_000.0
    while sum(map(len, lines)) < n:
        t += rnd.expovariate(5.0)
        status = rnd.choices([200, 201, 304, 404, 500], [80, 5, 10, 4, 1])[0]
        rec = {"ts": round(t, 3), "level": "ERROR" if status == 500 else "INFO",
               "user": rnd.choice(users), "method": rnd.choice(["GET", "GET", "POST"]),
               "path": rnd.choice(paths), "status": status,
               "ms": round(rnd.lognormvariate(3, 0.6), 1)}
        lines.append((json.dumps(rec) + "\n").encode())
    return b"".join(lines)[:n]


def variants(n_tokens: int) -> dict[str, dict]:
    def mix(**kw):
        return {"kind": "ensemble", "llm": True, "ssm": None,
                "mixer": mixed.default_spec(n_tokens, **kw)}
    return {
        "LLM only": {"kind": "llm"},
        "+ n-gram": mix(match=None, bias=None, skip=None),
        "+ match": mix(bias=None, skip=None),
        "+ bias head (full mixer)": mix(skip=None),
        "+ skip (default)": E.default_spec(n_tokens),
        "+ SSM": E.default_spec(n_tokens, with_ssm=True),
        "LLM-free (-1)": E.default_spec(n_tokens, uses_llm=False),
    }


def run(data: bytes, streams: int | None) -> None:
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
    vs = {name: E.make_ensemble(spec, rt.model.vocab_size)
          for name, spec in variants(len(tokens)).items()}
    bits = {k: 0.0 for k in vs}
    rows = {k: 0 for k in vs}
    ens_time = {k: 0.0 for k in vs}
    backend = rt.backend(1024, 512, 4, 2)
    backend.reset(len(lengths))
    for v in vs.values():
        v.reset(len(lengths))
    prev = np.full(len(lengths), rt.model.start_token, dtype=np.int32)
    llm_time = 0.0
    for t, A in enumerate(counts):
        A = int(A)
        t0 = time.perf_counter()
        logits = backend.step(prev[:A])
        llm_time += time.perf_counter() - t0
        true = matrix[:A, t]
        for name, v in vs.items():
            t0 = time.perf_counter()
            want = v.wants_llm(A)
            probs = v.predict(logits if v.uses_llm else None, want, n_active=A)
            p = probs[np.arange(A), true]
            v.update(true)
            ens_time[name] += time.perf_counter() - t0
            bits[name] += float(-np.log2(p).sum())
            rows[name] += 0 if not v.uses_llm else (A if want is None else int(want.sum()))
        prev[:A] = true
    xz = len(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME))
    n = len(tokens)
    print(f"{len(data):,} bytes, {n:,} tokens, {len(lengths)} streams; LLM step "
          f"{llm_time:.1f} s ({n / llm_time:.0f} tok/s)\n")
    print("| variant | bits/byte | vs LLM only | LLM rows | ensemble s | ensemble share of step |")
    print("|---|---:|---:|---:|---:|---:|")
    base = bits["LLM only"]
    for name in vs:
        share = ens_time[name] / (ens_time[name] + llm_time)
        print(f"| {name} | {bits[name] / len(data):.4f} | {100 * (bits[name] / base - 1):+.1f}% | "
              f"{rows[name]:,} | {ens_time[name]:.1f} | {100 * share:.1f}% |")
    print(f"| xz -9e | {8 * xz / len(data):.4f} | {100 * (8 * xz / base - 1):+.1f}% | | | |\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="*", type=Path)
    ap.add_argument("--bytes", type=int, default=100_000)
    ap.add_argument("--streams", type=int, default=None)
    args = ap.parse_args()
    inputs = ([(f.name, f.read_bytes()[:args.bytes]) for f in args.files] if args.files else
              [("English prose (vim user manual)", english(args.bytes)),
               ("Python source (stdlib)", source(args.bytes)),
               ("JSON-lines log (generated)", json_log(args.bytes))])
    for name, data in inputs:
        print(f"### {name}")
        run(data, args.streams)


if __name__ == "__main__":
    main()
