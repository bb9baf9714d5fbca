"""Ensembles: turn backend logits into coding probabilities, learning as they go.

An ensemble is described by a plain dict (``spec``) that travels in the container header;
the decoder rebuilds the identical ensemble from it, never from its own defaults.

- ``{"kind": "llm"}``: softmax of the LLM's logits (format 1's first ensemble; kept so
  files made with it decode forever).
- ``{"kind": "ensemble", "mixer": <MixedEnsemble spec>, "ssm": <OnlineSSM spec> | null}``:
  n-gram tables, match model, bias head and learned mixer over the LLM (when there is
  one), with the online SSM as an extra dense input when present.
"""

from __future__ import annotations

import numpy as np

from .. import frozen
from ..errors import FormatError
from ..kernels import softmax_rows
from . import mixed, ssm


class LLMOnly:
    """The LLM's own distribution: softmax of its logits. Learns nothing."""

    kind = "llm"
    uses_llm = True
    hidden_size = 0  # takes no LLM hidden states

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size
        self._buf = np.zeros((0, vocab_size), dtype=np.float64)

    @property
    def spec(self) -> dict:
        return {"kind": self.kind}

    def reset(self, n_streams: int) -> None:
        self._buf = np.zeros((n_streams, self.vocab_size), dtype=np.float64)

    def wants_llm(self, n_active: int) -> np.ndarray | None:
        return None  # every row, every step

    def predict(self, logits: np.ndarray, want: np.ndarray | None = None,
                n_active: int | None = None, hidden: np.ndarray | None = None) -> np.ndarray:
        out = self._buf[:logits.shape[0]]
        softmax_rows(logits, out)
        return out

    def update(self, tokens: np.ndarray) -> None:
        pass


class Ensemble:
    """The online ensemble: mixer (n-grams, match, bias head) + optional SSM input."""

    kind = "ensemble"

    def __init__(self, mixer_spec: object, ssm_spec: object, vocab_size: int, uses_llm: bool):
        self.vocab_size = vocab_size
        self.uses_llm = uses_llm
        self.ssm = ssm.OnlineSSM.from_spec(ssm_spec, vocab_size) if ssm_spec is not None else None
        self.mixer = mixed.MixedEnsemble.from_spec(mixer_spec, vocab_size)
        if self.mixer.n_dense != (1 if self.ssm else 0):
            raise FormatError("corrupt header (mixer inputs do not match the SSM setting)")
        if self.mixer.hidden_size and not uses_llm:
            raise FormatError("corrupt header (a hidden-state input without an LLM)")

    @property
    def hidden_size(self) -> int:
        """The size of the LLM hidden state each step's predict takes (0: none)."""
        return self.mixer.hidden_size

    @property
    def spec(self) -> dict:
        return {"kind": self.kind, "llm": self.uses_llm, "mixer": self.mixer.header_spec,
                "ssm": self.ssm.spec if self.ssm else None}

    def reset(self, n_streams: int) -> None:
        self.mixer.reset(n_streams)
        if self.ssm:
            self.ssm.reset(n_streams)

    def wants_llm(self, n_active: int) -> np.ndarray | None:
        """Which active streams need LLM logits this step (None: all). Decided from state
        before this step only, identically on both sides."""
        if not self.uses_llm:
            return np.zeros(n_active, dtype=np.bool_)
        return ~self.mixer.confident(n_active)

    def predict(self, logits: np.ndarray | None, want: np.ndarray | None = None,
                n_active: int | None = None, hidden: np.ndarray | None = None) -> np.ndarray:
        if logits is not None:
            n_active = logits.shape[0]
        dense = [self.ssm.logprobs(n_active)] if self.ssm else None
        if not self.uses_llm:
            return self.mixer.predict(None, dense=dense, n_active=n_active)
        return self.mixer.predict(logits, want, dense=dense, hidden=hidden)

    def update(self, tokens: np.ndarray) -> None:
        self.mixer.update(tokens)  # the mixer reads this step's SSM output: before the SSM
        if self.ssm:
            self.ssm.update(tokens)


