"""The mixed ensemble end to end: encoder/decoder symmetry, spec round trip and
validation, parts switched off, learning, LLM-free mode, the confidence skip, memory."""

import copy
import hashlib
import json
import math

import numpy as np
import pytest

from nacz.engine import active_counts, split_streams
from nacz.errors import FormatError
from nacz.models import mixed
from nacz.models.mixed import MixedEnsemble, default_spec, tables_bytes

SMALL_V = 600


def repetitive_tokens(n: int, vocab: int, seed: int = 0, phrase_len: int = 50) -> np.ndarray:
    """A random phrase repeated, with some noise: exercises n-grams and matches."""
    rng = np.random.default_rng(seed)
    phrase = rng.integers(0, vocab, phrase_len)
    seq = np.resize(phrase, n)
    noise = rng.random(n) < 0.05
    seq[noise] = rng.integers(0, vocab, int(noise.sum()))
    return seq.astype(np.int32)


def drive(ens, tokens: np.ndarray, n_streams: int, llm: str = "all", seed: int = 1,
          dense: int = 0):
    """Run the engine's call sequence (reset, then predict/update per step with the
    active prefix shrinking at the end); return every step's probabilities (copies).
    llm: "all" (logits every row), "none" (no LLM), "mask" (random has_llm rows),
    "skip" (has_llm = not confident()). An ensemble that reads hidden states gets them
    from a pool of their own (NaN on rows without the LLM: they must not be read)."""
    V = ens.vocab_size
    lengths = split_streams(len(tokens), n_streams)
    counts = active_counts(lengths)
    matrix = np.zeros((len(lengths), lengths[0]), dtype=np.int32)
    off = 0
    for s, n in enumerate(lengths):
        matrix[s, :n] = tokens[off:off + n]
        off += n
    rng = np.random.default_rng(seed)
    pool = (rng.standard_normal((32, V)) * 2.0).astype(np.float32)
    dpool = np.log(np.full((4, V), 1.0 / V, dtype=np.float32)) + \
        (rng.random((4, V)) * 0.1).astype(np.float32)
    H = ens.hidden_size
    hpool = np.random.default_rng(seed + 1000).standard_normal((32, max(H, 1))).astype(
        np.float32)
    ens.reset(len(lengths))
    out = []
    for t, A in enumerate(counts):
        A = int(A)
        logits = np.stack([pool[(t * 7 + s) % 32] for s in range(A)])
        has = None
        if llm == "none":
            logits, has = None, np.zeros(A, dtype=np.bool_)
        elif llm == "mask":
            has = rng.random(A) < 0.6
            logits[~has] = np.nan  # rows without the LLM must not be read
        elif llm == "skip":
            has = ~ens.confident(A)
            logits[~has] = np.nan
        d = None
        if dense:  # one input as a list of float64 arrays, several as a (D, A, V) array
            d = [np.stack([dpool[(t + s + k) % 4] for s in range(A)]).astype(np.float64)
                 for k in range(dense)]
            if dense > 1:
                d = np.stack(d).astype(np.float32)
        hidden = None
        if H and logits is not None:
            hidden = np.stack([hpool[(t * 7 + s) % 32] for s in range(A)])
            if has is not None:
                hidden[~has] = np.nan
        p = ens.predict(logits, has, dense=d, hidden=hidden)
        assert p.shape == (A, V) and p.dtype == np.float64
        out.append(p.copy())
        ens.update(matrix[:A, t])
    return out, matrix, counts


def small_spec(n_tokens=2000, vocab=SMALL_V, **kw):
    spec = default_spec(n_tokens, vocab, **kw)
    if spec["skip"] is not None:
        spec["skip"].update(min_len=8, min_tries=4, permille=900)
        if "det_permille" in spec["skip"]:
            spec["skip"].update(det_min_tries=4, det_permille=900)
    return spec


