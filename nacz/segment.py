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
_TEXT_RUN = re.compile(
    rb"(?:[\t\n\r\x20-\x7e]"
    rb"|\xc2[\xa0-\xbf]|[\xc3-\xdf][\x80-\xbf]"
    rb"|\xe0[\xa0-\xbf][\x80-\xbf]|[\xe1-\xec\xee\xef][\x80-\xbf]{2}|\xed[\x80-\x9f][\x80-\xbf]"
    rb"|\xf0[\x90-\xbf][\x80-\xbf]{2})+")

MIN_TEXT_RUN = 256  # shorter text runs are not worth a segment (and an LLM start) of their own


@dataclass(frozen=True)
class Region:
    start: int
    end: int
    is_text: bool

    def __len__(self) -> int:
        return self.end - self.start


def split_regions(data: bytes, min_text: int = MIN_TEXT_RUN) -> list[Region]:
    """Cover ``data`` with alternating text/binary regions, in order, without gaps."""
    regions: list[Region] = []
    pos = 0
    for m in _TEXT_RUN.finditer(data):
        if m.end() - m.start() < min_text:
            continue
        if m.start() > pos:
            regions.append(Region(pos, m.start(), False))
        regions.append(Region(m.start(), m.end(), True))
        pos = m.end()
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
    m = _TEXT_RUN.fullmatch(data)
    return m is not None
