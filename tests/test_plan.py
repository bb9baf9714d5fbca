"""The plan's pure parts: stream counts and block sizes per level and device.

No model and no CUDA are needed: these are functions of the level, the device and a
block's token count only (the decoder reads the stream lengths from the header).
"""

from __future__ import annotations

import pytest

from nacz import params as hparams
from nacz.errors import NaczError
from nacz.plan import (DEFAULT_BLOCK_SIZE, GPU_BLOCK_SIZE, LLM_BLOCK_SIZE, Plan,
                       default_block_size)
from nacz.presets import GPU_KV_CELLS, GPU_MAX_STREAMS, PRESETS, preset


def _plan(level: int, device: str = "cpu", window: int | None = None) -> Plan:
    pre = preset(level, device)
    win = window or pre.window
    return Plan(pre, False, None, None, win, win // 2, 4, default_block_size(level, device),
                "torch" if device == "cuda" else "llama", device)


@pytest.mark.parametrize("level", [lvl for lvl, p in PRESETS.items() if p.model_format != "none"])
def test_gpu_levels_keep_stream_length_and_window_and_lift_the_cap(level):
    cpu, gpu = preset(level), preset(level, "cuda")
    assert (gpu.window, gpu.slide, gpu.min_tokens_per_stream, gpu.ensemble) == \
        (cpu.window, cpu.slide, cpu.min_tokens_per_stream, cpu.ensemble)
    # many more streams, within the KV budget of a 16-24 GB card
    assert gpu.max_streams == min(GPU_MAX_STREAMS, GPU_KV_CELLS // gpu.window)
    assert gpu.max_streams >= 4 * cpu.max_streams
    assert gpu.max_streams * gpu.window <= GPU_KV_CELLS
    # a small block codes exactly as on the CPU; a large one gets many more streams
    assert gpu.streams_for(10_000) == cpu.streams_for(10_000)
    many = GPU_MAX_STREAMS * gpu.min_tokens_per_stream
    assert gpu.streams_for(many) == gpu.max_streams
    assert cpu.streams_for(many) == cpu.max_streams


def test_cpu_presets_are_unchanged_by_the_device_argument():
    for level, pre in PRESETS.items():
        assert preset(level) is pre and preset(level, "cpu") is pre
    # the LLM-free level runs no LLM: the same settings on any device
    assert preset(1, "cuda") is PRESETS[1]


def test_block_sizes_per_device():
    assert default_block_size(6) == LLM_BLOCK_SIZE
    assert default_block_size(6, "cuda") == GPU_BLOCK_SIZE > LLM_BLOCK_SIZE
    assert default_block_size(1, "cuda") == default_block_size(1) == DEFAULT_BLOCK_SIZE[1]


def test_default_gpu_block_fills_hundreds_of_streams_within_the_kv_limit():
    # ~3.4 bytes per token on English: a 4 MiB block at -6 is ~1.2 M tokens
    lengths = _plan(6, "cuda").stream_lengths(1_200_000)
    assert len(lengths) == GPU_KV_CELLS // PRESETS[6].window == 256
    assert sum(lengths) == 1_200_000
    assert len(_plan(2, "cuda").stream_lengths(1_200_000)) == 682
    assert len(_plan(6).stream_lengths(1_200_000)) == PRESETS[6].max_streams
    _, cells = hparams.limits({"device": "cuda"})
    for level, pre in PRESETS.items():  # every level's fullest batch fits the cache
        if pre.model_format != "none":
            assert preset(level, "cuda").max_streams * pre.window <= GPU_KV_CELLS <= cells


def test_stream_lengths_refuse_a_batch_beyond_the_kv_limit():
    with pytest.raises(NaczError, match="KV cache limit"):
        _plan(6, window=8192).stream_lengths(10**6)
