"""prefixlfu: documented semantics, a brute-force reference model, and the simulator fast path."""
from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.policies.test_semantics import _LFUDAModel, fill
from tests.sim.conftest import DATA
from ucm.policies import make_eviction
from ucm.sim.core import load_trace
from ucm.sim.replay import Chain, _raw_generic, replay_raw


class _Model(_LFUDAModel):
    """Reference for prefixlfu: chainlfu's reference (O(n) scans, a global stamp) with a log value,
    prefix-aware first sightings and tail-first order, the rules of the docstring spelled out."""

    def __init__(self, cap, history, new_weight, cont_weight, min_hits, scale, max_sequence):
        super().__init__(cap, history, new_weight)
        self.new, self.cont = round(2 * new_weight), round(2 * cont_weight)
        self.min_hits, self.scale, self.most = min_hits, scale, max_sequence
        self.seq = None          # keys placed in the current request (None: never begun)
        self.hits, self.inserting = 0, False

    def value(self, n):
        return int(round(self.scale * math.log1p(n / 2.0)))

    def _note(self, k):
        if self.seq is not None:
            self.seq.append(k)
            if len(self.seq) >= self.most:
                self._flush()

    def _flush(self):
        if len(self.seq) > 1:
            for k in reversed(self.seq):
                if k in self.count:
                    self._set(k, self.count[k])
        self.seq.clear()

    def begin(self):
        if self.seq:
            self._flush()
        self.seq = []
        self.hits, self.inserting = 0, False

    def access(self, k):
        """One lookup of ``k``: a hit, or an eviction (returned) and an insert."""
        if k in self.prio:
            if not self.inserting:
                self.hits += 1
            self._set(k, self.count[k] + 2)
            self._note(k)
            return None
        if not self.inserting:
            self.inserting = True
            self.first = self.cont if (self.seq is not None and self.hits >= self.min_hits) else self.new
        victim = self.evict_one() if len(self.prio) >= self.cap else None
        h = self.hist.pop(k, None)
        self._set(k, self.first if h is None else 2 + h)
        self._note(k)
        return victim


@settings(max_examples=80, deadline=None)
@given(ops=st.lists(st.one_of(st.integers(0, 20), st.just("begin")), max_size=300),
       cap=st.integers(1, 8), history=st.sampled_from([0.5, 1.0, 4.0]),
       new_weight=st.sampled_from([0.0, 0.5, 1.0]), cont_weight=st.sampled_from([0.0, 0.5, 1.5]),
       min_hits=st.integers(0, 3), scale=st.sampled_from([1.0, 4.0, 16.0]), most=st.sampled_from([2, 3, 4096]),
       hooked=st.booleans())
def test_matches_a_brute_force_model(ops, cap, history, new_weight, cont_weight, min_hits, scale, most, hooked):
    params = dict(history=history, new_weight=new_weight, cont_weight=cont_weight, min_hits=min_hits, scale=scale)
    p = make_eviction("prefixlfu", cap, max_sequence=most, **params)
    m = _Model(cap, max_sequence=most, **params)
    for op in ops:
        if op == "begin":
            if hooked:
                p.begin_sequence()
                m.begin()
            continue
        want = m.access(op)
        if op in p:
            p.touch(op)
        else:
            got = p.evict(incoming=op) if len(p) >= cap else None
            assert got == want
            p.insert(op)
        assert p.priority(op) == m.prio[op]
        assert p.L == m.L and len(p) == len(m.prio)


def test_log_value_and_prefix_aware_first_sighting():
    p = make_eviction("prefixlfu", 10)             # scale 16, new 0.5, cont 0, min_hits 2
    assert [p.value(n) for n in (0, 1, 2, 4, 40)] == [0, 6, 11, 18, 49]
    p.begin_sequence()
    fill(p, ["a", "b", "c"])                        # a new chain: first sightings weigh 0.5
    assert [p.priority(k) for k in "abc"] == [6, 6, 6]
    p.begin_sequence()
    fill(p, ["a", "b", "x", "y"])                   # continues a cached chain after 2 hits: new tail weighs 0
    assert p.priority("a") == p.priority("b") == 15 and p.priority("x") == p.priority("y") == 0
    p.begin_sequence()
    fill(p, ["a", "z"])                             # only 1 hit: z is a new chain's block
    assert p.priority("z") == 6
    p.begin_sequence()
    assert [p.evict() for _ in range(2)] == ["y", "x"]   # the tail first, then
    assert p.evict() == "c"                         # the lowest of the rest; z (placed later) after c
    q = make_eviction("prefixlfu", 10)              # never hooked: no request context
    fill(q, ["a", "b", "x"])
    fill(q, ["a", "b", "y"])
    assert q.priority("y") == q.value(1)


def test_history_resumes_counts_and_dynamic_aging():
    p = make_eviction("prefixlfu", 2, history=4.0, scale=16.0)
    fill(p, ["a", "a", "a", "b"])                   # a: 5 half units -> v 20; b: 1 -> v 6
    assert p.evict() == "b" and p.L == 6
    fill(p, ["c"])                                  # c: L + 6 = 12 < a's 20
    assert p.evict() == "c" and p.L == 12
    fill(p, ["b"])                                  # b comes back with its count: 1 + 2 -> L + v(3) = 12 + 15
    assert p.priority("b") == 12 + p.value(3)


def test_errors():
    for bad in (dict(cont_weight=-1), dict(min_hits=-1), dict(scale=0), dict(new_weight=-1), dict(history=-1)):
        with pytest.raises(ValueError):
            make_eviction("prefixlfu", 4, **bad)


def test_fast_path_with_requests_longer_than_its_buffer():
    t = load_trace(str(DATA / "conversation_head400.jsonl"))
    for most in (1, 2, 5, 4096):
        for cap in (300, 2000):
            fast = replay_raw(t, Chain.build("prefixlfu", "always", [cap], {"max_sequence": most}))
            ev = make_eviction("prefixlfu", cap, max_sequence=most)
            flags = bytearray(t.n_accesses)
            for r in range(t.n_requests):
                ev.begin_sequence()
                _raw_generic(ev, t.keys, flags, t.starts[r], t.starts[r + 1])
            assert fast.flags == flags, (most, cap)
