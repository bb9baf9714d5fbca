"""Checks of values read from a file: the header's parameters (params.py) and the model
specs (the mixed ensemble's parts, the SSM). One dialect: every failed check raises
``FormatError("<subject> (<what is wrong>)")``, e.g. "corrupt header ('window' out of
range)" or "corrupt ensemble spec (bad 'ngram' parameters)".

Only exact types pass (``type(v) is int``: no bools, no floats standing in for ints), and
every float must be finite, so nothing a hostile header says reaches a model unchecked.
"""

from __future__ import annotations

import math

from .errors import FormatError


class Checks:
    """The checks of one subject (what the error message says is corrupt)."""

    def __init__(self, subject: str):
        self.subject = subject

    def error(self, what: str) -> FormatError:
        return FormatError(f"{self.subject} ({what})")

    def obj(self, d: object, where: str, keys: set[str]) -> dict:
        """``d`` itself if it is a dict with exactly ``keys``."""
        if not isinstance(d, dict) or set(d) != keys:
            raise self.error(f"bad '{where}' parameters")
        return d

    def integer(self, v: object, name: str, lo: int, hi: int) -> int:
        if type(v) is not int or not lo <= v <= hi:
            raise self.error(f"'{name}' out of range")
        return v

    def number(self, v: object, name: str, lo: float, hi: float, *,
               lo_open: bool = False) -> float:
        """A finite int or float in [lo, hi] (``lo_open``: in (lo, hi]), as a float."""
        if type(v) not in (int, float) or not math.isfinite(v) or not v <= hi or \
                not (lo < v if lo_open else lo <= v):
            raise self.error(f"'{name}' out of range")
        return float(v)

    def integers(self, v: object, name: str, lo: int, hi: int, n_min: int,
                 n_max: int) -> list[int]:
        if not isinstance(v, list) or not n_min <= len(v) <= n_max:
            raise self.error(f"bad '{name}' list")
        return [self.integer(x, name, lo, hi) for x in v]

    def numbers(self, v: object, name: str, lo: float, hi: float, n_min: int,
                n_max: int) -> list[float]:
        if not isinstance(v, list) or not n_min <= len(v) <= n_max:
            raise self.error(f"bad '{name}' list")
        return [self.number(x, name, lo, hi) for x in v]

    def increasing(self, values: list, what: str) -> list:
        if any(a >= b for a, b in zip(values, values[1:])):
            raise self.error(f"{what} not increasing")
        return values

    def text(self, v: object, name: str, maxlen: int = 256) -> str:
        if not isinstance(v, str) or len(v) > maxlen:
            raise self.error(f"bad '{name}'")
        return v

    def hexdigest(self, v: object, name: str, length: int) -> str:
        """A lower-case hex string of exactly ``length`` characters."""
        s = self.text(v, name)
        if len(s) != length or any(ch not in "0123456789abcdef" for ch in s):
            raise self.error(f"bad '{name}'")
        return s


HEADER = Checks("corrupt header")
ENSEMBLE = Checks("corrupt ensemble spec")
SSM = Checks("corrupt SSM spec")
