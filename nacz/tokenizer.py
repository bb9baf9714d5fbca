"""bytes <-> tokens with the model's vocabulary, and the round-trip check.

Only text that ``segment.is_text_safe`` accepts may be tokenized: llama.cpp aborts the
process on invalid UTF-8. Detokenizing is a lookup in a table of each token's bytes, so
decoding never depends on llama.cpp's detokenizer quirks.
"""

from __future__ import annotations

import ctypes

import numpy as np

from .errors import NaczError
from .segment import is_text_safe

CHUNK = 8192  # tokenize in pieces: bounded work per call even on pathological input
_CUT_WINDOW = 1024


class Tokenizer:
    def __init__(self, model):
        import llama_cpp as lib

        self._lib = lib
        self._vocab = model.vocab
        self.vocab_size = model.vocab_size
        buf = ctypes.create_string_buffer(256)
        pieces = []
        for tok in range(self.vocab_size):
            n = lib.llama_token_to_piece(self._vocab, tok, buf, len(buf), 0, False)
            if n < 0:
                raise NaczError(f"token {tok} has a piece longer than {len(buf)} bytes")
            pieces.append(buf.raw[:n])
        self.pieces = pieces
        # The shortest piece any token can decode to; 0 would break the size bounds the
        # container relies on (a token of n bytes is at least one byte).
        self.empty = np.array([len(p) == 0 for p in pieces])

    def tokenize(self, text: bytes) -> np.ndarray:
        if not is_text_safe(text):
            raise ValueError("only tokenizer-safe text may be tokenized")
        out = [self._tokenize_chunk(chunk) for chunk in _chunks(text)]
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int32)

    def _tokenize_chunk(self, chunk: bytes) -> np.ndarray:
        cap = len(chunk) + 16
        buf = (ctypes.c_int32 * cap)()
        n = self._lib.llama_tokenize(self._vocab, chunk, len(chunk), buf, cap, False, False)
        if n < 0:
            raise NaczError("tokenizer produced more tokens than bytes")
        return np.ctypeslib.as_array(buf)[:n].copy()

    def detokenize(self, tokens: np.ndarray) -> bytes:
        pieces = self.pieces
        return b"".join([pieces[t] for t in tokens.tolist()])

    def tokenize_verified(self, text: bytes) -> np.ndarray | None:
        """Tokens of ``text`` if they decode back to exactly ``text``, else None."""
        tokens = self.tokenize(text)
        if len(tokens) == 0 or self.empty[tokens].any() or self.detokenize(tokens) != text:
            return None
        return tokens


def _chunks(text: bytes):
    """Pieces of at most CHUNK bytes, cut after a newline or space when one is near the
    end, else at a UTF-8 character boundary (so every piece is valid UTF-8)."""
    pos, n = 0, len(text)
    while pos < n:
        end = min(pos + CHUNK, n)
        if end < n:
            lo = max(pos + 1, end - _CUT_WINDOW)
            cut = text.rfind(b"\n", lo, end)
            if cut >= 0:
                end = cut + 1  # newline ends this piece
            elif (cut := text.rfind(b" ", lo, end)) > pos:
                end = cut  # the space starts the next word, as the tokenizer expects
            else:
                while end > pos + 1 and 0x80 <= text[end] < 0xC0:
                    end -= 1
        yield text[pos:end]
        pos = end
