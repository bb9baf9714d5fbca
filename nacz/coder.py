"""Entropy coding with constriction's range coder and 24-bit categorical models.

One batched call per step codes the tokens of all active streams, each row of the
probability matrix being that stream's model. ``perfect=False`` is always passed
explicitly: constriction's default prints a warning (to stdout) and is slower.
"""

from __future__ import annotations

import constriction  # a native module: import submodules as attributes
import numpy as np

from .errors import FormatError, IntegrityError

PRECISION_BITS = 24  # constriction's Categorical uses 24-bit fixed-point probabilities


def _family():
    return constriction.stream.model.Categorical(perfect=False)


def _bits():
    return constriction.stream.model.Bernoulli(perfect=False)


def min_bits_per_symbol(vocab_size: int) -> float:
    """Lower bound on the cost of one symbol: every other symbol keeps at least one
    quantum of probability, so no symbol is ever free. Bounds how many tokens a payload
    of a given size can hold (used to reject absurd token counts before decoding)."""
    p_max = 1.0 - (vocab_size - 1) / float(1 << PRECISION_BITS)
    return -np.log2(p_max) if p_max < 1.0 else 0.0


class Encoder:
    def __init__(self):
        self._enc = constriction.stream.queue.RangeEncoder()
        self._family = _family()
        self._bit_family = _bits()

    def __call__(self, symbols: np.ndarray, probs: np.ndarray) -> np.ndarray:
        self._enc.encode(np.ascontiguousarray(symbols, dtype=np.int32), self._family, probs)
        return symbols

    def bits(self, bits: np.ndarray, p_one: np.ndarray) -> np.ndarray:
        """Binary symbols, each with its own probability of a 1."""
        self._enc.encode(np.ascontiguousarray(bits, dtype=np.int32), self._bit_family, p_one)
        return bits

    def finish(self) -> bytes:
        return self._enc.get_compressed().astype("<u4").tobytes()


class Decoder:
    def __init__(self, payload: bytes, vocab_size: int):
        if len(payload) % 4:
            raise FormatError("corrupt neural payload (length is not a multiple of 4)")
        self._dec = constriction.stream.queue.RangeDecoder(
            np.frombuffer(payload, dtype="<u4").astype(np.uint32))
        self._family = _family()
        self._bit_family = _bits()
        # Once the payload is used up, what is left to decode must fit in the coder's
        # final state (at most 64 bits), and no symbol is free: past this many symbols the
        # header lied about the token count, so stop instead of decoding for days.
        self._after_end_limit = int(64 / min_bits_per_symbol(vocab_size)) + 1
        self._after_end = 0

    def __call__(self, probs: np.ndarray) -> np.ndarray:
        return self._decode(self._family, probs)

    def bits(self, p_one: np.ndarray) -> np.ndarray:
        """Binary symbols, each with its own probability of a 1 (see Encoder.bits)."""
        # Not counted against the after-end limit: their number is fixed by the caller,
        # and near-certain bits cost next to nothing, so many may follow the payload's end.
        return self._decode(self._bit_family, p_one, count=False)

    def _decode(self, family, probs: np.ndarray, count: bool = True) -> np.ndarray:
        try:
            out = self._dec.decode(family, probs)
        except (AssertionError, ValueError, RuntimeError) as e:
            # constriction refuses data that no encoder could have produced.
            raise IntegrityError(f"corrupt neural payload ({e})") from None
        if count and self._dec.maybe_exhausted():
            self._after_end += len(out)
            if self._after_end > self._after_end_limit:
                raise IntegrityError("corrupt file (more tokens than the neural payload holds)")
        return out
