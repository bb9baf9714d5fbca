"""Online Mamba-style selective state-space model (SSM) predictor.

A small Mamba network (embedding, ``n_layers`` blocks of RMSNorm -> in-projection to
(x, z) -> causal depthwise conv -> SiLU -> selective scan with input-dependent softplus Δ,
B, C and A = -exp(A_log), D skip -> gating by SiLU(z) -> out-projection + residual; final
RMSNorm; output head) trained online with Adam on the tokens already coded. Encoder and
decoder run the same calls in the same order and get bit-identical probabilities.

Output head. Only token types that occurred so far have a head column ("slot"), in order of
first appearance (slot 1, 2, ...); slot 0 is the *escape* class "a type not seen yet",
whose probability mass is spread uniformly over the unseen types of the vocabulary (once
every type has been seen there is no escape class). The input embedding is indexed by the
same slots (slot 0 = the start-of-stream input). So no weight matrix is ever
vocabulary-wide; only the dense (A, V) log-probability output is. With ``count_prior`` the
logit of a class also gets a fixed offset log(count) (escape: log(#types + 1)), so the
untrained head starts as an adaptive unigram (PPM method C) and the network learns the
context-dependent correction; the counts are a snapshot taken at chunk boundaries (a type
first seen inside the chunk counts as 1), so predictions and training agree exactly.

Streams. S streams run in lockstep and share all weights, the head and the counts; each has
its own recurrent state (conv window + scan state per layer). Everything that changes
shared state runs in stream order 0..A-1.

Training. Every ``chunk`` steps each active stream has a complete chunk of ``chunk``
(input, target) pairs. For each stream in order 0..A-1 (and ``early_passes`` times while
fewer than ``early_steps`` chunk updates have been made) the chunk is re-run from the
recurrent state saved at its start with the current weights, back-propagated through the
whole chunk (truncated BPTT: the gradient does NOT flow into the state from before the
chunk) and one Adam step is taken; so the weights move once per stream-chunk and the
number of Adam steps does not depend on the stream count. The learning rate starts at
``boost`` x ``lr`` and decays linearly to ``lr`` over ``boost_steps`` Adam steps. The chunk
loss is the mean cross entropy of the head's classes at the time of each prediction
(a type that was new at its position is an escape target).

Numerics (docs/design.md). float32 everywhere (the dense output is float64, cast from
float32). No libm: exp and log are the polynomials ``fexp``/``flog`` of fmath.py, written
with IEEE basic operations only (+ - * /, sqrt, bit casts), identically there and in
csrc/ssm.c.
glibc's expf/logf are ifunc-dispatched by CPU features, so they may differ between
machines; ours cannot, and they vectorise. Every reduction has a fixed order: matrix
products accumulate each output in input order (vectorised across outputs), the long
softmax sums and dot products use explicit lanes combined in a fixed tree. Nothing is
threaded. The C twin (csrc/ssm.c via nacz/native.py) gives the same bits.

The package, in reading order: spec.py (parameters and their validation),
../ssm_layout.py (the state layout shared with C), seeding.py (the seeded initial weights),
fmath.py / forward.py / backward.py (the numba kernels, in the order of csrc/ssm.c, so each
twin pair reads side by side), kernels.py (the kernel protocol and the numba/C selector),
model.py (``OnlineSSM``: buffers, head growth, the chunked training schedule).
"""

from __future__ import annotations

from ..ssm_layout import DIM_NAMES, HEAD_TILE, N_DIMS, Layout
from .fmath import fexp, flog
from .kernels import Buffers, NumbaKernels, SSMKernels, select
from .model import OnlineSSM
from .seeding import uniform
from .spec import KIND, VERSION, default_spec, validate_spec

__all__ = ["DIM_NAMES", "HEAD_TILE", "KIND", "N_DIMS", "VERSION", "Buffers", "Layout",
           "NumbaKernels", "OnlineSSM", "SSMKernels", "default_spec", "fexp", "flog",
           "select", "uniform", "validate_spec"]
