"""Replay semantics: raw and prefix modes, Belady, the tier chain, fast paths."""
from __future__ import annotations

import functools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.sim.conftest import DATA
from ucm.policies import EVICTION_POLICIES
from ucm.sim import synth
from ucm.sim.core import load_trace, resolve_capacity, simulate
from ucm.sim.replay import Chain, _raw_generic, replay_belady, replay_raw
from ucm.sim.trace import from_requests

POLICIES = sorted(EVICTION_POLICIES)


def test_prefix_mode_by_hand():
    # capacity 3, LRU. r0 stores 1,2,3. r1: 1,2 hit, 4 misses (evicts 3), then 3 is stored again
    # (evicting 1... LRU order after r1 lookups: 3,1,2,4 -> inserting 3 evicts the LRU, 1)
    t = from_requests("t", [[1, 2, 3], [1, 2, 4, 3], [1, 2, 3]], block_tokens=10, tokens=[30, 35, 25])
    r = simulate(t, mode="prefix", eviction="lru", capacity_blocks=3, block_tokens=10)
    assert r["accesses"] == 10
    assert r["hits"] == 2          # r0: 0, r1: 2 (1,2), r2: 0 (1 was evicted: lookup stops at once)
    assert r["prefix_hit_tokens"] == 20
    assert r["prefix_hit_ratio"] == pytest.approx(20 / 90)
    raw = simulate(t, mode="raw", eviction="lru", capacity_blocks=3, block_tokens=10)
    # raw: r1 hits 1,2; 4 evicts 3; 3 misses evicting 1; r2: 1 misses (evicts 2), 2 misses, 3 hits
    assert raw["hits"] == 3
    assert raw["prefix_hit_tokens"] == 20   # only r1 has a leading run of hits


def brute_force_opt(keys, cap):
    """Most hits of any replacement (with bypass) on a tiny trace, by exhaustive search."""
    @functools.lru_cache(maxsize=None)
    def best(i, cache):
        if i == len(keys):
            return 0
        k = keys[i]
        if k in cache:
            return 1 + best(i + 1, cache)
        options = [best(i + 1, cache)]  # bypass
        if len(cache) < cap:
            options.append(best(i + 1, cache | {k}))
        else:
            options += [best(i + 1, (cache - {v}) | {k}) for v in cache]
        return max(options)
    return best(0, frozenset())


@settings(max_examples=80, deadline=None)
@given(keys=st.lists(st.integers(0, 6), min_size=1, max_size=14), cap=st.integers(1, 3))
def test_belady_is_optimal_in_raw_mode(keys, cap):
    t = from_requests("t", [[k] for k in keys])
    assert replay_belady(t, cap, "raw").hits == brute_force_opt(tuple(keys), cap)


@pytest.mark.parametrize("mode", ["raw", "prefix"])
def test_belady_beats_every_policy(mode):
    t = load_trace(str(DATA / "conversation_head400.jsonl"))
    for cap in (300, 2000):
        opt = simulate(t, mode=mode, eviction="belady", capacity_blocks=cap)
        for name in POLICIES:
            r = simulate(t, mode=mode, eviction=name, capacity_blocks=cap)
            assert r["hits"] <= opt["hits"], (name, cap)


def protocol_flags(ev, t) -> bytearray:
    """The tier protocol, spelled out: begin_sequence (if any) per request, touch or evict+insert."""
    flags = bytearray(t.n_accesses)
    begin = getattr(ev, "begin_sequence", None)
    for r in range(t.n_requests):
        if begin is not None:
            begin()
        _raw_generic(ev, t.keys, flags, t.starts[r], t.starts[r + 1])
    return flags


@pytest.mark.parametrize("name", POLICIES)
@pytest.mark.parametrize("trace", ["zipf", "conversation"])
def test_fast_paths_equal_the_tier_protocol(name, trace):
    """replay_raw may take a policy's fast kernel; it must count what the plain protocol counts."""
    if trace == "zipf":
        t = synth.zipf(n_accesses=30_000, n_objects=5_000, alpha=0.9, seed=3)
    else:
        t = load_trace(str(DATA / "conversation_head400.jsonl"))
    for cap in (300, 2000):
        fast = replay_raw(t, Chain.build(name, "always", [cap]))
        assert fast.flags == protocol_flags(Chain.build(name, "always", [cap]).ev[0], t), cap


def test_infinite_lower_tier_catches_every_reuse():
    t = load_trace(str(DATA / "conversation_head400.jsonl"))
    inf = simulate(t, mode="prefix", eviction="lru", capacity_blocks=10 ** 7)
    two = simulate(t, mode="prefix", eviction="lru", capacity_blocks=200,
                   lower_tiers=[{"name": "disk", "capacity_blocks": 10 ** 7}])
    assert two["hits"] == inf["hits"]
    assert two["tiers"]["disk"]["hits"] > 0 and two["demoted_blocks"] > 0
    assert two["tiers"]["dram"]["hits"] + two["tiers"]["disk"]["hits"] == two["hits"]


