"""Block-API calls over many blocks run in stages (``base.stages``): the first copies start after a
few blocks are planned. Each stage is its own plan, so the call must still behave as one: every
block once, bytes exact, a request's chain evicted tail-first after a staged read."""
import pytest
import torch

from ucm.tiers import OK, base, create_store
from tests.tiers.test_planes import BLOCK, LAYERS, kv_cache


@pytest.mark.parametrize("n", [0, 1, 15, 16, 31, 32, 33, 100, 1000, 5000])
@pytest.mark.parametrize("from_end", [False, True])
def test_stages_cover_every_block_once_growing(n, from_end):
    head = max(16, base.STAGE_HEAD_BYTES // (1 << 20))  # 1 MiB blocks: 128
    got = base.stages(n, 1 << 20, from_end)
    covered = sorted(i for lo, hi in got for i in range(lo, hi))
    assert covered == list(range(n))
    sizes = [hi - lo for lo, hi in got]
    assert all(s >= min(n, head) for s in sizes), "never a stage below the first one's size"
    assert sizes[:-1] == [head * base.STAGE_FANOUT ** i for i in range(len(sizes) - 1)]
    if got:  # the first stage is the first blocks, or with from_end the last ones
        assert (got[0][1] == n) if from_end else (got[0][0] == 0)


@pytest.fixture
def small_stages(monkeypatch):
    """Stages of 16 blocks, then 48, ... (the floor is 16 blocks) on 4 KiB test blocks."""
    monkeypatch.setattr(base, "STAGE_HEAD_BYTES", 16 * BLOCK)
    assert base.stages(60, BLOCK) == [(0, 16), (16, 60)]


def test_a_staged_dump_and_load_round_trip_exactly(small_stages, dev):
    with create_store("UcmDramStore", {"kv_block_size": BLOCK, "max_cache_size": 64 * BLOCK,
                                       "planes": LAYERS}) as store:
        src = kv_cache(blocks=128, device=dev)
        rows = list(range(127, 67, -1))  # 60 rows, descending: the plans must keep each row's pair
        ids = [f"c{i}" for i in range(60)]
        assert store.wait(store.dump_blocks(ids, src, rows)) == OK
        store.commit(ids)
        dst = [torch.zeros_like(t) for t in src]
        dst_rows = [(7 * i) % 128 for i in range(60)]
        task = store.load_blocks(ids, dst, dst_rows)
        assert store.wait(task) == OK
        assert all(len(parts) == 2 for parts in task.planes), "one completion per plane per stage"
        for s, d in zip(src, dst):
            assert torch.equal(d[dst_rows], s[rows])
        assert not store._reading, "every stage's blocks are released once the load is done"


def test_dump_rows_writes_whole_blocks_in_stages(small_stages, dev):
    with create_store("UcmDramStore", {"kv_block_size": BLOCK, "max_cache_size": 64 * BLOCK,
                                       "planes": LAYERS}) as store:
        src = kv_cache(blocks=64, device=dev)
        ids = [f"d{i}" for i in range(60)]
        task = store.dump_rows(ids, src, list(range(60)))
        assert store.wait(task) == OK
        store.commit(ids)
        assert store.lookup(ids) == [True] * 60
        again = store.dump_rows(ids + ["x"] * 70, src, list(range(60)) + [61] * 70)  # stored ones skipped
        assert store.wait(again) == OK
        dst = [torch.zeros_like(t) for t in src]
        assert store.wait(store.load_blocks(ids, dst, list(range(60)))) == OK
        for s, d in zip(src, dst):
            assert torch.equal(d[:60], s[:60])
        with pytest.raises(ValueError, match="same length"):
            store.dump_rows(ids, src, [0])


def test_a_staged_read_leaves_the_chain_evicted_tail_first(small_stages):
    """Stages of a read are planned last blocks first, so the head is touched last: a later
    eviction still takes the chain's tail first, whatever the stage boundaries."""
    with create_store("UcmDramStore", {"kv_block_size": BLOCK, "max_cache_size": 64 * BLOCK,
                                       "planes": LAYERS}) as store:
        src = kv_cache(blocks=128)
        old = [f"o{i}" for i in range(4)]
        chain = [f"c{i}" for i in range(60)]
        for ids, rows in ((old, list(range(4))), (chain, list(range(4, 64)))):
            assert store.wait(store.dump_blocks(ids, src, rows)) == OK
            store.commit(ids)
        dst = [torch.zeros_like(t) for t in src]
        assert store.wait(store.load_blocks(chain, dst, list(range(60)))) == OK  # chain now most recent
        new = [f"n{i}" for i in range(6)]
        assert store.wait(store.dump_blocks(new, src, list(range(64, 70)))) == OK
        store.commit(new)
        assert store.lookup(old) == [False] * 4
        assert store.lookup(chain) == [True] * 58 + [False] * 2, "the tail went, the prefix stays"


def test_a_bad_stage_head_in_the_environment_fails_with_its_name(monkeypatch):
    monkeypatch.setenv("UCM_STAGE_HEAD_MIB", "lots")
    with pytest.raises(ValueError, match="UCM_STAGE_HEAD_MIB"):
        base._stage_head_bytes()
    monkeypatch.setenv("UCM_STAGE_HEAD_MIB", "64")
    assert base._stage_head_bytes() == 64 << 20


@pytest.mark.parametrize("name, default", [("UCM_STAGE_HEAD_MIB", 128), ("UCM_LOAD_PLANES_PER_EVENT", 4)])
def test_a_count_in_the_environment_is_a_positive_whole_number(monkeypatch, name, default):
    monkeypatch.delenv(name, raising=False)
    assert base.env_count(name, default) == default
    for bad in ("lots", "0", "-2", "1.5"):
        monkeypatch.setenv(name, bad)
        with pytest.raises(ValueError, match=f"{name} must be a positive whole number"):
            base.env_count(name, default)
    monkeypatch.setenv(name, " 7 ")
    assert base.env_count(name, default) == 7


@pytest.mark.parametrize("name, default", [("UCM_DEFER_DUMPS", False), ("UCM_BATCH_DMA", True)])
def test_an_on_off_switch_in_the_environment_is_0_or_1(monkeypatch, name, default):
    monkeypatch.delenv(name, raising=False)
    assert base.env_switch(name, default) is default
    monkeypatch.setenv(name, "yes")
    with pytest.raises(ValueError, match=f"{name} must be 0 or 1"):
        base.env_switch(name, default)
    monkeypatch.setenv(name, "0")
    assert base.env_switch(name, default) is False
    monkeypatch.setenv(name, "1")
    assert base.env_switch(name, default) is True
