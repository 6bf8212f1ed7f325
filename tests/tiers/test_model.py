"""Property test: random operation sequences against a plain dict model of the contract."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from ucm.tiers import NOT_FOUND, OK, create_store
from ucm.tiers.disk import DiskTier

BLOCK = 256
FILE = 24 + 2 + BLOCK  # header + id + data of one spill file
IDS = [f"k{i}" for i in range(6)]

ops = st.lists(st.one_of(
    st.tuples(st.just("dump"), st.sampled_from(IDS), st.integers(0, 255), st.booleans()),
    st.tuples(st.just("load"), st.sampled_from(IDS)),
    st.tuples(st.just("lookup"), st.sampled_from(IDS)),
), max_size=40)


def make(kind, tmp_path):
    if kind == "dram":
        return create_store("UcmDramStore", {"kv_block_size": BLOCK, "max_cache_size": 3 * BLOCK}), 3
    if kind == "disk":
        return DiskTier({"kv_block_size": BLOCK, "disk": {"path": str(tmp_path), "max_size": 3 * FILE + 10}}), 3
    return create_store("dram_disk", {"kv_block_size": BLOCK, "max_cache_size": 2 * BLOCK,
                                      "disk": {"path": str(tmp_path), "max_size": 2 * FILE + 10}}), 4


@pytest.mark.parametrize("kind", ["dram", "disk", "chain"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sequence=ops)
def test_random_operations_match_a_dict_model(kind, sequence, tmp_path_factory):
    store, capacity = make(kind, tmp_path_factory.mktemp("s"))
    model: dict[str, int] = {}  # id -> fill byte; a cache may forget, but never lie
    try:
        for op in sequence:
            if op[0] == "dump":
                _, bid, fill, ok = op
                src = torch.full((BLOCK,), fill, dtype=torch.uint8)
                store.wait(store.dump([bid], [0], [src]))
                store.commit([bid], is_success=ok)
                for k in [k for k in model if k != bid]:  # a dump may evict others: forgotten ids may
                    if store.lookup([k]) == [False]:  # come back with other bytes (found by hypothesis)
                        model.pop(k)
                if ok and bid not in model:
                    model[bid] = fill  # a committed id keeps its first bytes
                if store.lookup([bid]) == [False]:
                    model.pop(bid, None)
            elif op[0] == "load":
                _, bid = op
                out = torch.zeros(BLOCK, dtype=torch.uint8)
                code = store.wait(store.load([bid], [0], [out]))
                if code == OK:
                    assert bid in model, "loaded a block that was never committed"
                    assert torch.equal(out, torch.full((BLOCK,), model[bid], dtype=torch.uint8))
                else:
                    assert code == NOT_FOUND
                    model.pop(bid, None)
            else:
                _, bid = op
                (hit,) = store.lookup([bid])
                if hit:
                    assert bid in model
                else:
                    model.pop(bid, None)
            assert sum(store.lookup(IDS)) <= capacity
            for bid in IDS:  # what lookup says is loadable, with the right bytes
                if store.lookup([bid]) == [True]:
                    assert bid in model
    finally:
        store.close()