def default_spec(n_tokens: int, uses_llm: bool = True, with_ssm: bool | None = None,
                 skip: bool = True, preset: int | None = None, hidden: int = 0) -> dict:
    """The default ensemble. The SSM is an input only without an LLM: next to the LLM it
    cost bits on small inputs (bench/results/design-figures.md), because the mixer learns
    to discount a cold SSM too slowly. ``preset``: the mixer preset (default: the latest
    one for the mode); ``hidden``: the LLM's hidden size, for presets that read its hidden
    state (mixed_spec.HIDDEN_PRESETS; 0: the backend gives none, and the default is then
    the latest preset that needs none)."""
    if with_ssm is None:
        with_ssm = not uses_llm
    if preset is None:
        preset = (mixed.LLM_FREE_PRESET if not uses_llm else
                  mixed.LATEST_PRESET if hidden else mixed.LATEST_PRESET_NO_HIDDEN)
    if preset not in mixed.HIDDEN_PRESETS:
        hidden = 0
    mixer_spec = (mixed.preset_spec(n_tokens, n_dense=1 if with_ssm else 0, preset=preset,
                                    hidden=hidden)
                  if skip else
                  mixed.default_spec(n_tokens, n_dense=1 if with_ssm else 0, skip=None))
    return {"kind": Ensemble.kind, "llm": uses_llm, "mixer": mixer_spec,
            "ssm": ssm.default_spec() if with_ssm else None}


def make_ensemble(spec: object, vocab_size: int):
    """Build the ensemble a header describes; anything unknown is a format error."""
    if isinstance(spec, dict) and spec == {"kind": LLMOnly.kind}:
        return LLMOnly(vocab_size)
    if isinstance(spec, dict) and spec.get("kind") == Ensemble.kind and \
            set(spec) == {"kind", "llm", "mixer", "ssm"} and isinstance(spec["llm"], bool):
        return Ensemble(spec["mixer"], spec["ssm"], vocab_size, spec["llm"])
    raise FormatError(f"unsupported ensemble in header: {str(spec)[:80]}")


def probe_kind(spec: dict) -> tuple:
    """What distinguishes ensembles for the backend fingerprint: their kind and parts (and
    the hidden size, for an ensemble that reads the LLM's hidden states)."""
    if spec.get("kind") == Ensemble.kind:
        kind = (Ensemble.kind, bool(spec.get("llm")), spec.get("ssm") is not None)
        hidden = hidden_size_of(spec)
        return kind + (hidden,) if hidden else kind
    return (str(spec.get("kind")),)


def hidden_size_of(spec: dict) -> int:
    """The LLM hidden size an ensemble spec reads (0: none), from its compact or full
    mixer spec, unvalidated (make_ensemble validates)."""
    m = spec.get("mixer") if isinstance(spec, dict) else None
    if not isinstance(m, dict):
        return 0
    lowrank = m.get("lowrank")  # a crafted header may put anything here
    h = m.get("hidden") if "preset" in m else \
        lowrank.get("hidden") if isinstance(lowrank, dict) else 0
    return h if type(h) is int and h > 0 else 0


PROBE_PRESET = frozen.PROBE_PRESET  # a different one would change every fingerprint
PROBE_PRESET_HIDDEN = frozen.PROBE_PRESET_HIDDEN  # the same, for hidden-state ensembles


def probe_spec(spec: dict, n_tokens: int) -> dict:
    """A small ensemble of the same kind as ``spec``, run over the fingerprint probe so that
    the fingerprint covers every kernel (and libm function) the real one uses."""
    kind = probe_kind(spec)
    if kind[0] == Ensemble.kind:
        if len(kind) > 3:
            return default_spec(n_tokens, uses_llm=kind[1], with_ssm=kind[2],
                                preset=PROBE_PRESET_HIDDEN, hidden=kind[3])
        return default_spec(n_tokens, uses_llm=kind[1], with_ssm=kind[2], preset=PROBE_PRESET)
    return {"kind": LLMOnly.kind}
