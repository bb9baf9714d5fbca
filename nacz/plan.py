"""The plan: options and level -> the settings a file records. Pure: no model, no I/O.

Everything that decides how a block is coded comes from here, as a function of the
options, the level and the block's own token count -- never of the machine, the job count
or timing -- so every worker (process or Ray actor) derives the same settings.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from . import engine, params as hparams
from .backends import DEFAULT_DTYPE, LLAMA, TORCH, require
from .errors import NaczError
from .models.ensemble import default_spec
from .presets import (FASTEST_LLM_LEVEL, LLM_FREE_LEVEL, SINKS, SSM_MIN_TOKENS, Preset,
                      preset)

LLM_FREE = "none"  # --model none: no LLM; the default model's tokenizer only

# Block sizes (format version 2). Each block is coded on its own (cold models), so a block
# must be long enough for the online models to learn (bench/results/2026-12-04-blocks.md):
# at -1, 4 MiB blocks cost 2.6% on a 10 MB input against one block; 16 MiB keeps it one
# block (~0.5 GB peak RSS). The LLM levels start warm from the weights and lose less.
MIN_BLOCK_SIZE = 1 << 10
MAX_BLOCK_SIZE = 1 << 30
DEFAULT_BLOCK_SIZE = {1: 16 << 20}  # per level; other levels: LLM_BLOCK_SIZE
LLM_BLOCK_SIZE = 1 << 20
# The LLM levels on a GPU: a block's streams are what fills one batch, and the levels' stream
# lengths stay as on the CPU (presets.GPU_MAX_STREAMS), so a block needs more tokens.
GPU_BLOCK_SIZE = 4 << 20


def is_llm_free(model) -> bool:
    return isinstance(model, str) and model == LLM_FREE


def default_block_size(level: int, device: str = "cpu") -> int:
    if level in DEFAULT_BLOCK_SIZE:
        return DEFAULT_BLOCK_SIZE[level]
    return GPU_BLOCK_SIZE if device == "cuda" else LLM_BLOCK_SIZE


@dataclass(frozen=True)
class Plan:
    """What the options and level decide, before any input is seen."""

    preset: Preset
    llm_free: bool
    model: str | os.PathLike | None  # as given (None: $NACZ_MODEL or the default)
    streams: int | None  # expert override of the preset's stream count
    window: int
    slide: int
    sinks: int
    block_size: int
    backend: str = LLAMA  # backends.CHOICES
    device: str = "cpu"  # backends.DEVICES
    dtype: str = DEFAULT_DTYPE  # backends.DTYPES (torch only)

    @property
    def level(self) -> int:
        return self.preset.level

    @property
    def model_format(self) -> str:
        return self.preset.model_format

    def stream_lengths(self, n_tokens: int) -> list[int]:
        """The block's streams: from its token count, the level and --device, never the
        machine."""
        n = self.streams if self.streams else self.preset.streams_for(n_tokens)
        max_streams, max_cells = hparams.limits(
            {"device": self.device} if self.backend == TORCH else None)
        lengths = engine.split_streams(n_tokens, min(n, max_streams))
        if len(lengths) * self.window > max_cells:
            raise NaczError(f"{len(lengths)} streams x window {self.window} exceed the KV "
                            f"cache limit of {max_cells} cells; use fewer streams "
                            "or a smaller window")
        return lengths

    def _with_ssm(self, n_tokens: int) -> bool | None:
        if self.preset.ensemble == "full+ssm" and n_tokens >= SSM_MIN_TOKENS:
            return True
        return None  # the default: SSM only without an LLM

    def ensemble(self, n_tokens: int, hidden: int = 0) -> dict:
        """The ensemble spec of a block of ``n_tokens`` tokens; ``hidden``: the size of
        the LLM's hidden states, 0 where the backend gives none."""
        if self.preset.ensemble not in ("full", "full+ssm"):
            return {"kind": "llm"}
        return default_spec(n_tokens, uses_llm=not self.llm_free,
                            with_ssm=self._with_ssm(n_tokens), hidden=hidden)

    def probe_ensemble(self, hidden: int = 0) -> dict:
        """An ensemble spec of the widest kind any block of this plan can use: the file's
        one fingerprint covers every kernel its blocks run (format version 2)."""
        return self.ensemble(max(SSM_MIN_TOKENS, 1), hidden)


def make_plan(model=None, level: int | None = None, streams: int | None = None,
              window: int | None = None, slide: int | None = None, sinks: int | None = None,
              block_size: int | None = None, backend: str = LLAMA, device: str = "cpu",
              dtype: str = DEFAULT_DTYPE) -> Plan:
    require(backend, device, dtype)  # before any work: a missing torch or CUDA is one line
    pre = preset(level, device)
    llm_free = is_llm_free(model) or (pre.model_format == LLM_FREE and not model
                                      and backend == LLAMA)
    if llm_free and backend != LLAMA:
        raise NaczError(f"--backend {backend} needs an LLM (not --model none)")
    if llm_free and pre.model_format != LLM_FREE:
        pre = preset(LLM_FREE_LEVEL, device)  # --model none: the LLM-free level's settings
    elif not llm_free and pre.model_format == LLM_FREE:
        pre = preset(FASTEST_LLM_LEVEL, device)  # -1 --model X: an LLM needs many streams
    win = window or pre.window
    sl = slide or (win // 2 if window else pre.slide)
    sk = sinks or SINKS
    if win > hparams.MAX_WINDOW:
        raise NaczError(f"window {win} exceeds the limit of {hparams.MAX_WINDOW}")
    if block_size is None:
        # The level whose settings are used (--model none or -1 --model X switch it), so
        # that -1's block size goes with -1's speed; larger on a GPU.
        block_size = default_block_size(pre.level, device)
    if not MIN_BLOCK_SIZE <= block_size <= MAX_BLOCK_SIZE:
        raise NaczError(f"block size must be between {MIN_BLOCK_SIZE} and {MAX_BLOCK_SIZE} "
                        "bytes")
    return Plan(pre, llm_free, LLM_FREE if llm_free else model, streams, win, sl, sk,
                block_size, backend, device, dtype)
