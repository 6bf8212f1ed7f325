"""Slot-pool tiers (DRAM, HBM): bounded memory, eviction order, refusals, protected reads."""
import pytest
import torch

from ucm.tiers import OK, REFUSED, create_store
from ucm.tiers.disk import DiskTier
from tests.tiers.conftest import BLOCK, SLOTS, get, put, rand_block


@pytest.fixture(params=["dram_tier", "hbm_tier"])
def pool_tier(request):
    return request.getfixturevalue(request.param)


def test_pool_is_allocated_once_within_the_cap(pool_tier):
    assert pool_tier.pool.numel() * pool_tier.pool.element_size() <= SLOTS * BLOCK
    ptr = pool_tier.pool.data_ptr()
    for i in range(3 * SLOTS):
        put(pool_tier, [f"b{i}"], seed=i)
    assert pool_tier.pool.data_ptr() == ptr, "no reallocation"


def test_capacity_is_never_exceeded(pool_tier):
    for i in range(5 * SLOTS):
        put(pool_tier, [f"b{i}"], seed=i)
        assert sum(pool_tier.lookup([f"b{j}" for j in range(i + 1)])) <= SLOTS
        assert pool_tier.stats()["used_slots"] <= SLOTS
    assert pool_tier.stats()["evictions"] == 4 * SLOTS


def test_lru_evicts_least_recently_used(pool_tier):
    ids = [f"b{i}" for i in range(SLOTS)]
    data = {}
    for i, b in enumerate(ids):  # one commit each, b0 first
        data.update(put(pool_tier, [b], seed=i))
    assert get(pool_tier, "b0")[0] == OK  # b0 is now the most recent; b1 the oldest
    put(pool_tier, ["new"], seed=50)
    assert pool_tier.lookup(ids) == [True, False] + [True] * (SLOTS - 2)
    code, out = get(pool_tier, "b0")
    assert code == OK and torch.equal(out, data["b0"])


def test_a_requests_blocks_are_evicted_tail_first(pool_tier):
    """A commit or a read lists a request's blocks first to last; a prefix lookup stops at the first
    miss, so the policy must drop the tail before the head: what stays is still a prefix."""
    chain = [f"c{i}" for i in range(SLOTS)]
    put(pool_tier, chain)
    put(pool_tier, ["x"], seed=20)
    put(pool_tier, ["y"], seed=21)
    assert pool_tier.lookup(chain) == [True] * (SLOTS - 2) + [False, False]
    outs = [torch.empty(BLOCK, dtype=torch.uint8) for _ in range(3)]
    assert pool_tier.wait(pool_tier.load(chain[:3], [0] * 3, outs)) == OK  # touches c2, c1, c0
    put(pool_tier, ["z1", "z2", "z3", "z4"], seed=22)  # evicts c5, c4, c3 (untouched tail), then x
    assert pool_tier.lookup(chain + ["x", "y"]) == [True] * 3 + [False] * (SLOTS - 3) + [False, True]


def test_dump_beyond_free_slots_is_refused_not_raised(pool_tier):
    ids = [f"w{i}" for i in range(SLOTS + 2)]
    task = pool_tier.dump(ids, [0] * len(ids), [rand_block(seed=i) for i in range(len(ids))])
    assert pool_tier.wait(task) == REFUSED, "in-flight writes cannot be evicted"
    assert task.failed_ids == {b"w8", b"w9"}
    pool_tier.commit(ids)
    assert pool_tier.lookup(ids) == [True] * SLOTS + [False, False]
    assert pool_tier.stats()["refused"] == 2


def test_blocks_being_loaded_are_not_evicted(pool_tier):
    ids = [f"b{i}" for i in range(SLOTS)]
    data = put(pool_tier, ids)
    # a load in flight protects its blocks; release only after wait
    outs = [torch.empty(BLOCK, dtype=torch.uint8) for _ in ids]
    task = pool_tier.load(ids, [0] * SLOTS, outs)
    assert pool_tier._reading or task.done()
    pool_tier.wait(task)
    for i, out in zip(ids, outs):
        assert torch.equal(out, data[i])
    put(pool_tier, ["after"], seed=77)  # released: eviction works again
    assert pool_tier.lookup(["after"]) == [True]


