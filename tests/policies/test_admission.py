from __future__ import annotations

from ucm.policies import ADMISSION_POLICIES, make_admission
from ucm.policies.tinylfu import TinyLFUAdmission


def test_registry():
    assert {"always", "reuse", "tinylfu"} <= set(ADMISSION_POLICIES)


def test_reuse_admits_on_nth_sighting_with_bounded_tracker():
    a = make_admission("reuse", threshold=3, max_tracked=2)
    for _ in range(2):
        a.record("x")
    assert not a.admit("x")
    a.record("x")
    assert a.admit("x")
    a.record("y")
    a.record("z")                        # tracker holds 2 keys: x (least recent) is forgotten
    assert len(a.seen) == 2 and not a.admit("x")


def test_tinylfu_doorkeeper_sketch_and_victim():
    a = TinyLFUAdmission(width=1024, min_count=2)
    a.record("new")
    assert a.estimate("new") == 1        # first sighting: doorkeeper only
    assert not a.admit("new")            # no victim: needs min_count sightings
    a.record("new")
    assert a.estimate("new") == 2 and a.admit("new")
    for _ in range(5):
        a.record("hot")
    assert a.admit("hot", victim="new")
    assert not a.admit("new", victim="hot")


def test_tinylfu_ages():
    a = TinyLFUAdmission(width=64, sample_factor=1)   # resets after 64 sightings
    for _ in range(10):
        a.record("k")
    before = a.estimate("k")
    for i in range(200):
        a.record(("other", i))
    assert a.resets >= 1
    assert a.estimate("k") < before


def test_tinylfu_estimate_never_undercounts_much():
    a = TinyLFUAdmission(width=4096)
    for i in range(500):
        for _ in range(i % 7):
            a.record(i)
    for i in range(500):
        c = i % 7
        assert a.estimate(i) >= min(c, 15)   # count-min never underestimates (no aging here)


def test_tinylfu_unrolled_paths_equal_the_generic_indexes():
    """depth 4 (the default) unrolls the index computation in record/estimate for speed: the
    counters it touches and the estimates are those of ``_indexes``."""
    import random

    a = TinyLFUAdmission(width=256, sample_factor=100)  # no aging within the test
    rng = random.Random(1)
    keys = [rng.randrange(1000) for _ in range(3000)] + [b"bytes-key", "str-key"] * 5
    for k in keys:
        before = [bytearray(r) for r in a._rows]
        was_door = k in a._door
        a.record(k)
        if was_door:
            want = [bytearray(r) for r in before]
            for i, j in enumerate(a._indexes(k)):
                want[i][j] = min(15, want[i][j] + 1)
            assert a._rows == want
        generic = min(a._rows[i][j] for i, j in enumerate(a._indexes(k))) + (k in a._door)
        assert a.estimate(k) == generic
