"""Online predictors combined with the LLM: the ensemble seam of the engine."""

from .ensemble import LLMOnly, make_ensemble

__all__ = ["LLMOnly", "make_ensemble"]