def test_pinned_blocks_stay_until_unpinned(pool_tier):
    ids = [f"b{i}" for i in range(SLOTS)]
    data = put(pool_tier, ids)
    assert pool_tier.pin(["b0", "b1", "absent"], "req-1") == [True, True, False]
    assert pool_tier.pin(["b1"], "req-2") == [True]
    for i in range(3 * SLOTS):  # churn: everything else is evicted, the pinned blocks stay
        put(pool_tier, [f"n{i}"], seed=100 + i)
    assert pool_tier.lookup(["b0", "b1"]) == [True, True]
    code, out = get(pool_tier, "b0")
    assert code == OK and torch.equal(out, data["b0"])
    pool_tier.unpin("req-1")
    pool_tier.unpin("req-1")  # idempotent
    for i in range(2 * SLOTS):
        put(pool_tier, [f"m{i}"], seed=300 + i)
    assert pool_tier.lookup(["b0", "b1"]) == [False, True], "b1 is still pinned by req-2"
    pool_tier.unpin("req-2")
    for i in range(2 * SLOTS):
        put(pool_tier, [f"k{i}"], seed=500 + i)
    assert pool_tier.lookup(["b1"]) == [False]
    assert not pool_tier._reading and not pool_tier._pins


def test_chain_pins_only_blocks_in_its_head(chain):
    put(chain, ["a"], seed=1)  # dumps land in the head
    assert chain.pin(["a", "nope"], "r") == [True, False]
    chain.unpin("r")
    assert not chain.head._reading


def test_protected_blocks_refuse_new_dumps_when_all_are_read(dram_tier):
    ids = [f"b{i}" for i in range(SLOTS)]
    put(dram_tier, ids)
    with dram_tier._lock:  # simulate loads in flight on every block
        for k in ids:
            dram_tier._reading[k.encode()] = 1
    task = dram_tier.dump(["x"], [0], [rand_block()])
    assert dram_tier.wait(task) == REFUSED
    assert dram_tier.lookup(ids) == [True] * SLOTS


def test_admission_refusal_is_reported():
    cfg = {"kv_block_size": BLOCK, "max_cache_size": 4 * BLOCK, "admission": {"name": "reuse", "params": {}}}
    try:
        store = create_store("UcmDramStore", cfg)
    except ValueError:
        pytest.skip("reuse admission not available")
    task = store.dump(["once"], [0], [rand_block()])
    assert store.wait(task) == REFUSED


def test_default_max_cache_size_is_5_gib():
    from ucm.tiers.settings import StoreSettings

    assert StoreSettings().max_cache_size == 5368709120


class _Pending:
    """A copy that never finishes by itself, counting how often it is polled."""

    def __init__(self):
        self.polls = 0
        self.finished = False

    def done(self):
        self.polls += 1
        return self.finished

    def wait(self, timeout):
        return self.finished


def test_dumps_into_a_full_pool_do_not_poll_loads_per_block():
    """Reserving many new blocks in a full pool while a load is in flight costs O(1) polls of that
    load per call, not one per evicted block (on CUDA each poll is an event query on the model's
    thread); a finished load that nobody waited for still stops protecting its blocks."""
    slots = 64
    with create_store("UcmDramStore", {"kv_block_size": BLOCK, "max_cache_size": BLOCK * slots}) as tier:
        put(tier, [f"old{i}" for i in range(slots)])
        pending = _Pending()
        load = tier.load([b"old0"], [0], [torch.empty(BLOCK, dtype=torch.uint8)])
        tier.wait(load)
        load = tier.load([b"old1"], [0], [torch.empty(BLOCK, dtype=torch.uint8)])
        load.add(pending)  # now it is in flight until we say so
        new = [f"new{i}" for i in range(slots - 2)]
        put(tier, new)
        assert pending.polls <= 4
        assert tier.lookup(new) == [True] * len(new)
        assert tier.lookup(["old1"]) == [True]  # protected by the load in flight
        pending.finished = True  # done, never waited for: the next dump that needs it evicts it
        put(tier, ["last0", "last1"])
        assert tier.lookup(["last0", "last1"]) == [True, True]


