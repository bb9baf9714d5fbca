"""What the file format freezes: values that files already written depend on.

Changing one of these makes existing files decode differently or be refused, so it is a
format version bump (with a note), never an edit. Each is pinned by a test:

- ``PROBE_TEXT``, ``PROBE_PRESET`` and ``PROBE_PRESET_HIDDEN``: the backend fingerprint in
  every header is a hash of the LLM's logits and of a small ensemble's probabilities over
  this probe, with this mixer preset (the hidden one for ensembles that read the LLM's
  hidden states, whose hidden states on the probe are hashed too; codec.py); pinned by
  tests/test_frozen.py.
- ``SSM_SEED`` and the rest of the SSM's default spec: the probe's ensemble of an SSM file
  uses the default spec, so it enters the fingerprint; pinned by tests/test_frozen.py.
- ``CODER_SPEC``: the range coder every file names in its header; tests/test_frozen.py.
- ``NEURAL_KEYS``: the keys of the header's neural parameter block (params.py);
  tests/test_frozen.py.
- The mixer presets 1-3 (nacz/models/mixed_spec.py ``PRESETS``): functions from
  (tokens, vocabulary, dense inputs) to a full spec; headers name them, so their
  expansions are pinned by digest in tests/test_models_mixed.py (test_preset_N_is_frozen).
- Every golden file in formats/golden/ decodes forever (tests/test_golden.py): the
  end-to-end pin of all of the above and of every kernel's arithmetic.

This module imports nothing, so any module can import it.
"""

PROBE_TEXT = (b"nacz backend fingerprint: The quick brown fox jumps over the lazy dog. "
              b"0123456789")

# The probe's mixer preset: a different probe would change the fingerprint of every file
# already written. It runs the same kernels as any later preset.
PROBE_PRESET = 2
# ... and that of ensembles that read the LLM's hidden states (their fingerprint hashes
# the probe's hidden states too)
PROBE_PRESET_HIDDEN = 5

SSM_SEED = 0x6E61637A  # "nacz"

CODER_SPEC = {"name": "constriction.range", "precision": 24, "perfect": False}

NEURAL_KEYS = frozenset({"model", "backend", "tokenizer", "streams", "context", "ensemble",
                         "coder", "level"})
