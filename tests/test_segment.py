"""Segmentation: full coverage, and nothing unsafe ever offered to the tokenizer."""

from __future__ import annotations

import re

from hypothesis import given, settings, strategies as st

from nacz import segment
from nacz.segment import MIN_TEXT_RUN, Region, is_text_safe, merge_adjacent, split_regions

# Bytes the SmolLM2 tokenizer drops (docs/design.md), invalid UTF-8, and a plane-4 code point.
UNSAFE = [b"\x04", b"\x06", b"\x13", b"\x14", b"\x16", b"\x1d", b"\x00", b"\xff", b"\xc3",
          b"\xed\xa0\x80", "\U00040000".encode()]


def _check_cover(data: bytes, regions: list[Region]) -> None:
    pos = 0
    for r in regions:
        assert r.start == pos and r.end > r.start
        pos = r.end
    assert pos == len(data)
    for a, b in zip(regions, regions[1:]):
        assert a.is_text != b.is_text


def test_plain_text_is_one_text_region():
    data = ("Hello, wörld! Καλημέρα κόσμε. 日本語のテキスト. 😀\n" * 5).encode()
    assert split_regions(data) == [Region(0, len(data), True)]


def test_unsafe_bytes_split_text():
    text = b"a" * MIN_TEXT_RUN
    for bad in UNSAFE:
        regions = split_regions(text + bad + text)
        assert [r.is_text for r in regions] == [True, False, True], bad
        assert not is_text_safe(bad)


def test_short_text_runs_stay_binary():
    data = b"\x00" * 10 + b"x" * (MIN_TEXT_RUN - 1) + b"\x00" * 10
    assert split_regions(data) == [Region(0, len(data), False)]


def test_merge_adjacent_joins_same_kind():
    rs = [Region(0, 5, False), Region(5, 9, False), Region(9, 20, True)]
    assert merge_adjacent(rs) == [Region(0, 9, False), Region(9, 20, True)]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=80), st.text(max_size=120).map(str.encode)),
                max_size=8).map(b"".join))
def test_regions_cover_input_and_text_is_safe(data):
    regions = split_regions(data, min_text=8)
    _check_cover(data, regions)
    for r in regions:
        if r.is_text:
            chunk = data[r.start:r.end]
            assert is_text_safe(chunk)
            chunk.decode("utf-8")  # valid UTF-8 by construction


_UNBOUNDED = re.compile(segment._TEXT_CHAR + b"+")  # one match per run, state per character


def _reference_regions(data: bytes, min_text: int) -> list[Region]:
    """The regions an unbounded match of every run gives (what _text_runs must equal)."""
    out, pos = [], 0
    for m in _UNBOUNDED.finditer(data):
        if m.end() - m.start() >= min_text:
            if m.start() > pos:
                out.append(Region(pos, m.start(), False))
            out.append(Region(m.start(), m.end(), True))
            pos = m.end()
    if pos < len(data):
        out.append(Region(pos, len(data), False))
    return out


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.text(min_size=1, max_size=3).map(str.encode),
                          st.integers(1, 3 * segment._PIECE // 2),
                          st.binary(max_size=3)), min_size=1, max_size=4))
def test_runs_longer_than_a_match_piece_join_exactly(parts):
    """Runs are matched in pieces of at most _PIECE characters (bounded memory); pieces
    that abut, across multi-byte characters too, join into exactly the unbounded runs."""
    data = b"".join(unit * n + sep for unit, n, sep in parts)
    assert split_regions(data, min_text=8) == _reference_regions(data, 8)
    assert is_text_safe(data) == (_UNBOUNDED.fullmatch(data) is not None)


def test_a_long_text_run_is_one_region_and_safe():
    data = "päivää 日本 ".encode() * (3 * segment._PIECE)
    assert split_regions(data) == [Region(0, len(data), True)]
    assert is_text_safe(data) and not is_text_safe(data + b"\xff")
