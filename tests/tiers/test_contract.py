"""The store contract, the same for every tier and the chain."""
import threading

import pytest
import torch

from ucm.tiers import NOT_FOUND, OK, REFUSED
from tests.tiers.conftest import BLOCK, get, put, rand_block


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float16, torch.bfloat16, torch.float32, torch.int64])
def test_round_trip_is_byte_exact(store, dtype, dev):
    n = BLOCK // torch.tensor([], dtype=dtype).element_size()
    src = rand_block().view(dtype).clone().to(dev)
    assert src.numel() == n
    assert store.wait(store.dump(["blk"], [0], [src])) == OK
    store.commit(["blk"])
    dst = torch.empty_like(src)
    assert store.wait(store.load(["blk"], [0], [dst])) == OK
    assert torch.equal(dst.view(torch.uint8), src.view(torch.uint8))


def test_pieces_at_offsets_round_trip(store, dev):
    """One block written as 4 pieces (like per-layer K/V), read back in other pieces."""
    whole = rand_block(seed=7).to(dev)
    q = BLOCK // 4
    pieces = [whole[i * q:(i + 1) * q].clone().view(torch.float16) for i in range(4)]
    assert store.wait(store.dump(["b"] * 4, [i * q for i in range(4)], pieces)) == OK
    store.commit(["b"])
    halves = [torch.empty(BLOCK // 2, dtype=torch.uint8, device=dev) for _ in range(2)]
    assert store.wait(store.load(["b", "b"], [0, BLOCK // 2], halves)) == OK
    assert torch.equal(torch.cat(halves), whole)


def test_many_blocks_in_one_call(store):
    ids = [f"id{i}" for i in range(4)]
    data = put(store, ids)
    outs = [torch.empty(BLOCK, dtype=torch.uint8) for _ in ids]
    assert store.wait(store.load(ids, [0] * 4, outs)) == OK
    for i, out in zip(ids, outs):
        assert torch.equal(out, data[i])


def test_lookup_needs_commit(store):
    src = rand_block()
    assert store.lookup(["x"]) == [False]
    assert store.wait(store.dump(["x"], [0], [src])) == OK
    assert store.lookup(["x"]) == [False], "dumped but uncommitted blocks are invisible"
    code, _ = get(store, "x")
    assert code == NOT_FOUND, "uncommitted blocks never load"
    store.commit(["x"])
    assert store.lookup(["x", "y"]) == [True, False]


def test_commit_failure_drops_the_block(store):
    store.wait(store.dump(["x"], [0], [rand_block()]))
    store.commit(["x"], is_success=False)
    assert store.lookup(["x"]) == [False]
    assert get(store, "x")[0] == NOT_FOUND
    put(store, ["x"])  # the id can be dumped again
    assert store.lookup(["x"]) == [True]


def test_commit_of_unknown_ids_is_harmless(store):
    store.commit(["never-dumped"])
    assert store.lookup(["never-dumped"]) == [False]


def test_str_and_bytes_ids_name_the_same_block(store):
    data = put(store, ["abc"])
    assert store.lookup([b"abc"]) == [True]
    code, out = get(store, b"abc")
    assert code == OK and torch.equal(out, data["abc"])


def test_load_of_absent_block_fails_through_wait(store):
    data = put(store, ["here"])
    outs = [torch.zeros(BLOCK, dtype=torch.uint8) for _ in range(2)]
    task = store.load(["here", "gone"], [0, 0], outs)
    assert store.wait(task) == NOT_FOUND
    assert task.failed_ids == {b"gone"}
    assert torch.equal(outs[0], data["here"]), "the present block still loads"


def test_redump_of_committed_block_is_skipped(store):
    data = put(store, ["k"])
    assert store.wait(store.dump(["k"], [0], [rand_block(seed=99)])) == OK
    store.commit(["k"])
    assert torch.equal(get(store, "k")[1], data["k"]), "ids are content hashes: first bytes stay"


def test_check_reports_done(store):
    put(store, ["c"])
    task = store.load(["c"], [0], [torch.empty(BLOCK, dtype=torch.uint8)])
    store.wait(task)
    assert store.check(task) is True


def test_concurrent_dumps_and_loads_from_threads(store):
    errors = []

    def worker(t: int):
        try:
            for r in range(10):
                bid = f"t{t}-{r % 3}"
                src = rand_block(seed=1000 * t + r % 3)
                store.wait(store.dump([bid], [0], [src]))
                store.commit([bid])
                out = torch.empty(BLOCK, dtype=torch.uint8)
                code = store.wait(store.load([bid], [0], [out]))
                if code == OK and not torch.equal(out, src):
                    errors.append(f"wrong bytes for {bid}")
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(repr(exc))

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert not errors


class TestBadInput:
    def test_offset_plus_bytes_beyond_block(self, store):
        with pytest.raises(ValueError, match="offset\\[0\\].*exceeds kv_block_size"):
            store.dump(["a"], [BLOCK - 10], [rand_block(100)])

    def test_tensor_larger_than_block(self, store):
        with pytest.raises(ValueError, match="exceeds kv_block_size"):
            store.load(["a"], [0], [torch.empty(BLOCK + 1, dtype=torch.uint8)])

    def test_non_contiguous_tensor(self, store):
        t = torch.zeros(64, 64, dtype=torch.uint8).t()
        with pytest.raises(ValueError, match="src_tensor\\[0\\] is not contiguous"):
            store.dump(["a"], [0], [t])

    @pytest.mark.parametrize("bad", [1, None, 3.5, ("a",)])
    def test_malformed_ids(self, store, bad):
        with pytest.raises(ValueError, match="block_ids\\[0\\]"):
            store.dump([bad], [0], [rand_block()])
        with pytest.raises(ValueError, match="block_ids\\[1\\]"):  # after a good str id: still named
            store.dump(["a", bad], [0, 0], [rand_block(), rand_block()])
        with pytest.raises(ValueError, match="block_ids"):
            store.lookup([bad])

    def test_lists_of_unequal_length(self, store):
        with pytest.raises(ValueError, match="same length"):
            store.dump(["a", "b"], [0], [rand_block()])

    def test_negative_offset(self, store):
        with pytest.raises(ValueError, match="offset\\[0\\]"):
            store.dump(["a"], [-1], [rand_block(10)])

    def test_not_a_tensor(self, store):
        with pytest.raises(ValueError, match="dst_tensor\\[0\\] must be a torch.Tensor"):
            store.load(["a"], [0], [b"bytes"])


def test_block_api_on_every_store(store, dev):
    """dump_blocks/load_blocks: native on slot pools, through pieces elsewhere; same bytes."""
    planes = [torch.randint(0, 256, (6, BLOCK // 4), dtype=torch.uint8, device=dev) for _ in range(4)]
    assert store.wait(store.dump_blocks(["p", "q"], planes, [1, 4])) == OK
    store.commit(["p", "q"])
    out = [torch.zeros_like(t) for t in planes]
    task = store.load_blocks(["q", "p"], out, [0, 5])
    assert store.wait(task) == OK and len(task.planes) == 4
    for src, dst in zip(planes, out):
        assert torch.equal(dst[0], src[4]) and torch.equal(dst[5], src[1])


def test_block_api_at_an_offset_on_every_store(store):
    planes = [torch.randint(0, 256, (3, BLOCK // 4), dtype=torch.uint8) for _ in range(2)]
    store.wait(store.dump_blocks(["h"], planes, [2], offset=BLOCK // 2))
    store.wait(store.dump_blocks(["h"], planes, [0], offset=0))
    store.commit(["h"])
    code, out = get(store, "h")
    assert code == OK and torch.equal(out, torch.cat([planes[0][0], planes[1][0], planes[0][2], planes[1][2]]))


def test_layer_by_layer_dump_after_one_reservation(store, dev):
    """reserve_blocks once, then write_planes per layer (the vLLM worker's dump path)."""
    layers = [[torch.randint(0, 256, (5, BLOCK // 4), dtype=torch.uint8, device=dev) for _ in range(2)]
              for _ in range(2)]
    bw = store.reserve_blocks(["r1", "r2"], [3, 1])
    for i, planes in enumerate(layers):
        store.write_planes(bw, planes, offset=i * BLOCK // 2)
    assert store.wait(bw.task) == OK
    store.commit(["r1", "r2"])
    for bid, row in (("r1", 3), ("r2", 1)):
        code, out = get(store, bid)
        expect = torch.cat([p[row].cpu() for planes in layers for p in planes])
        assert code == OK and torch.equal(out, expect)


def test_inference_tensors_can_be_loaded_into(store):
    """vLLM allocates its KV cache under torch.inference_mode: loads must still write into it."""
    data = put(store, ["inf"])
    with torch.inference_mode():  # vLLM's hooks run inside inference mode, the copy threads do not
        cache = torch.zeros(2, BLOCK, dtype=torch.uint8)
        task = store.load(["inf"], [0], [cache[1]])
    assert cache.is_inference()
    assert store.wait(task) == OK
    assert torch.equal(cache[1], data["inf"])
