"""Split input bytes into text-like regions (candidates for neural coding) and binary ones.

Only bytes that form valid UTF-8 of code points the tokenizer is known to carry may ever
reach llama.cpp's tokenizer: invalid UTF-8 aborts the whole process there (docs/design.md).
The tokenizer's round trip is verified afterwards per region; this module only makes sure
nothing dangerous is offered to it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Text: tab, LF, CR, printable ASCII, and UTF-8 sequences of code points below U+40000,
# excluding C1 controls (U+0080..U+009F). C0 controls, DEL, invalid UTF-8 and planes 4+
# are binary (several C0 controls and the high planes do not survive the tokenizer).
_TEXT_CHAR = (
    rb"(?:[\t\n\r\x20-\x7e]"
    rb"|\xc2[\xa0-\xbf]|[\xc3-\xdf][\x80-\xbf]"
    rb"|\xe0[\xa0-\xbf][\x80-\xbf]|[\xe1-\xec\xee\xef][\x80-\xbf]{2}|\xed[\x80-\x9f][\x80-\xbf]"
    rb"|\xf0[\x90-\xbf][\x80-\xbf]{2})")
# At most _PIECE characters per match: Python's re keeps backtracking state for every
# repetition of a group, ~70 bytes per character (1.1 GB for one 16 MiB run of text), so
# runs are matched in bounded pieces and abutting pieces joined (_text_runs). The
# alternatives are told apart by their first byte, so the pieces join to the same runs.
_PIECE = 1 << 12
_TEXT_PIECE = re.compile(_TEXT_CHAR + rb"{1,%d}" % _PIECE)

MIN_TEXT_RUN = 256  # shorter text runs are not worth a segment (and an LLM start) of their own


@dataclass(frozen=True)
class Region:
    start: int
    end: int
    is_text: bool

    def __len__(self) -> int:
        return self.end - self.start


def _text_runs(data: bytes):
    """(start, end) of each maximal run of text characters, in order."""
    start = end = -1
    for m in _TEXT_PIECE.finditer(data):
        if m.start() != end:
            if end >= 0:
                yield start, end
            start = m.start()
        end = m.end()
    if end >= 0:
        yield start, end


def split_regions(data: bytes, min_text: int = MIN_TEXT_RUN) -> list[Region]:
    """Cover ``data`` with alternating text/binary regions, in order, without gaps."""
    regions: list[Region] = []
    pos = 0
    for start, end in _text_runs(data):
        if end - start < min_text:
            continue
        if start > pos:
            regions.append(Region(pos, start, False))
        regions.append(Region(start, end, True))
        pos = end
    if pos < len(data):
        regions.append(Region(pos, len(data), False))
    return regions


def merge_adjacent(regions: list[Region]) -> list[Region]:
    """Join neighbours of the same kind (after some text regions were demoted to binary)."""
    out: list[Region] = []
    for r in regions:
        if out and out[-1].is_text == r.is_text and out[-1].end == r.start:
            out[-1] = Region(out[-1].start, r.end, r.is_text)
        else:
            out.append(r)
    return out


def is_text_safe(data: bytes) -> bool:
    """True if every byte of ``data`` may be handed to the tokenizer."""
    runs = _text_runs(data)
    return next(runs, None) == (0, len(data))
