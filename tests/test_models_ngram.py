"""Sparse n-gram hash tables: hashing, counting, replacement, sizing, spec validation."""

import math

import numpy as np
import pytest

from nacz.errors import FormatError
from nacz.models import ngram
from nacz.models.ngram import (MAX_COUNT, NGramTables, context_hashes, default_spec, gather,
                               table_bytes, table_insert, validate)


def small_tables(orders=(1, 2, 3), bits=4, entries=3, alpha=0.5) -> NGramTables:
    t = NGramTables({"orders": list(orders), "bits": [bits] * len(orders),
                     "entries": entries, "alpha": [alpha] * len(orders)})
    t.reset()
    return t


def ring_of(tokens, n_streams=1):
    ring = np.zeros((n_streams, ngram.MAX_ORDER), dtype=np.int32)
    count = np.zeros(n_streams, dtype=np.int64)
    for tok in tokens:
        ring[0, count[0] % ngram.MAX_ORDER] = tok
        count[0] += 1
    return ring, count


def hashes_of(tokens, orders):
    ring, count = ring_of(tokens)
    out = np.zeros(len(orders), dtype=np.uint64)
    context_hashes(ring, count, 0, np.array(orders, dtype=np.int64), out)
    return out


def insert(t: NGramTables, j: int, h, token: int) -> None:
    table_insert(t.tab, t.bases[j], t.masks[j], t.width, np.uint64(h), token)


def features(t: NGramTables, hashes):
    n_max = t.max_features
    tok = np.zeros(n_max, dtype=np.int32)
    order = np.zeros(n_max, dtype=np.int64)
    val = np.zeros(n_max, dtype=np.float64)
    conf = np.zeros(t.n_orders, dtype=np.int64)
    n, top = gather(t.tab, t.bases, t.masks, t.width, np.asarray(hashes, dtype=np.uint64),
                    t.logtab, tok, order, val, conf, 0)
    return [(int(tok[i]), int(order[i]), float(val[i])) for i in range(n)], conf, top


def test_context_hashes_are_pinned_and_need_enough_history():
    # The hash defines the compressed format: these values may never change.
    h = hashes_of([5, 17, 123, 49151], [1, 2, 4, 8])
    assert h[3] == 0  # only 4 tokens seen: no order-8 context yet
    assert len(set(h[:3].tolist())) == 3 and all(x & 1 for x in h[:3].tolist())
    assert h[:3].tolist() == [PINNED[0], PINNED[1], PINNED[2]]
    # the order-k hash depends on the last k tokens only
    h2 = hashes_of([99, 98, 5, 17, 123, 49151], [1, 2, 4, 8])
    assert h2[:3].tolist() == h[:3].tolist()
    h3 = hashes_of([5, 17, 124, 49151], [1, 2, 4, 8])
    assert h3[0] == h[0] and h3[1] != h[1] and h3[2] != h[2]


# golden values: a changed hash would make old files undecodable
PINNED = (0xA41A7B8E86EFDD27, 0x849A966DA5133589, 0x0D4F586402E22C81)


def _reference_hash(tokens, order):
    """Pure-Python twin of context_hashes (uint64 arithmetic spelled out)."""
    m64 = (1 << 64) - 1
    h = 0
    for back in range(1, order + 1):
        h = ((h + tokens[-back] + 1) * 0x9E3779B97F4A7C15) & m64
        h ^= h >> 29
    h ^= (order << 56)
    h ^= h >> 30
    h = (h * 0xBF58476D1CE4E5B9) & m64
    h ^= h >> 27
    h = (h * 0x94D049BB133111EB) & m64
    h ^= h >> 31
    return h | 1


def test_hash_matches_its_reference_twin():
    rng = np.random.default_rng(3)
    for _ in range(20):
        toks = rng.integers(0, 1 << 24, 40).tolist()
        orders = [1, 2, 3, 5, 8, 13, 21, 34]
        assert hashes_of(toks, orders).tolist() == [_reference_hash(toks, k) for k in orders]
    assert tuple(_reference_hash([5, 17, 123, 49151], k) for k in (1, 2, 4)) == PINNED