def test_admission_reduces_writes():
    t = load_trace(str(DATA / "conversation_head400.jsonl"))
    a = simulate(t, mode="raw", eviction="lru", admission="always", capacity_blocks=500)
    r = simulate(t, mode="raw", eviction="lru", admission="reuse", capacity_blocks=500)
    assert r["tiers"]["dram"]["blocks_stored"] < a["tiers"]["dram"]["blocks_stored"]
    assert r["rejected_blocks"] > 0


def test_capacity_forms():
    t = load_trace(str(DATA / "synthetic_head300.jsonl"))
    assert resolve_capacity(t, capacity_bytes=10 * 4096, block_bytes=4096) == 10
    assert resolve_capacity(t, capacity_fraction=0.5) == round(0.5 * t.distinct())
    with pytest.raises(ValueError):
        resolve_capacity(t)
    with pytest.raises(ValueError):
        resolve_capacity(t, capacity_blocks=0)


def test_generators_are_seeded():
    assert synth.zipf(1000, 100, 1.0, seed=1).keys == synth.zipf(1000, 100, 1.0, seed=1).keys
    c = synth.conversation(n_sessions=50, seed=2)
    assert c.n_requests >= 50 and c.keys == synth.conversation(n_sessions=50, seed=2).keys
    s = synth.scan(n_accesses=5000, n_objects=100, scan_prob=0.01, scan_len=50, seed=0)
    assert s.n_accesses >= 5000 and len(set(s.keys)) > 100


def test_chainarc_fast_path_with_requests_longer_than_its_buffer():
    t = load_trace(str(DATA / "conversation_head400.jsonl"))
    for most in (1, 2, 5, 7):
        fast = replay_raw(t, Chain.build("chainarc", "always", [500], {"max_sequence": most}))
        slow = protocol_flags(Chain.build("chainarc", "always", [500], {"max_sequence": most}).ev[0], t)
        assert fast.flags == slow, most


@pytest.mark.parametrize("mode", ["raw", "prefix"])
@pytest.mark.parametrize("eviction", ["lru", "belady"])
def test_per_tier_prefix_ratios_add_up(mode, eviction):
    t = load_trace(str(DATA / "conversation_head400.jsonl"))
    lower = [] if eviction == "belady" else [{"name": "disk", "capacity_blocks": 3000}]
    r = simulate(t, mode=mode, eviction=eviction, capacity_blocks=300, lower_tiers=lower)
    assert sum(v["prefix_hit_ratio"] for v in r["tiers"].values()) == pytest.approx(r["prefix_hit_ratio"])
    assert sum(v["prefix_hit_blocks"] for v in r["tiers"].values()) == r["prefix_hit_blocks"]


def test_skip_partial_never_stores_a_partial_last_block():
    # block_tokens 10: r0 has 25 tokens (3rd block partial), r1 30 tokens (all full)
    t = from_requests("t", [[1, 2, 3], [1, 2, 3], [4, 5, 6], [4, 5, 6]], block_tokens=10, tokens=[25, 25, 30, 30])
    for ev in ("lru", "chainarc", "belady"):
        r = simulate(t, mode="prefix", eviction=ev, capacity_blocks=10, block_tokens=10, skip_partial=True)
        assert r["hits"] == 2 + 3, ev          # block 3 is never stored; 4, 5, 6 all hit
        assert r["accesses"] == 12 and r["skip_partial"]
        assert simulate(t, mode="prefix", eviction=ev, capacity_blocks=10, block_tokens=10)["hits"] == 6
    assert not simulate(t, mode="raw", eviction="lru", capacity_blocks=10, skip_partial=True)["skip_partial"]


def test_belady_beats_every_policy_with_skip_partial():
    t = load_trace(str(DATA / "conversation_head400.jsonl"))
    opt = simulate(t, mode="prefix", eviction="belady", capacity_blocks=500, skip_partial=True)
    for name in POLICIES:
        assert simulate(t, mode="prefix", eviction=name, capacity_blocks=500, skip_partial=True)["hits"] <= opt["hits"]


@pytest.mark.parametrize("eviction", ["lru", "arc", "s3fifo", "sieve"])
@pytest.mark.parametrize("admission", ["reuse", "tinylfu"])
def test_one_tier_admission_fast_path_equals_the_chain_path(eviction, admission):
    """Raw mode, one tier behind an admission policy: the inlined loop decides exactly as
    ``Chain.store`` does (same hits, same insertions and refusals)."""
    from ucm.sim.replay import _raw_chain

    t = synth.zipf(20000, 3000, 0.9, seed=3)
    fast = replay_raw(t, Chain.build(eviction, admission, [300]))
    chain = Chain.build(eviction, admission, [300])
    flags = bytearray(t.n_accesses)
    _raw_chain(chain, t, flags, 0, t.n_accesses)
    assert fast.flags == flags
    assert (fast.inserted, fast.rejected) == (chain.inserted, chain.rejected)