def test_fill_block_takes_a_block_in_straight_into_its_slot(dram_tier):
    data = rand_block(seed=7)
    seen = []

    def fill(views):
        seen.append(len(views))  # the slot's planes
        at = 0
        for v in views:
            v.copy_(data[at:at + v.numel()])
            at += v.numel()
        return True

    assert dram_tier.fill_block(b"f", fill) is True and seen == [dram_tier.planes]
    assert dram_tier.holds(b"f") and dram_tier.counters["filled"] == 1
    assert torch.equal(get(dram_tier, "f")[1], data)
    assert dram_tier.fill_block(b"f", lambda v: pytest.fail("held already: not filled again")) is True


@pytest.mark.parametrize("outcome", ["false", "raise"])
def test_a_failed_fill_leaves_nothing_behind(dram_tier, outcome):
    def fill(views):
        for v in views:
            v.fill_(9)
        if outcome == "raise":
            raise OSError("disk gone")
        return False

    free = len(dram_tier._free)
    assert dram_tier.fill_block(b"g", fill) is False
    assert not dram_tier.holds(b"g") and b"g" not in dram_tier._blocks and len(dram_tier._free) == free


def test_a_dump_of_the_same_id_during_a_fill_settles_it_at_its_commit(dram_tier):
    data = rand_block(seed=8)

    def fill(views):  # meanwhile a dump of the same id (same content: ids are content hashes)
        task = dram_tier.dump(["d"], [0], [data])
        at = 0
        for v in views:
            v.copy_(data[at:at + v.numel()])
            at += v.numel()
        fill.task = task
        return True

    assert dram_tier.fill_block(b"d", fill) is False  # not settled by the fill
    assert not dram_tier.holds(b"d")
    assert dram_tier.wait(fill.task) == OK
    dram_tier.commit(["d"])
    assert dram_tier.holds(b"d") and torch.equal(get(dram_tier, "d")[1], data)


@pytest.mark.parametrize("tier", ["dram", "disk", "chain"])
def test_a_lookup_without_record_is_no_sighting_for_admission(tier, tmp_path):
    """vLLM asks again about a request it could not schedule yet: the scheduler's repeated lookups pass
    ``record=False``, so reuse admission (a block enters on its second sighting) still counts one sighting
    a request, however often it was asked."""
    reuse = {"name": "reuse", "params": {}}
    if tier == "dram":
        store = create_store("UcmDramStore", {"kv_block_size": BLOCK, "max_cache_size": 4 * BLOCK,
                                               "admission": reuse})
    elif tier == "disk":
        store = DiskTier({"kv_block_size": BLOCK, "admission": reuse,
                          "disk": {"path": str(tmp_path / "d"), "max_size": 4 * BLOCK}})
    else:  # every tier of the chain admits by reuse
        store = create_store("dram_disk", {"kv_block_size": BLOCK, "max_cache_size": 4 * BLOCK, "admission": reuse,
                                           "disk": {"path": str(tmp_path / "d"), "max_size": 4 * BLOCK}})
    with store:
        assert store.lookup(["asked", "seen"]) == [False, False]  # one sighting each
        for _ in range(3):
            assert store.lookup(["asked"], record=False) == [False]
        assert store.lookup(["seen"]) == [False]  # its second sighting
        store.wait(store.dump(["asked", "seen"], [0, 0], [rand_block(), rand_block()]))
        store.commit(["asked", "seen"])  # DRAM refuses at the dump, the disk at the commit
        assert store.lookup(["asked", "seen"], record=False) == [False, True]
