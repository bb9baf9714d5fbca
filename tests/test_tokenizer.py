"""Tokenizer round trips with the real SmolLM2 vocabulary."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from nacz import tokenizer as tk
from nacz.segment import is_text_safe

SAMPLES = [
    "The quick brown fox jumps over the lazy dog.",
    "Ελληνικά, русский, العربية, 中文, 한국어, emoji 😀🚀, NBSP\u00a0and ZWSP\u200b.",
    "def f(x):\n\treturn x ** 2  # comment\r\n",
    "   leading spaces and trailing   \n\n\n",
]


@pytest.mark.parametrize("text", SAMPLES)
def test_real_text_round_trips(runtime, text):
    data = text.encode()
    toks = runtime.tokenizer.tokenize_verified(data)
    assert toks is not None and 0 < len(toks) <= len(data)
    assert runtime.tokenizer.detokenize(toks) == data


def test_unsafe_input_never_reaches_llama(runtime):
    with pytest.raises(ValueError):
        runtime.tokenizer.tokenize(b"abc\x04def")
    with pytest.raises(ValueError):
        runtime.tokenizer.tokenize(b"\xff\xfe invalid utf-8")


def test_long_text_is_tokenized_in_chunks_that_round_trip(runtime):
    data = ("word " * 5000 + "x" * 20000 + "é" * 9000).encode()
    chunks = list(tk._chunks(data))
    assert b"".join(chunks) == data
    assert all(len(c) <= tk.CHUNK for c in chunks)
    for c in chunks:
        c.decode("utf-8")
    assert runtime.tokenizer.tokenize_verified(data) is not None


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=200))
def test_safe_text_either_round_trips_or_is_refused(runtime, text):
    data = text.encode()
    if not data or not is_text_safe(data):
        return
    toks = runtime.tokenizer.tokenize_verified(data)
    if toks is not None:
        assert runtime.tokenizer.detokenize(toks) == data
