"""Documented semantics of each policy, and the contract every eviction policy keeps."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ucm.policies import EVICTION_POLICIES, make_admission, make_eviction
from ucm.policies.arc import ARCPolicy
from ucm.policies.lfu import LFUPolicy
from ucm.policies.s3fifo import S3FIFOPolicy
from ucm.policies.sieve import SievePolicy

NAMES = sorted(EVICTION_POLICIES)


def fill(p, keys):
    for k in keys:
        if k in p:
            p.touch(k)
        else:
            while len(p) >= p.capacity:
                p.evict(incoming=k)
            p.insert(k)


def test_registry_and_errors():
    assert {"lru", "lfu", "arc", "s3fifo", "sieve"} <= set(EVICTION_POLICIES)
    with pytest.raises(ValueError, match="unknown eviction"):
        make_eviction("nope", 4)
    with pytest.raises(ValueError, match="no parameter"):
        make_eviction("lfu", 4, bogus=1)
    with pytest.raises(ValueError):
        make_eviction("s3fifo", 10, small_size_ratio=1.5)
    with pytest.raises(ValueError):
        make_admission("reuse", threshold=0)


def test_lfu_counts_only_while_cached_and_ties_lru_first():
    p = LFUPolicy(3)
    fill(p, ["a", "b", "c", "a", "b"])  # a:2 b:2 c:1
    assert p.evict() == "c"
    p.insert("d")                        # d:1
    p.touch("d")                         # d reaches 2 after a and b
    assert p.evict() == "a"              # tie at 2: a reached 2 first
    p.insert("a")                        # a comes back with count 1 (no history)
    assert p.count("a") == 1
    assert p.evict() == "a"


def test_arc_p_is_float_and_t1_evicted_when_t2_empty():
    p = ARCPolicy(4)
    fill(p, [1, 2, 3, 4, 5])             # one-time keys only: T2 empty, LRU of T1 goes
    assert 1 not in p and isinstance(p.p, float) and not p.t2
    # (T1 full and B1 empty: the LRU of T1 leaves without a ghost)
    assert not p.b1
    q = ARCPolicy(4)
    fill(q, [1, 2, 3, 1, 4, 5])          # 1 in T2; miss on 5 replaces the LRU of T1 (2) into B1
    assert list(q.b1) == [2] and q.p == 0.0
    fill(q, [2])                         # ghost hit in B1: p grows by max(|B2|/|B1|, 1) = 1
    assert q.p == 1.0 and isinstance(q.p, float) and 2 in q.t2


def test_sieve_keeps_visited_and_hand_stays():
    p = SievePolicy(3)
    fill(p, ["a", "b", "c"])
    p.touch("a")
    assert p.evict() == "b"              # a visited: bit cleared, kept; b evicted
    p.insert("d")
    assert p.evict() == "c"              # the hand stayed after b
    assert p.evict() == "d"              # then goes on toward the newest key
    assert p.evict() == "a"              # wrapped: a's bit was cleared on the first pass


def test_s3fifo_small_main_ghost():
    p = S3FIFOPolicy(10)                 # small 1, main 9, ghost 9
    fill(p, range(10))                   # small full first: the rest go to main before any eviction
    assert len(p.small) == 1 and len(p.main) == 9
    fill(p, [100])                       # evicts from small (0) into the ghost
    assert 0 in p.ghost and 0 not in p
    fill(p, [0])                         # a ghost hit goes straight to main
    assert 0 in p.main and 0 not in p.ghost


@pytest.mark.parametrize("name", NAMES)
def test_protected_keys_are_never_evicted(name):
    p = make_eviction(name, 8)
    fill(p, range(8))
    for k in range(3):
        p.touch(k)
    protected = frozenset(range(7))
    v = p.evict(protected)
    assert v == 7
    assert p.evict(frozenset(range(8)) - {v}) is None or len(p) < 7


@pytest.mark.parametrize("name", NAMES)
def test_remove_and_reinsert(name):
    p = make_eviction(name, 4)
    fill(p, [1, 2, 3, 4])
    p.remove(2)
    p.remove(99)
    assert 2 not in p and len(p) == 3
    p.insert(5)
    assert len(p) == 4 and 5 in p


ops = st.lists(st.tuples(st.sampled_from(["get", "remove", "evict_protected"]), st.integers(0, 30)),
               max_size=300)


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=60, deadline=None)
@given(ops=ops, cap=st.integers(1, 12))
def test_contract_model(name, ops, cap):
    """Against a set model: size bounded, evict returns a cached unprotected key, membership exact."""
    p = make_eviction(name, cap)
    model: set = set()
    for op, k in ops:
        if op == "get":
            if k in p:
                assert k in model
                p.touch(k)
            else:
                assert k not in model
                while len(p) >= cap:
                    v = p.evict(incoming=k)
                    assert v in model and v != k
                    model.discard(v)
                p.insert(k)
                model.add(k)
        elif op == "remove":
            p.remove(k)
            model.discard(k)
        else:
            protected = frozenset(x for x in model if x % 3 == k % 3)
            v = p.evict(protected)
            if v is None:
                assert model <= protected
            else:
                assert v in model and v not in protected
                model.discard(v)
        assert len(p) == len(model) <= cap
        assert all(x in p for x in model)


def test_chainarc_without_hook_is_arc_and_with_hook_cuts_tails_first():
    from tests.policies.conftest import ucm_hits, zipf_stream
    keys = zipf_stream(20_000, 3_000, 0.9, seed=1)
    assert ucm_hits("chainarc", 400, keys) == ucm_hits("arc", 400, keys)   # never hooked: plain ARC
    p = make_eviction("chainarc", 6, cold_last=False)
    p.begin_sequence()
    fill(p, ["a", "b", "c"])
    p.begin_sequence()                   # request done: its tail becomes the least recent
    fill(p, ["x", "y", "z"])
    p.begin_sequence()
    assert [p.evict() for _ in range(3)] == ["c", "b", "a"]
    q = make_eviction("chainarc", 6, cold_last=True)  # the last block of a request goes first
    q.begin_sequence()
    fill(q, ["a", "b", "c"])
    q.begin_sequence()
    assert q.evict() == "c"


@settings(max_examples=40, deadline=None)
@given(ops=ops, cap=st.integers(1, 12))
def test_chainarc_contract_with_sequences(ops, cap):
    p = make_eviction("chainarc", cap, max_sequence=3)
    model: set = set()
    for n, (op, k) in enumerate(ops):
        if n % 4 == 0:
            p.begin_sequence()
        if op == "get" or op == "evict_protected":
            if k in p:
                p.touch(k)
            else:
                while len(p) >= cap:
                    model.discard(p.evict(incoming=k))
                p.insert(k)
                model.add(k)
        else:
            p.remove(k)
            model.discard(k)
        assert len(p) == len(model) <= cap and all(x in p for x in model)


class _LFUDAModel:
    """Reference for chainlfu without the hook: O(n) scans, same rules."""

    def __init__(self, cap, history, new_weight):
        self.cap, self.L, self.t = cap, 0, 0
        self.first = round(2 * new_weight)
        self.prio, self.count, self.stamp = {}, {}, {}
        self.hist, self.hmax = {}, max(1, int(history * cap))  # dict kept in LRU order

    def value(self, n):
        """Priority above L of n half-unit sightings (chainlfu: n itself; prefixlfu's model reshapes it)."""
        return n

    def _set(self, k, n):
        self.t += 1
        self.count[k], self.prio[k], self.stamp[k] = n, self.L + self.value(n), self.t

    def evict_one(self):
        """Drop the lowest priority, oldest first; L rises to it; its count goes to the history."""
        victim = min(self.prio, key=lambda x: (self.prio[x], self.stamp[x]))
        self.L = max(self.L, self.prio.pop(victim))
        self.hist.pop(victim, None)
        self.hist[victim] = self.count.pop(victim)
        if len(self.hist) > self.hmax:
            del self.hist[next(iter(self.hist))]
        del self.stamp[victim]
        return victim

    def access(self, k):
        if k in self.prio:
            self._set(k, self.count[k] + 2)
            return None
        victim = self.evict_one() if len(self.prio) >= self.cap else None
        h = self.hist.pop(k, None)
        self._set(k, self.first if h is None else 2 + h)
        return victim


@settings(max_examples=60, deadline=None)
@given(keys=st.lists(st.integers(0, 25), max_size=300), cap=st.integers(1, 8),
       history=st.sampled_from([0.5, 1.0, 4.0]), new_weight=st.sampled_from([0.0, 0.5, 1.0, 1.5]))
def test_chainlfu_matches_an_lfu_da_model(keys, cap, history, new_weight):
    p = make_eviction("chainlfu", cap, history=history, new_weight=new_weight)
    m = _LFUDAModel(cap, history, new_weight)
    for k in keys:
        want = m.access(k)
        if k in p:
            p.touch(k)
        else:
            got = p.evict(incoming=k) if len(p) >= cap else None
            assert got == want
            p.insert(k)
        assert p.priority(k) == m.prio[k]


def test_chainlfu_history_aging_and_tail_first():
    p = make_eviction("chainlfu", 3, history=4.0, new_weight=1.0)  # counts in half units: 2 a sighting
    fill(p, ["a", "a", "a", "b", "c"])     # a: 6, b: 2, c: 2
    assert p.evict() == "b" and p.L == 2    # lowest priority, oldest first; L rises to 2
    fill(p, ["d"])                          # d: L + 2 = 4 > c's 2
    assert p.evict() == "c"
    fill(p, ["c"])                          # c comes back with its remembered count: L + 2 + 2
    assert p.priority("c") == p.L + 4
    h = make_eviction("chainlfu", 2)        # default new_weight 0.5: a first sighting counts 1 (half)
    fill(h, ["a", "b", "b"])
    assert h.priority("a") == 1 and h.priority("b") == 3
    q = make_eviction("chainlfu", 6)
    q.begin_sequence()
    fill(q, ["x", "y", "z"])                # one request, all count 1
    q.begin_sequence()                      # tail first: z is now the oldest of equal priority
    assert [q.evict() for _ in range(3)] == ["z", "y", "x"]
