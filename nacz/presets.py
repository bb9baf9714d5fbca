"""Compression levels -1 ... -9: named trade-offs between speed and ratio.

A level only chooses parameters; every parameter it chooses is written into the file, so
decompression never needs to know the level (it is recorded for ``nacz info`` only).
Stream counts depend on the input's token count, the level and --device (recorded in the
file), never on the machine.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

DEFAULT_LEVEL = 6


@dataclass(frozen=True)
class Preset:
    level: int
    window: int  # LLM context per stream (tokens)
    slide: int  # tokens dropped when the window is full
    min_tokens_per_stream: int  # fewer streams than this would make them too short
    max_streams: int
    model_format: str  # "original" (the GGUF as given), "q8_0" (derived, faster here), or
    # "none": no LLM at all (the default model's tokenizer; SSM + n-grams + match + mixer)
    ensemble: str  # "full": n-grams + match + bias head + mixer (+ SSM without an LLM);
    # "full+ssm": the SSM next to the LLM too, once the input is long enough to train it

    def streams_for(self, n_tokens: int) -> int:
        return max(1, min(self.max_streams, n_tokens // self.min_tokens_per_stream))


# Below this many tokens the SSM next to the LLM costs bits (it is still cold when the
# file ends); at 100 KB it was about neutral on prose and source and paid on a JSON log
# (figures: bench/results/design-figures.md).
SSM_MIN_TOKENS = 16384

LLM_FREE_LEVEL = 1  # the level --model none takes its settings from
FASTEST_LLM_LEVEL = 2  # the level -1 takes its settings from when --model names an LLM

SINKS = 4  # first tokens kept when the window slides ("attention sinks", docs/design.md)

PRESETS = {
    # LLM-free: one stream (it codes best; more streams only amortise per-step overhead:
    # bench/results/design-figures.md)
    1: Preset(1, 256, 128, 1024, 1, "none", "full"),
    2: Preset(2, 384, 192, 1024, 64, "q8_0", "full"),
    3: Preset(3, 512, 256, 1024, 32, "q8_0", "full"),
    4: Preset(4, 512, 256, 2048, 32, "q8_0", "full"),
    5: Preset(5, 768, 384, 2048, 16, "q8_0", "full"),
    6: Preset(6, 1024, 512, 4096, 16, "q8_0", "full"),
    7: Preset(7, 1024, 512, 8192, 16, "q8_0", "full+ssm"),
    8: Preset(8, 1536, 768, 16384, 8, "q8_0", "full+ssm"),
    9: Preset(9, 2048, 1024, 32768, 4, "q8_0", "full+ssm"),
}


# On a GPU (the torch backend, --device cuda) a step of S streams costs about the same for
# S = 16 and S = 1,024, so the levels keep their tokens per stream (the cold-start cost in
# bits) and their window, and only lift the cap on streams; plan.py gives them larger
# blocks to fill the batch (at -6, a 4 MiB block of ~1.2 M tokens makes 256 streams).
# The cap keeps a block's float32 KV cache within GPU_KV_CELLS cells (~46 KB each for
# SmolLM2: 2^18 cells are ~12 GB), so the default levels fit a 16-24 GB card; more is
# --streams. A constant, not the card's free memory: the output never depends on it.
GPU_MAX_STREAMS = 1024
GPU_KV_CELLS = 1 << 18


def preset(level: int | None, device: str = "cpu") -> Preset:
    if level is None:
        level = DEFAULT_LEVEL
    if level not in PRESETS:
        raise ValueError(f"level must be 1..9, not {level}")
    return for_device(PRESETS[level], device)


def for_device(pre: Preset, device: str) -> Preset:
    """The level's settings on ``device``: more streams on a GPU; the LLM-free level,
    which runs no LLM, is the same everywhere."""
    if device != "cuda" or pre.model_format == "none":
        return pre
    cap = min(GPU_MAX_STREAMS, GPU_KV_CELLS // pre.window)
    return replace(pre, max_streams=max(pre.max_streams, cap))
