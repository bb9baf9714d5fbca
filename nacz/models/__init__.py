"""Online predictors combined with the LLM: the ensemble seam of the engine.

ensemble.py builds what the header describes (``make_ensemble``); the parts: ngram.py,
match.py, bias.py, mixer.py, mixed*.py (the fused mixed ensemble), ssm/ (the online SSM).
This file imports nothing, so that nacz/native.py can import ssm_layout.py alone.
"""
