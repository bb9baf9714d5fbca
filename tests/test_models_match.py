"""Match model: finding, verifying, extending and ending matches over the shared history."""

import numpy as np
import pytest

from nacz.errors import FormatError
from nacz.models import match
from nacz.models.match import MatchModel, default_spec, match_update, predicted, validate
from nacz.models.ngram import MAX_ORDER


class Driver:
    """Feeds tokens to a MatchModel exactly as the ensemble does (ring, then update)."""

    def __init__(self, spec: dict, n_streams: int):
        self.m = MatchModel(spec)
        self.m.reset(n_streams)
        self.ring = np.zeros((n_streams, MAX_ORDER), dtype=np.int32)
        self.count = np.zeros(n_streams, dtype=np.int64)

    def prediction(self, s: int) -> int:
        return int(predicted(self.m.hist_tok, self.m.n_hist, self.m.ptr, self.m.mlen, s))

    def feed(self, s: int, y: int) -> None:
        m = self.m
        pred = self.prediction(s)  # made before the token is known, as the ensemble does
        self.ring[s, self.count[s] % MAX_ORDER] = y
        self.count[s] += 1
        match_update(s, y, pred, self.ring, self.count, m.hist_tok, m.hist_prv, m.hist_nxt,
                     m.n_hist, m.table, m.last_pos, m.ptr, m.mlen, m.hits, m.tries,
                     m.edges, m.min_len, m.verify)

    def state(self):
        m = self.m
        return [a.copy() for a in (m.hist_tok, m.hist_prv, m.hist_nxt, m.n_hist, m.table,
                                   m.last_pos, m.ptr, m.mlen, m.hits, m.tries)]


# 2^16 slots: a collision between the few contexts of a test is improbable (none here)
SPEC = {"min_len": 4, "verify": 32, "capacity_bits": 12, "bits": 16, "edges": [1, 8, 16, 32],
        "apm_points": 8, "apm_range": 8.0, "limit": 64}


def test_repeat_is_found_predicted_and_extended():
    rng = np.random.default_rng(1)
    phrase = rng.integers(0, 50_000, 100).tolist()
    d = Driver(SPEC, 1)
    for y in phrase:
        d.feed(0, y)
    assert d.prediction(0) == -1
    hits = 0
    for i, y in enumerate(phrase):
        if i >= 4:  # a context of min_len tokens of the repeat has been seen
            assert d.prediction(0) == y
            hits += 1
        d.feed(0, y)
    assert hits == 96
    assert int(d.m.mlen[0]) >= 96  # the verified length grew with each hit
    assert d.m.hits.sum() == d.m.tries.sum() == 96


def test_mismatch_ends_the_match_and_a_new_one_is_found():
    d = Driver(SPEC, 1)
    base = list(range(1000, 1040))
    for y in base + base[:20]:
        d.feed(0, y)
    assert d.prediction(0) == base[20]
    d.feed(0, 7)  # a surprise
    assert int(d.m.mlen[0]) == 0 and d.prediction(0) == -1
    assert d.m.tries.sum() == d.m.hits.sum() + 1
    for y in base[:6]:  # the text comes back: found again after min_len tokens
        d.feed(0, y)
    assert d.prediction(0) == base[6]


def test_streams_match_each_others_text():
    """The history is shared: stream 1 predicts from what stream 0 saw."""
    rng = np.random.default_rng(2)
    phrase = rng.integers(0, 50_000, 60).tolist()
    noise = rng.integers(0, 50_000, 60).tolist()
    d = Driver(SPEC, 2)
    for a, b in zip(phrase, noise):  # lockstep: stream 0 then stream 1 each step
        d.feed(0, a)
        d.feed(1, b)
    for i, y in enumerate(phrase[:30]):
        if i >= 4:
            assert d.prediction(1) == y
        d.feed(1, y)


