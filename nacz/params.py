"""The neural parameter block of the header: building it, and validating what a file claims.

Everything that changes a coding probability lives here and travels with the file. The
decoder builds its models from these values only, never from its own defaults; anything
unknown, missing or out of range is a format error before any decoding starts.
"""

from __future__ import annotations

from dataclasses import dataclass

from .alphabet import MIN_TYPES
from .frozen import NEURAL_KEYS
from .validation import HEADER as check

MAX_STREAMS = 256  # llama.cpp's limit on sequences per context
MIN_WINDOW, MAX_WINDOW = 16, 1 << 15
# KV cells over all streams (~23 KB each for SmolLM2): bounds what a header can make us
# allocate (65,536 cells is ~1.5 GB); every level stays far below it.
MAX_KV_CELLS = 1 << 16
# The torch backend on a GPU fills it with many more streams per step. Its float32 KV
# cache takes ~46 KB per cell for SmolLM2: 2^21 cells are ~96 GB, one H200's worth.
MAX_STREAMS_CUDA, MAX_KV_CELLS_CUDA = 4096, 1 << 21


def limits(device: dict | None) -> tuple[int, int]:
    """(streams, KV cells) a file may ask for: more for the torch backend on CUDA."""
    if device and device.get("device") == "cuda":
        return MAX_STREAMS_CUDA, MAX_KV_CELLS_CUDA
    return MAX_STREAMS, MAX_KV_CELLS


@dataclass(frozen=True)
class NeuralParams:
    model_name: str
    model_sha256: str
    model_size: int
    model_derived: dict | None  # {"from": base sha256, "format": "q8_0"} or None
    level: int  # the preset used (informational: every value it chose is stored too)
    backend_name: str
    backend_version: str
    fingerprint: str
    cpu: str  # CPU features llama.cpp used where the file was made (for diagnostics)
    vocab_size: int
    start_token: int
    streams: tuple[int, ...]
    window: int
    slide: int
    sinks: int
    ensemble: dict
    coder: dict
    # LLM-free segments: the number of token types that occur, or None (the whole
    # vocabulary). The types themselves open the neural payload (alphabet.py).
    alphabet: int | None = None
    # The torch backend's description (versions, device, dtype: backends.describe), else None
    device: dict | None = None
    # Which buffer types llama.cpp held the weights in (backends/llama.py WEIGHT_BUFFERS);
    # None in files written before nacz recorded it: llama.cpp's default ("extra") then.
    weight_buffers: str | None = None

    def to_dict(self) -> dict:
        return {
            "model": {"name": self.model_name, "sha256": self.model_sha256,
                      "size": self.model_size,
                      **({"derived": self.model_derived} if self.model_derived else {})},
            "level": self.level,
            "backend": {"name": self.backend_name, "version": self.backend_version,
                        "fingerprint": self.fingerprint, "cpu": self.cpu,
                        **({"device": self.device} if self.device else {}),
                        **({"weight_buffers": self.weight_buffers}
                           if self.weight_buffers else {})},
            "tokenizer": {"vocab_size": self.vocab_size, "start_token": self.start_token,
                          **({"alphabet": self.alphabet} if self.alphabet else {})},
            "streams": list(self.streams),
            "context": {"window": self.window, "slide": self.slide, "sinks": self.sinks},
            "ensemble": self.ensemble,
            "coder": self.coder,
        }

    @property
    def n_tokens(self) -> int:
        return sum(self.streams)

    @property
    def coded_vocab(self) -> int:
        """How many symbols each token is coded among."""
        return self.alphabet or self.vocab_size


def parse(d: dict) -> NeuralParams:
    d = check.obj(d, "neural", NEURAL_KEYS)
    m = d["model"]
    m = check.obj(m, "model", {"name", "sha256", "size"} | ({"derived"} if isinstance(m, dict)
                                                        and "derived" in m else set()))
    derived = None
    if "derived" in m:
        derived = check.obj(m["derived"], "model derived", {"from", "format"})
        derived = {"from": check.hexdigest(derived["from"], "derived from", 64),
                   "format": check.text(derived["format"], "derived format", 16)}
        from .resources import DERIVED_FORMATS
        if derived["format"] not in DERIVED_FORMATS:
            raise check.error(f"unknown model format {derived['format']!r}")
    b = d["backend"]
    b = check.obj(b, "backend", {"name", "version", "fingerprint", "cpu"} | (
        {k for k in ("device", "weight_buffers") if isinstance(b, dict) and k in b}))
    device = None
    if "device" in b:
        device = b["device"]
        if not isinstance(device, dict) or not 0 < len(device) <= 16 or not all(
                isinstance(k, str) and len(k) <= 32 for k in device):
            raise check.error("bad backend device")
        device = {k: check.text(v, "backend device") for k, v in device.items()}
    t = d["tokenizer"]
    t = check.obj(t, "tokenizer", {"vocab_size", "start_token"} | (
        {"alphabet"} if isinstance(t, dict) and "alphabet" in t else set()))
    c = check.obj(d["context"], "context", {"window", "slide", "sinks"})
    streams = d["streams"]
    max_streams, max_cells = limits(device)
    if not isinstance(streams, list) or not 1 <= len(streams) <= max_streams:
        raise check.error("bad stream table")
    streams = tuple(check.integer(s, "streams", 1, 1 << 48) for s in streams)
    if any(a < b for a, b in zip(streams, streams[1:])):
        raise check.error("stream lengths not in order")
    vocab = check.integer(t["vocab_size"], "vocab_size", 2, 1 << 24)
    window = check.integer(c["window"], "window", MIN_WINDOW, MAX_WINDOW)
    if len(streams) * window > max_cells:
        raise check.error("streams x window exceeds the KV cache limit")
    sinks = check.integer(c["sinks"], "sinks", 1, window // 2)
    slide = check.integer(c["slide"], "slide", 1, window - sinks - 1)
    if not isinstance(d["ensemble"], dict) or not isinstance(d["coder"], dict):
        raise check.error("bad ensemble or coder parameters")
    return NeuralParams(
        model_name=check.text(m["name"], "model name"),
        model_sha256=check.hexdigest(m["sha256"], "model sha256", 64),
        model_size=check.integer(m["size"], "model size", 0, 1 << 50),
        model_derived=derived, level=check.integer(d["level"], "level", 0, 9),
        backend_name=check.text(b["name"], "backend name"),
        backend_version=check.text(b["version"], "backend version"),
        fingerprint=check.hexdigest(b["fingerprint"], "fingerprint", 32),
        cpu=check.text(b["cpu"], "backend cpu", 1024),
        vocab_size=vocab,
        start_token=check.integer(t["start_token"], "start_token", 0, vocab - 1),
        streams=streams, window=window, slide=slide, sinks=sinks,
        ensemble=d["ensemble"], coder=d["coder"],
        alphabet=(check.integer(t["alphabet"], "alphabet", MIN_TYPES, vocab) if "alphabet" in t
                  else None),
        device=device,
        weight_buffers=(check.text(b["weight_buffers"], "weight_buffers", 32)
                        if "weight_buffers" in b else None),
    )