def test_counts_accumulate_and_features_follow_alpha():
    t = small_tables()
    h = hashes_of([1, 2, 3], [1, 2, 3])
    for tok in (7, 7, 7, 9):
        insert(t, 2, h[2], tok)
    feats, conf, top = features(t, [0, 0, h[2]])
    assert sorted((tok, j) for tok, j, _ in feats) == [(7, 2), (9, 2)]
    val = {tok: v for tok, _, v in feats}
    assert val[7] == math.log(1 + 3 / 0.5) and val[9] == math.log(1 + 1 / 0.5)
    assert top == 3 and conf[0] == -1 and conf[1] == -1
    assert conf[2] == ngram.conf_bucket(4, 2) == 2 * 2  # total 4, two tokens
    assert ngram.conf_bucket(1, 1) == 1 and ngram.conf_bucket(300, 1) == 9


def test_saturated_count_halves_the_slot():
    t = small_tables()
    h = hashes_of([4], [1])[0]
    insert(t, 0, h, 3)
    for _ in range(MAX_COUNT + 5):
        insert(t, 0, h, 8)
    feats, _, _ = features(t, [h, 0, 0])
    counts = {tok: round(0.5 * (math.exp(v) - 1)) for tok, _, v in feats}
    assert counts[8] <= MAX_COUNT and counts[8] > MAX_COUNT // 2
    assert counts[3] == 1  # (1 + 1) >> 1: a seen token is never dropped by halving


def test_full_slot_replaces_the_weakest_entry():
    t = small_tables(entries=2)
    h = hashes_of([4], [1])[0]
    for tok in (10, 10, 11, 12):  # 12 replaces 11 (count 1 < 2)
        insert(t, 0, h, tok)
    feats, _, _ = features(t, [h, 0, 0])
    assert sorted(tok for tok, _, _ in feats) == [10, 12]


def test_full_tables_stay_deterministic_and_bounded():
    """Far more contexts than slots: two tables fed alike stay identical, never grow,
    and still answer for the contexts inserted last."""
    rng = np.random.default_rng(5)
    seq = rng.integers(0, 1000, 6000)
    a, b = small_tables(bits=4), small_tables(bits=4)
    size = a.tab.nbytes
    orders = list(a.spec["orders"])
    for t in (a, b):
        for i in range(3, len(seq)):
            h = hashes_of(seq[i - 3:i].tolist(), orders)
            for j in range(len(orders)):
                insert(t, j, h[j], int(seq[i]))
    assert np.array_equal(a.tab, b.tab)
    assert a.tab.nbytes == size == table_bytes(a.spec)
    last = hashes_of(seq[-4:-1].tolist(), orders)
    feats, _, _ = features(a, last)
    assert int(seq[-1]) in [tok for tok, j, _ in feats if j == 2]


def test_default_spec_sizes_from_input_within_cap():
    small = default_spec(1000)
    assert table_bytes(small) < 2 << 20
    assert small["bits"][0] <= small["bits"][-1]
    big = default_spec(10_000_000, max_bytes=160 << 20)
    assert table_bytes(big) <= 160 << 20
    # order 1 never needs more slots than twice the vocabulary
    assert (1 << big["bits"][0]) <= 2 * 49152 * 2
    assert validate(big) == big


@pytest.mark.parametrize("mutate", [
    lambda s: s.pop("alpha"),
    lambda s: s.update(extra=1),
    lambda s: s.update(orders=[2, 1, 3]),
    lambda s: s.update(orders=[1, 2, 65]),
    lambda s: s.update(bits=[4, 4]),
    lambda s: s.update(bits=[4, 4, 40]),
    lambda s: s.update(bits=[4, 4, 4.0]),
    lambda s: s.update(entries=True),
    lambda s: s.update(entries=0),
    lambda s: s.update(alpha=[0.5, 0.5]),
    lambda s: s.update(alpha=[0.5, 0.5, float("nan")]),
    lambda s: s.update(alpha=[0.5, 0.5, "1"]),
])
def test_bad_specs_are_format_errors(mutate):
    spec = {"orders": [1, 2, 3], "bits": [4, 4, 4], "entries": 3, "alpha": [0.5] * 3}
    validate(spec)
    mutate(spec)
    with pytest.raises(FormatError):
        validate(spec)