def test_full_ring_wraps_deterministically_and_forgets_old_text():
    # 64 tokens of history; a big table still points at positions the ring overwrote
    spec = dict(SPEC, capacity_bits=6, bits=16)
    rng = np.random.default_rng(3)
    old = rng.integers(0, 300, 40).tolist()
    recent = rng.integers(300, 600, 30).tolist()
    filler = rng.integers(600, 900, 200).tolist()
    a, b = Driver(spec, 2), Driver(spec, 2)
    for d in (a, b):
        for y in old + filler + recent:
            d.feed(0, y)
            d.feed(1, y + 1000)  # another stream fills the ring as well
    for x, y in zip(a.state(), b.state()):
        assert np.array_equal(x, y)
    assert a.m.hist_tok.size == 64 and int(a.m.n_hist[0]) == 2 * 270
    assert a.m.nbytes == match.table_bytes(validate(spec))
    for y in recent[:6]:  # recent text is still in the ring: found again
        a.feed(0, y)
    assert a.prediction(0) == recent[6]
    for y in old[:8]:  # old text was overwritten: no (stale) match
        b.feed(0, y)
    assert b.prediction(0) == -1


def test_confident_needs_length_and_a_good_record():
    d = Driver(SPEC, 2)
    d.m.mlen[:] = [40, 40]
    out = np.zeros(2, dtype=np.bool_)
    b = match.length_bucket(40, d.m.edges)
    d.m.tries[b], d.m.hits[b] = 100, 99
    match.confident(2, d.m.mlen, d.m.hits, d.m.tries, d.m.edges, 32, 990, 50, out)
    assert out.tolist() == [True, True]
    d.m.mlen[1] = 31  # too short
    d.m.hits[b] = 98  # and now below 990 permille
    match.confident(2, d.m.mlen, d.m.hits, d.m.tries, d.m.edges, 32, 980, 50, out)
    assert out.tolist() == [True, False]
    match.confident(2, d.m.mlen, d.m.hits, d.m.tries, d.m.edges, 32, 990, 50, out)
    assert out.tolist() == [False, False]
    match.confident(2, d.m.mlen, d.m.hits, d.m.tries, d.m.edges, 32, 980, 101, out)
    assert out.tolist() == [False, False]  # not enough evidence yet


def split(m, g, lb, q):
    cells = np.zeros(2, np.int64)
    w = np.zeros(2)
    ph = match.split_prob(m.apm_t, g, lb, m.n_buckets, m.apm_points, m.apm_range, q, 1 - q,
                          cells, w)
    return ph, cells, w


def test_split_starts_as_the_identity_and_learns_the_hit_rate():
    m = MatchModel(SPEC)
    for q in (0.001, 0.3, 0.5, 0.97):
        assert split(m, 0, 2, q)[0] == pytest.approx(q, rel=0.02)  # maps change nothing yet
    # long matches of the LLM-free group hit although the model gave them little
    for _ in range(300):
        ph, cells, w = split(m, 1, 4, 0.01)
        for st in range(2):
            match.apm_update(m.apm_t, m.apm_n, cells[st], w[st], True, m.limit)
    assert split(m, 1, 4, 0.01)[0] > 0.99
    assert split(m, 0, 4, 0.01)[0] == pytest.approx(0.01, rel=0.02)  # other group untouched
    # another length bucket of the same group starts from the shared first stage
    assert split(m, 1, 2, 0.01)[0] > 0.9
    assert m.apm_n.max() == m.limit  # counts capped: the maps keep adapting
    for _ in range(300):  # and then they miss: the map follows
        ph, cells, w = split(m, 1, 4, 0.01)
        for st in range(2):
            match.apm_update(m.apm_t, m.apm_n, cells[st], w[st], False, m.limit)
    assert split(m, 1, 4, 0.01)[0] < 0.5


def test_default_spec_is_bounded():
    small = default_spec(1000)
    assert small["capacity_bits"] == 10 and validate(small) == small
    big = default_spec(10_000_000, max_bytes=96 << 20)
    assert match.table_bytes(big) <= 96 << 20
    assert 1 << big["capacity_bits"] >= 4_000_000


@pytest.mark.parametrize("mutate", [
    lambda s: s.pop("edges"),
    lambda s: s.update(min_len=0),
    lambda s: s.update(verify=3),  # shorter than min_len
    lambda s: s.update(capacity_bits=40),
    lambda s: s.update(capacity=4096),
    lambda s: s.update(bits=30),
    lambda s: s.update(edges=[8, 1]),
    lambda s: s.update(edges=[]),
    lambda s: s.update(min_len="4"),
    lambda s: s.update(apm_points=0),
    lambda s: s.update(apm_range=100.0),
    lambda s: s.update(apm_range="8"),
    lambda s: s.update(limit=0),
])
def test_bad_specs_are_format_errors(mutate):
    spec = dict(SPEC)
    validate(spec)
    mutate(spec)
    with pytest.raises(FormatError):
        validate(spec)