def probs_digest(probs) -> str:
    """SHA-256 of a run's probability rows as little-endian float64, step after step (the
    golden-probability tests pin a part's arithmetic with it)."""
    h = hashlib.sha256()
    for p in probs:
        h.update(np.ascontiguousarray(p, dtype="<f8").tobytes())
    return h.hexdigest()


def assert_symmetric(spec, vocab, tokens, n_streams, **kw):
    """Two ensembles built independently (one from the JSON text of the spec, as the
    decoder does) produce bit-identical probabilities at every step."""
    enc = MixedEnsemble(spec, vocab)
    dec = MixedEnsemble.from_spec(json.loads(json.dumps(enc.spec)), vocab)
    a, _, _ = drive(enc, tokens, n_streams, **kw)
    b, _, _ = drive(dec, tokens, n_streams, **kw)
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert np.array_equal(x, y)
        assert np.all(x > 0) and np.allclose(x.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    return a


@pytest.mark.parametrize("llm", ["all", "mask", "none", "skip"])
def test_encoder_decoder_symmetry(llm):
    tokens = repetitive_tokens(1203, SMALL_V)  # 4 streams of unequal length: A shrinks
    assert_symmetric(small_spec(), SMALL_V, tokens, 4, llm=llm)


@pytest.mark.parametrize("part", ["ngram", "match", "bias", "skip", "all"])
def test_parts_switched_off_stay_symmetric(part):
    spec = small_spec()
    if part == "all":
        spec.update(ngram=None, match=None, bias=None, skip=None)
    elif part == "match":
        spec.update(match=None, skip=None)
    elif part == "ngram":  # the deterministic-context skip rule reads the n-gram tables
        spec.update(ngram=None)
        for k in ("det_permille", "det_min_tries"):
            del spec["skip"][k]
    else:
        spec[part] = None
    tokens = repetitive_tokens(801, SMALL_V, seed=2)
    probs = assert_symmetric(spec, SMALL_V, tokens, 3, llm="mask")
    ens = MixedEnsemble(spec, SMALL_V)
    assert (ens.ngram is None) == (spec["ngram"] is None)
    assert (ens.match is None) == (spec["match"] is None)
    if part == "all":  # nothing learns but the mixer's LLM weight: close to the LLM alone
        assert probs[0].shape[0] == 3


@pytest.mark.parametrize("n_dense", [1, 2])
def test_dense_inputs_are_mixed_symmetrically(n_dense):
    spec = small_spec(n_dense=n_dense)
    tokens = repetitive_tokens(600, SMALL_V, seed=4)
    assert_symmetric(spec, SMALL_V, tokens, 2, llm="mask", dense=n_dense)
    ens = MixedEnsemble(spec, SMALL_V)
    ens.reset(1)
    with pytest.raises(ValueError):
        ens.predict(np.zeros((1, SMALL_V), np.float32))  # the dense inputs are missing


def test_reset_gives_a_fresh_ensemble():
    spec = small_spec()
    tokens = repetitive_tokens(500, SMALL_V, seed=5)
    ens = MixedEnsemble(spec, SMALL_V)
    first, _, _ = drive(ens, tokens, 2, llm="mask")
    again, _, _ = drive(ens, tokens, 2, llm="mask")  # drive() resets first
    assert all(np.array_equal(x, y) for x, y in zip(first, again))


def test_predict_changes_no_state():
    """predict twice before update: same answer, and the run continues as if once."""
    spec = small_spec()
    tokens = repetitive_tokens(300, SMALL_V, seed=8)
    ref, _, _ = drive(MixedEnsemble(spec, SMALL_V), tokens, 1)
    ens = MixedEnsemble(spec, SMALL_V)
    ens.reset(1)
    pool = (np.random.default_rng(1).standard_normal((32, SMALL_V)) * 2.0).astype(np.float32)
    for t, y in enumerate(tokens):
        logits = pool[(t * 7) % 32][None, :]
        first = ens.predict(logits).copy()
        assert np.array_equal(ens.predict(logits), first) and np.array_equal(first, ref[t])
        ens.update(np.array([y], np.int32))


def test_full_tables_stay_symmetric():
    """Tiny tables, many distinct contexts: replacement everywhere, still identical."""
    spec = small_spec()
    spec["ngram"]["bits"] = [4] * len(spec["ngram"]["orders"])
    spec["match"].update(capacity_bits=6, bits=5)
    rng = np.random.default_rng(6)
    tokens = rng.integers(0, SMALL_V, 900).astype(np.int32)
    tokens[450:] = tokens[:450]
    assert_symmetric(spec, SMALL_V, tokens, 3)
    ens = MixedEnsemble(spec, SMALL_V)
    drive(ens, tokens, 3)
    assert ens.ngram.tab.nbytes == mixed.ngram_mod.table_bytes(ens.spec["ngram"])
    assert ens.match.hist_tok.size == 64 and int(ens.match.n_hist[0]) == 900


def test_spec_round_trip_and_normalisation():
    spec = default_spec(50_000)
    text = json.dumps(spec)
    ens = MixedEnsemble.from_spec(json.loads(text), 49152)
    assert ens.spec == spec and json.dumps(ens.spec) == text
    s2 = ens.spec
    s2["mixer"]["lr"] = 0.5  # the property is a copy: the ensemble is not changed
    assert ens.spec["mixer"]["lr"] == spec["mixer"]["lr"]


def _bad_specs():
    base = default_spec(10_000)
    muts = [
        lambda s: s.update(kind="llm"),
        lambda s: s.update(version=2),
        lambda s: s.update(version=True),
        lambda s: s.update(extra=None),
        lambda s: s.pop("bias"),
        lambda s: s.update(match=None),  # skip without the match model
        lambda s: s["mixer"].update(lr="fast"),
        lambda s: s["mixer"].update(unknown=1),
        lambda s: s["ngram"].update(bits=[26] * 10),  # 10 x 2 GiB: refused, not allocated
        lambda s: s["match"].update(capacity_bits=-5),
        lambda s: s["skip"].update(permille=1001),
        lambda s: s["bias"].update(lr=None),
        lambda s: s.update(ngram=[]),
    ]
    for m in muts:
        s = copy.deepcopy(base)
        m(s)
        yield s
    yield None
    yield "mixed"


@pytest.mark.parametrize("spec", list(_bad_specs()))
def test_bad_specs_are_format_errors(spec):
    with pytest.raises(FormatError):
        MixedEnsemble.from_spec(spec, 49152)


def test_bad_vocab_and_calls():
    with pytest.raises(FormatError):
        MixedEnsemble(default_spec(100), 1 << 25)
    ens = MixedEnsemble(small_spec(100), SMALL_V)
    ens.reset(2)
    with pytest.raises(RuntimeError):
        ens.update(np.zeros(2, np.int32))  # no prediction yet
    with pytest.raises(ValueError):
        ens.predict(np.zeros((3, SMALL_V), np.float32))  # more rows than streams
    ens.predict(np.zeros((2, SMALL_V), np.float32))
    with pytest.raises(ValueError):
        ens.update(np.array([0, SMALL_V], np.int32))  # outside the vocabulary


def code_length(probs, matrix, counts):
    bits = 0.0
    for t, (p, A) in enumerate(zip(probs, counts)):
        bits -= np.log2(p[np.arange(int(A)), matrix[:int(A), t]]).sum()
    return bits


def test_learning_beats_an_ignorant_llm():
    """A random 200-token phrase repeated 20 times, 'LLM' logits that know nothing: the
    mixture must code it in far fewer bits than the LLM alone."""
    V = 49152
    rng = np.random.default_rng(7)
    tokens = np.tile(rng.integers(0, V, 200), 20).astype(np.int32)
    ens = MixedEnsemble(default_spec(len(tokens)), V)
    probs, matrix, counts = drive(ens, tokens, 2, llm="all", seed=8)
    mixed_bits = code_length(probs, matrix, counts)
    # the same logits through a plain softmax
    pool = (np.random.default_rng(8).standard_normal((32, V)) * 2.0).astype(np.float64)
    llm_bits = 0.0
    for t, A in enumerate(counts):
        for s in range(int(A)):
            z = pool[(t * 7 + s) % 32]
            llm_bits -= (z[matrix[s, t]] - z.max() - math.log(np.exp(z - z.max()).sum())) \
                / math.log(2)
    assert mixed_bits < 0.3 * llm_bits, (mixed_bits, llm_bits)


def test_llm_free_mode_learns_and_skip_engages():
    V = 49152
    rng = np.random.default_rng(9)
    tokens = np.tile(rng.integers(0, V, 150), 12).astype(np.int32)
    ens = MixedEnsemble(default_spec(len(tokens)), V)
    probs, matrix, counts = drive(ens, tokens, 1, llm="none")
    bits = code_length(probs, matrix, counts)
    first = 150 * math.log2(V)  # the first pass cannot be predicted: uniform
    assert bits < first + 0.2 * (len(tokens) - 150) * math.log2(V)
    # the confidence skip: long exact repeats become confident (state before predict)
    spec = default_spec(len(tokens))
    spec["skip"].update(min_len=16, min_tries=32, permille=950)
    ens = MixedEnsemble(spec, V)
    ens.reset(1)
    skipped = 0
    pool = np.random.default_rng(3).standard_normal((8, V)).astype(np.float32)
    for i, y in enumerate(tokens):
        conf = ens.confident(1)
        skipped += int(conf[0])
        if i < 150 + 16:
            assert not conf[0]  # no match of 16 tokens can exist yet
        ens.predict(pool[i % 8][None, :], ~conf)
        ens.update(np.array([y], np.int32))
    assert skipped > len(tokens) // 2


def templated_tokens(n_records: int, seed: int = 4) -> np.ndarray:
    """Log-like records: fixed template tokens around random field values, so every
    exact match is short but the template's contexts are deterministic."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_records):
        for field in range(5):
            out += [100 + field, 200 + field, 300 + field]  # the template
            out += list(rng.integers(1000, 1400, 2))  # the values
    return np.array(out, dtype=np.int32)


def test_deterministic_skip_fires_on_templates_and_is_calibrated():
    V = 2048
    tokens = templated_tokens(400)
    pool = np.random.default_rng(3).standard_normal((8, V)).astype(np.float32)

    def run(preset):
        ens = MixedEnsemble(mixed.preset_spec(len(tokens), preset=preset), V)
        ens.reset(1)
        skipped = right = 0
        for i, y in enumerate(tokens):
            conf = ens.confident(1)
            if conf[0]:
                skipped += 1
                right += int(ens._guess_tok[0] == y)
            ens.predict(pool[i % 8][None, :], ~conf)
            ens.update(np.array([y], np.int32))
        return skipped, right

    assert run(1) == (0, 0)  # preset 1: matches of 32 tokens never happen here
    skipped, right = run(2)
    # template tokens follow deterministically (after calibration: 19% of all here)
    assert skipped > 0.15 * len(tokens) and right >= 0.99 * skipped


def test_deterministic_guess_reads_the_highest_order_context():
    spec = small_spec(500)
    ens = MixedEnsemble(spec, SMALL_V)
    ens.reset(2)
    seq = [5, 6, 7, 5, 6, 7, 5, 6]
    pool = np.zeros((2, SMALL_V), np.float32)
    for y in seq:
        ens.confident(2)
        ens.predict(pool, np.ones(2, bool))
        ens.update(np.array([y, y], np.int32))
    ens.confident(2)
    assert list(ens._guess_tok[:2]) == [7, 7]  # "... 5 6" has only ever been followed by 7
    assert all(k >= 0 for k in ens._guess_key[:2])


def test_memory_for_a_10mb_input_stays_under_the_cap():
    cap = mixed.DEFAULT_MAX_BYTES
    for n_tokens in (3_000_000, 10_000_000):  # ~3.4 bytes/token; worst case 1 byte/token
        spec = default_spec(n_tokens)
        assert tables_bytes(spec) <= cap
    ens = MixedEnsemble(spec, 49152)
    ens.reset(16)
    tables = ens.ngram.tab.nbytes + ens.match.nbytes
    assert tables == tables_bytes(spec) <= cap
    # everything else: bias, weights, 16 rows of probabilities and scratch
    assert ens.nbytes - tables < 16 * 49152 * 8 + (8 << 20)
    small = default_spec(2_000)
    assert tables_bytes(small) < (4 << 20)


GOLDEN_SPEC = {  # explicit, so that changing the defaults never changes this test
    "kind": "mixed", "version": 1,
    "ngram": {"orders": [1, 2, 3, 4, 6, 8, 12, 16, 24, 32],
              "bits": [11, 13, 13, 13, 13, 13, 13, 13, 13, 13], "entries": 7,
              "alpha": [0.5] * 10},
    "match": {"min_len": 5, "verify": 64, "capacity_bits": 12, "bits": 12,
              "edges": [1, 8, 12, 16, 24, 32, 48, 64, 128], "apm_points": 24,
              "apm_range": 12.0, "limit": 1023},
    "bias": {"lr": 0.002, "lr_free": 0.02, "alpha0": 0.02},
    "mixer": {"ent_edges": [0.25, 0.75, 1.5, 2.5, 4.0], "lr": 0.01, "lr_llm": 0.001,
              "init_llm": 1.0, "init_ngram": 0.05, "init_ngram_free": 0.5,
              "init_dense": 0.5, "w_min": -2.0, "w_max": 8.0, "dense": 0},
    "skip": {"min_len": 8, "permille": 900, "min_tries": 4},
}
GOLDEN_DIGEST = "4c9a7cf167af430ed4c50bbddfa94f0b20b3e44d7e396545924b6e29338d0092"


def _lcg(n: int, seed: int) -> np.ndarray:
    """A fixed integer generator: numpy's Generator streams may change between versions."""
    out = np.empty(n, dtype=np.uint64)
    x = seed
    for i in range(n):
        x = (x * 6364136223846793005 + 1442695040888963407) % (1 << 64)
        out[i] = x >> 11
    return out


def test_golden_probabilities():
    """The exact probabilities of a fixed run, pinned: the container stores only the
    spec, so any change in what the kernels compute makes old files undecodable and must
    come with a new ensemble version. (They depend on libm's exp/log, as the LLM's
    softmax does: the backend fingerprint covers the machine side.)"""
    V, S, n = SMALL_V, 3, 700
    phrase = (_lcg(40, 1) % V).astype(np.int32)
    tokens = np.resize(phrase, n)
    noise = _lcg(n, 2)
    tokens = np.where(noise % 20 == 0, (noise >> 8) % V, tokens).astype(np.int32)
    pool = ((_lcg(8 * V, 3) >> 20).astype(np.float64) / float(1 << 33) * 6.0 - 3.0)
    pool = pool.astype(np.float32).reshape(8, V)
    lengths = split_streams(n, S)
    counts = active_counts(lengths)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    ens = MixedEnsemble(GOLDEN_SPEC, V)
    ens.reset(S)
    h = hashlib.sha256()
    for t, A in enumerate(counts):
        A = int(A)
        has = ~ens.confident(A)
        if t % 7 == 3:
            has[:] = False  # and some steps without the LLM anyway
        logits = np.stack([pool[(t + s) % 8] for s in range(A)])
        p = ens.predict(logits, has)
        h.update(np.ascontiguousarray(p, dtype="<f8").tobytes())
        ens.update(tokens[starts[:A] + t])
    assert h.hexdigest() == GOLDEN_DIGEST


def test_an_informative_dense_input_is_used_and_trusted():
    """A dense input that knows the next token (an oracle 'SSM') must be used, and its
    weight must grow; an uninformative one must not help."""
    V = SMALL_V
    rng = np.random.default_rng(12)
    tokens = rng.integers(0, V, 400).astype(np.int32)  # no repeats to learn from
    pool = (rng.standard_normal((16, V)) * 2.0).astype(np.float32)

    def run(oracle: bool):
        ens = MixedEnsemble(small_spec(n_dense=1), V)
        ens.reset(1)
        bits = 0.0
        for t, y in enumerate(tokens):
            lp = np.full((1, V), -math.log(V))
            if oracle:
                lp[:] = math.log(0.5 / (V - 1))
                lp[0, y] = math.log(0.5)
            p = ens.predict(pool[t % 16][None, :], dense=[lp])
            bits -= math.log2(p[0, y])
            ens.update(np.array([y], np.int32))
        return bits, ens.mixer.w_dense[ens._wctx[0], 0]

    with_oracle, w = run(True)
    without, _ = run(False)
    assert with_oracle < 0.5 * without
    assert w > small_spec(n_dense=1)["mixer"]["init_dense"]


PRESET_1_DIGEST = "0a72072b7586dbbf8972c0d9203b93d53b3ce3b5a639f65d38aaf4bf5f4afc62"
PRESET_2_DIGEST = "f472b77f2c28debd2d4ef1c703666b83147c17d236905a9e93f16e82afb0629e"
PRESET_3_DIGEST = "757892c8c32761fd98caf092f10e5b3e21f23efd06b405d2e21d3e9b0951a545"


def _preset_expansions(preset):
    h = hashlib.sha256()
    for vocab in (600, 49152):
        for n in (1, 993, 4096, 123_457, 3_000_000, 10_000_000, 1 << 40):
            for dense in (0, 1):
                full = mixed.expand(mixed.preset_spec(n, dense, preset=preset), vocab)
                h.update(json.dumps(full, sort_keys=True).encode())
    return h.hexdigest()


def test_preset_1_is_frozen():
    """Old files name preset 1 and rely on its expansion: it may never change."""
    assert _preset_expansions(1) == PRESET_1_DIGEST


def test_preset_2_is_frozen():
    assert _preset_expansions(2) == PRESET_2_DIGEST


def test_preset_3_is_frozen():
    assert _preset_expansions(3) == PRESET_3_DIGEST
    small = mixed.expand(mixed.preset_spec(1000, 1, preset=3), 600)
    assert small["bias"]["alpha0"] == 10000.0  # preset 2 but a flat unigram
    assert dict(small, bias=None) == dict(mixed.expand(mixed.preset_spec(1000, 1, preset=2),
                                                       600), bias=None)


def test_compact_spec_round_trip():
    compact = mixed.preset_spec(5000)
    ens = MixedEnsemble.from_spec(compact, SMALL_V)
    assert ens.header_spec == compact and len(json.dumps(compact)) < 100
    # full form, all parameters: the latest preset (4) is the default spec plus SSE
    assert ens.spec == default_spec(5000, SMALL_V, sse=True)
    again = MixedEnsemble.from_spec(json.loads(json.dumps(ens.header_spec)), SMALL_V)
    assert again.spec == ens.spec
    full = MixedEnsemble.from_spec(ens.spec, SMALL_V)
    assert full.header_spec == ens.spec  # built from a full spec: stores the full spec
    tokens = repetitive_tokens(300, SMALL_V, seed=13)
    a, _, _ = drive(ens, tokens, 2, llm="mask")
    b, _, _ = drive(full, tokens, 2, llm="mask")
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("mutate", [
    lambda s: s.update(preset=99),
    lambda s: s.update(preset=True),
    lambda s: s.update(n_tokens=0),
    lambda s: s.update(n_tokens=1 << 49),
    lambda s: s.update(n_tokens=5.0),
    lambda s: s.update(dense=9),
    lambda s: s.update(version=2),
    lambda s: s.update(mixer={}),
    lambda s: s.pop("dense"),
])
def test_bad_compact_specs_are_format_errors(mutate):
    spec = mixed.preset_spec(1000)
    mutate(spec)
    with pytest.raises(FormatError):
        MixedEnsemble.from_spec(spec, 49152)
