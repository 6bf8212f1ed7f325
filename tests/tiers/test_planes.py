"""Batched row copies (dump_blocks/load_blocks) and the plane layout of the slot pools."""
import pytest
import torch

from ucm.tiers import NOT_FOUND, OK, REFUSED, create_store
from ucm.tiers.planes import RowPlan, copier_path, pair_runs, runs, words

LAYERS, ROW = 4, 512  # 4 layers x (K, V) rows of 512 bytes: a 4 KiB block
BLOCK = 2 * LAYERS * ROW


def kv_cache(blocks=32, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(-100, 100, (blocks, ROW // 2), dtype=torch.int16, generator=g).to(device)
            for _ in range(2 * LAYERS)]


@pytest.fixture(params=[1, 2 * LAYERS, LAYERS], ids=["slot-major", "plane-per-piece", "plane-per-layer"])
def pool_store(request):
    with create_store("UcmDramStore", {"kv_block_size": BLOCK, "max_cache_size": 16 * BLOCK,
                                       "planes": request.param}) as store:
        yield store


def test_dump_blocks_then_load_blocks_round_trip(pool_store, dev):
    src = kv_cache(device=dev)
    rows = [5, 2, 9, 31, 0]
    ids = [f"b{r}" for r in rows]
    assert pool_store.wait(pool_store.dump_blocks(ids, src, rows)) == OK
    pool_store.commit(ids)
    dst = [torch.zeros_like(t) for t in src]
    dst_rows = [10, 11, 12, 13, 14]
    task = pool_store.load_blocks(ids, dst, dst_rows)
    assert pool_store.wait(task) == OK
    assert len(task.planes) == 2 * LAYERS
    for s, d in zip(src, dst):
        assert torch.equal(d[dst_rows], s[rows])
        assert not d[:10].any()


def test_new_blocks_get_ascending_slots_after_a_tail_first_eviction(dev):
    """Evicting a chain tail-first frees its slots in descending order; a new request's blocks still
    take them in ascending order, so ascending rows move as one run (one DMA on the GPU)."""
    with create_store("UcmDramStore", {"kv_block_size": BLOCK, "max_cache_size": 8 * BLOCK,
                                       "planes": LAYERS}) as store:
        src = kv_cache(device=dev)
        old = [f"c{i}" for i in range(8)]
        assert store.wait(store.dump_blocks(old, src, list(range(8)))) == OK
        store.commit(old)  # c7 is the least recent now (tail-first)
        new = [f"n{i}" for i in range(4)]
        bw = store.reserve_blocks(new, list(range(10, 14)))
        assert bw.plans[0].pairs == [(4, 10, 4)], "slots 4..7 (freed 7, 6, 5, 4) in order"
        for layer in range(LAYERS):
            store.write_planes(bw, src[2 * layer:2 * layer + 2], offset=2 * layer * ROW)
        assert store.wait(bw.task) == OK
        store.commit(new)
        assert store.lookup(old + new) == [True] * 4 + [False] * 4 + [True] * 4
        dst = [torch.zeros_like(t) for t in src]
        assert store.wait(store.load_blocks(new, dst, [20, 21, 22, 23])) == OK
        for s, d in zip(src, dst):
            assert torch.equal(d[20:24], s[10:14])


def test_new_blocks_take_slots_in_the_order_of_their_rows(dev):
    """Once vLLM's never-used blocks are gone it hands a prompt descending rows (freed tail first):
    the new blocks take ascending slots in row order, so slots and rows still run together, and a
    later load into descending rows again is one run too (a DMA per run on the GPU)."""
    with create_store("UcmDramStore", {"kv_block_size": BLOCK, "max_cache_size": 8 * BLOCK,
                                       "planes": LAYERS}) as store:
        src = kv_cache(device=dev)
        ids = [f"d{i}" for i in range(6)]
        bw = store.reserve_blocks(ids, [20, 19, 18, 17, 16, 15])  # chain order, rows descending
        assert bw.plans[0].pairs == [(0, 15, 6)], "slots 0..5 onto rows 15..20"
        for layer in range(LAYERS):
            store.write_planes(bw, src[2 * layer:2 * layer + 2], offset=2 * layer * ROW)
        assert store.wait(bw.task) == OK
        store.commit(ids)
        dst = [torch.zeros_like(t) for t in src]
        back = [30, 29, 28, 27, 26, 25]
        br = store.open_blocks(ids, back)
        assert len(br.plan.pairs) == 1
        for layer in range(LAYERS):
            store.read_planes(br, dst[2 * layer:2 * layer + 2], offset=2 * layer * ROW, last=layer == LAYERS - 1)
        assert store.wait(br.task) == OK
        for s, d in zip(src, dst):
            assert torch.equal(d[back], s[[20, 19, 18, 17, 16, 15]])


def test_block_api_and_piece_api_agree(pool_store):
    src = kv_cache()
    pool_store.wait(pool_store.dump_blocks(["a"], src, [3]))
    pool_store.commit(["a"])
    out = torch.empty(BLOCK, dtype=torch.uint8)
    assert pool_store.wait(pool_store.load(["a"], [0], [out])) == OK
    assert torch.equal(out, torch.cat([t[3].view(torch.uint8) for t in src]))


def test_many_pieces_of_one_tensor_take_the_grouped_path(pool_store, dev):
    """vLLM-like per-layer pieces for 16 blocks: grouped into one copy per layer, bytes exact."""
    src = kv_cache(device=dev)
    rows = list(range(3, 19))
    ids, offs, pieces = [], [], []
    for r in rows:
        for j, t in enumerate(src):
            ids.append(f"r{r}"), offs.append(j * ROW), pieces.append(t[r])
    assert pool_store.wait(pool_store.dump(ids, offs, pieces)) == OK
    pool_store.commit(ids)
    dst = [torch.zeros_like(t) for t in src]
    outs = [d[r] for r in rows for d in dst]
    assert pool_store.wait(pool_store.load(ids, offs, outs)) == OK
    for s, d in zip(src, dst):
        assert torch.equal(d[rows], s[rows])


def test_absent_blocks_fail_and_others_load(pool_store, dev):
    src = kv_cache(device=dev)
    pool_store.wait(pool_store.dump_blocks(["x"], src, [1]))
    pool_store.commit(["x"])
    dst = [torch.zeros_like(t) for t in src]
    task = pool_store.load_blocks(["x", "nope"], dst, [4, 5])
    assert pool_store.wait(task) == NOT_FOUND and task.failed_ids == {b"nope"}
    assert all(torch.equal(d[4], s[1]) and not d[5].any() for s, d in zip(src, dst))


def test_a_repeated_id_loads_into_each_row_and_counts_once(pool_store, dev):
    src = kv_cache(device=dev)
    pool_store.wait(pool_store.dump_blocks(["a", "b"], src, [1, 2]))
    pool_store.commit(["a", "b"])
    before = pool_store.stats()["loaded_blocks"]
    dst = [torch.zeros_like(t) for t in src]
    task = pool_store.load_blocks(["a", "b", "gone", "a"], dst, [4, 5, 6, 7])
    assert pool_store.wait(task) == NOT_FOUND and task.failed_ids == {b"gone"}
    assert pool_store.stats()["loaded_blocks"] - before == 2, "blocks found, each counted once"
    for s, d in zip(src, dst):
        assert torch.equal(d[4], s[1]) and torch.equal(d[7], s[1]) and torch.equal(d[5], s[2])
        assert not d[6].any()
    assert not pool_store._reading, "every pin of the load released once it is done"


def test_refusal_when_full_of_writes(pool_store):
    src = kv_cache(blocks=20)
    ids = [f"w{i}" for i in range(20)]
    task = pool_store.dump_blocks(ids, src, list(range(20)))
    assert pool_store.wait(task) == REFUSED and len(task.failed_ids) == 4


@pytest.mark.parametrize("bad, msg", [
    (lambda s: (["a"], s + s[:1], [0]), "exceeds kv_block_size"),
    (lambda s: (["a"], s, [99]), "rows must index"),
    (lambda s: (["a", "b"], s, [0]), "same length"),
    (lambda s: ([1], s, [0]), "block_ids"),
])
def test_block_api_bad_input(pool_store, bad, msg):
    with pytest.raises(ValueError, match=msg):
        pool_store.dump_blocks(*bad(kv_cache()))


def test_planes_must_divide_the_block():
    with pytest.raises(ValueError, match="'planes' = 3"):
        create_store("UcmDramStore", {"kv_block_size": BLOCK, "max_cache_size": 4 * BLOCK, "planes": 3})


def test_runs_of_consecutive_slots():
    assert runs([1, 2, 3, 7, 8, 10]) == [(1, 0, 3), (7, 3, 2), (10, 5, 1)]
    assert runs([4]) == [(4, 0, 1)]


def test_pair_runs_need_slots_and_rows_both_consecutive():
    assert pair_runs([1, 2, 3, 4], [10, 11, 12, 13]) == [(1, 10, 4)]
    assert pair_runs([1, 2, 3, 4], [10, 11, 5, 6]) == [(1, 10, 2), (3, 5, 2)]
    assert pair_runs([1, 2, 3], [12, 11, 10]) == [(1, 12, 1), (2, 11, 1), (3, 10, 1)]
    assert pair_runs([], []) == []
    plan = RowPlan([7, 5, 6], [22, 20, 21])  # sorted by slot first
    assert plan.pairs == [(5, 20, 3)] and plan.runs == [(5, 0, 3)]


def test_several_caller_rows_per_stored_block(dev):
    """A stored block of k=4 vLLM blocks: each plane of the block holds 4 caller rows."""
    k = 4
    with create_store("UcmDramStore", {"kv_block_size": k * BLOCK, "max_cache_size": 8 * k * BLOCK,
                                       "planes": 2 * LAYERS}) as store:
        src = kv_cache(device=dev)
        groups = [[7, 3, 20, 1], [0, 1, 2, 3]]
        assert store.wait(store.dump_blocks(["c0", "c1"], src, groups)) == OK
        store.commit(["c0", "c1"])
        dst = [torch.zeros_like(t) for t in src]
        back = [[10, 11, 12, 13], [30, 29, 28, 27]]
        assert store.wait(store.load_blocks(["c0", "c1"], dst, back)) == OK
        for s, d in zip(src, dst):
            for g, b in zip(groups, back):
                assert torch.equal(d[b], s[g])
        with pytest.raises(ValueError, match="same number of rows"):
            store.dump_blocks(["c2", "c3"], src, [[1, 2, 3, 4], [1, 2]])


def test_layer_by_layer_with_offsets(pool_store, dev):
    """A caller may dump and load one layer's planes at a time, at that layer's byte offset."""
    src = kv_cache(device=dev)
    for layer in range(LAYERS):
        planes = src[2 * layer:2 * layer + 2]
        assert pool_store.wait(pool_store.dump_blocks(["L"], planes, [6], offset=2 * layer * ROW)) == OK
    pool_store.commit(["L"])
    dst = [torch.zeros_like(t) for t in src]
    tasks = [pool_store.load_blocks(["L"], dst[2 * l:2 * l + 2], [9], offset=2 * l * ROW) for l in range(LAYERS)]
    assert all(pool_store.wait(t) == OK for t in tasks)
    assert all(torch.equal(d[9], s[6]) for s, d in zip(src, dst))


def test_reservation_refuses_once_and_writes_only_what_it_took(pool_store):
    src = kv_cache(blocks=20)
    ids = [f"w{i}" for i in range(20)]
    bw = pool_store.reserve_blocks(ids, list(range(20)))
    assert len(bw.task.failed) == 4, "16 slots: 4 refused at reservation"
    for layer in range(LAYERS):
        pool_store.write_planes(bw, src[2 * layer:2 * layer + 2], offset=2 * layer * ROW)
    assert pool_store.wait(bw.task) == REFUSED
    pool_store.commit(ids)
    assert sum(pool_store.lookup(ids)) == 16
    dst = [torch.zeros_like(t) for t in src]
    assert pool_store.wait(pool_store.load_blocks(ids[:16], dst, list(range(16)))) == OK
    assert all(torch.equal(d[:16], s[:16]) for s, d in zip(src, dst))
    with pytest.raises(ValueError, match="rows must index"):
        pool_store.write_planes(pool_store.reserve_blocks(["z"], [30]), [t[:10] for t in src[:2]])


def test_row_groups_join_planes_that_tile_a_pool_plane():
    from ucm.tiers.planes import PlaneCopy, row_groups

    pool = torch.zeros((2, 8, 64), dtype=torch.uint8)  # 2 pool planes of 64-byte rows
    def pc(p, col, w):
        return PlaneCopy(torch.zeros((4, w), dtype=torch.uint8), pool[p, :, col:col + w], None,
                         row=pool[p], row_uva=None, col=col)
    k0, v0, k1, v1 = pc(0, 0, 32), pc(0, 32, 32), pc(1, 0, 32), pc(1, 32, 32)
    assert [len(g) for g in row_groups([k0, v0, k1, v1])] == [2, 2]
    assert [len(g) for g in row_groups([k0, k1, v1])] == [1, 2], "k0 alone does not tile plane 0"
    half = pc(1, 0, 16)
    assert [len(g) for g in row_groups([half, pc(1, 16, 16)])] == [1, 1], "16 + 16 of 64 bytes: no"
    assert [len(g) for g in row_groups([PlaneCopy(k0.user, k0.pool, None)])] == [1]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the whole-row DMA path is CUDA-only")
@pytest.mark.parametrize("planes", [1, LAYERS])
def test_whole_row_dma_groups_round_trip_on_cuda(planes, monkeypatch):
    """Enough contiguous slots for the DMA path, with K and V of a layer sharing one pool plane:
    the group path (one DMA of whole rows + a scatter per plane) must move the exact bytes. (Its
    calls are small: SMALL_CALL_BYTES 0 keeps them off the small calls' direct path.)"""
    from ucm.tiers import planes as planes_mod
    monkeypatch.setattr(planes_mod, "SMALL_CALL_BYTES", 0)
    n = 600  # 600 x 1 KiB rows per layer: runs well above MIN_RUN_BYTES
    with create_store("UcmDramStore", {"kv_block_size": BLOCK, "max_cache_size": (n + 8) * BLOCK,
                                       "planes": planes}) as store:
        src = kv_cache(blocks=n + 50, seed=3, device="cuda")
        rows = list(range(50, 50 + n))
        ids = [f"g{r}" for r in rows]
        bw = store.reserve_blocks(ids, rows)
        for layer in range(LAYERS):
            store.write_planes(bw, src[2 * layer:2 * layer + 2], offset=2 * layer * ROW)
        assert store.wait(bw.task) == OK
        store.commit(ids)
        dst = [torch.zeros_like(t) for t in src]
        back = list(reversed(range(n)))
        task = store.load_blocks(ids, dst, back)
        assert store.wait(task) == OK
        for s, d in zip(src, dst):
            assert torch.equal(d[back], s[rows])


def test_open_blocks_reads_layer_by_layer_and_keeps_blocks_until_the_last(pool_store, dev):
    """``open_blocks`` finds and protects the blocks once; each ``read_planes`` copies one layer;
    the blocks stay resident (not evictable) until the read with ``last=True`` is done."""
    src = kv_cache(device=dev)
    rows = [4, 7, 1]
    ids = [f"o{r}" for r in rows]
    assert pool_store.wait(pool_store.dump_blocks(ids, src, rows)) == OK
    pool_store.commit(ids)
    dst = [torch.zeros_like(t) for t in src]
    back = [20, 21, 22]
    br = pool_store.open_blocks(ids + ["missing"], back + [23])
    assert br.task.failed == {b"missing": NOT_FOUND}
    for layer in range(LAYERS):
        assert pool_store._reading.keys() >= {i.encode() for i in ids}, "protected while layers remain"
        parts = pool_store.read_planes(br, dst[2 * layer:2 * layer + 2], offset=2 * layer * ROW,
                                       last=layer == LAYERS - 1)
        assert len(parts) == 2
    assert pool_store.wait(br.task) == NOT_FOUND
    assert not pool_store._reading, "released after the last layer"
    for s, d in zip(src, dst):
        assert torch.equal(d[back], s[rows])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the two-stream DMA path is CUDA-only")
@pytest.mark.parametrize("shuffled,forward", [(False, False), (True, False), (False, True), (True, True)],
                         ids=["slot-runs", "fragmented", "slot-and-row-runs", "fragmented-forward"])
@pytest.mark.parametrize("busy,defer", [(False, False), (True, False), (True, True)],
                         ids=["idle", "busy-forward", "busy-forward-deferred"])
def test_many_layers_through_the_staging_ring_on_cuda(shuffled, forward, busy, defer, monkeypatch):
    """More layers than staging buffers, each plane big enough for the DMA path: DMAs of one layer
    overlap the previous layer's kernel on the other stream; every byte must still land, both ways,
    through reserve/write and open/read as vLLM's connector calls them. Rows read back in order onto
    fresh slots take the direct path (one DMA per run, no staging); reversed or shuffled ones the
    staging ring. ``busy``: the caller's stream still runs a kernel (a forward) when the dumps are
    submitted, so they must wait for it: queued behind it on the caller's thread (the default), or
    (``defer``, ``UCM_DEFER_DUMPS=1``) through the submitter thread. (Its calls are small:
    SMALL_CALL_BYTES 0 keeps them off the small calls' direct path.)"""
    from ucm.tiers import planes as planes_mod
    monkeypatch.setattr(planes_mod, "SMALL_CALL_BYTES", 0)
    monkeypatch.setattr(planes_mod, "DEFER_DUMPS", defer)
    layers, n = 12, 700  # 700 rows x 1 KiB a plane
    block = 2 * layers * ROW
    with create_store("UcmDramStore", {"kv_block_size": block, "max_cache_size": (n + 8) * block,
                                       "planes": layers}) as store:
        if shuffled:
            import random
            random.Random(5).shuffle(store._free)
        g = torch.Generator().manual_seed(9)
        src = [torch.randint(-100, 100, (n + 40, ROW), dtype=torch.int16, generator=g).cuda()
               for _ in range(layers)]  # one packed K+V plane of 2 x 512 bytes per layer, like vLLM 0.26
        rows = list(range(40, 40 + n))
        ids = [f"L{r}" for r in rows]
        bw = store.reserve_blocks(ids, rows)
        rows_dev = torch.tensor(rows, device="cuda")  # indexing by a list would upload and wait for the stream
        if busy:  # a "forward" still running (~0.1 s) that writes the rows last: the dump must copy its bytes
            # the kernels below run once before it: CUDA loads a kernel lazily on its first launch, and
            # that load waits for the whole device, i.e. for the sleep to end (the first busy case
            # on an H200, 2026-11-28, found the stream idle and took the direct path)
            for t in src:
                t.add_(0)
                t.index_select(0, rows_dev)
            torch.cuda.synchronize()
            torch.cuda._sleep(1 << 28)
            for t in src:
                t.add_(1)
        expect = [t.index_select(0, rows_dev) for t in src]  # queued on the caller's stream too
        for layer in range(layers):
            store.write_planes(bw, [src[layer]], offset=layer * 2 * ROW)
        # deferred only where asked: the forward was still running
        assert (store._cuda_dump._submitter is not None) == (busy and defer)
        assert store.wait(bw.task) == OK
        store.commit(ids)
        dst = [torch.zeros_like(t) for t in src]
        back = list(range(n)) if forward else list(reversed(range(n)))
        br = store.open_blocks(ids, back)
        assert (len(br.plan.pairs) == 1) == (forward and not shuffled)
        for layer in range(layers):
            store.read_planes(br, [dst[layer]], offset=layer * 2 * ROW, last=layer == layers - 1)
        assert store.wait(br.task) == OK
        for e, d in zip(expect, dst):
            assert torch.equal(d[back], e)


def test_dump_under_inference_mode_then_load_outside_it(dev):
    """vLLM calls some connector hooks under torch.inference_mode and some outside it, with the same
    KV tensors. Views and staging the pool caches while dumping under it must still take the later
    load's writes outside it (a view made under it is an inference tensor: the CUDA copier's
    index_copy_ into one raised, 2026-11-28, H200, vLLM's cross-layer layout)."""
    big = 700  # rows enough for the CUDA DMA/staging path
    with create_store("UcmDramStore", {"kv_block_size": 2 * ROW, "max_cache_size": (big + 8) * 2 * ROW,
                                       "planes": 1}) as store:
        g = torch.Generator().manual_seed(4)
        kv = torch.randint(-100, 100, (big + 10, ROW), dtype=torch.int16, generator=g).to(dev)
        rows = list(range(5, 5 + big))
        ids = [f"i{r}" for r in rows]
        with torch.inference_mode():
            assert store.wait(store.dump_blocks(ids, [kv], rows)) == OK
        store.commit(ids)
        assert not any(pc.user.is_inference() for views in store._views.values() for pc in views)
        want = kv[rows].clone()
        kv.zero_()
        assert store.wait(store.load_blocks(ids, [kv], rows)) == OK
        assert torch.equal(kv[rows], want)


def test_a_copy_that_raises_on_the_cpu_fails_its_blocks_never_reports_ok(pool_store, monkeypatch):
    """CPU plane copies run on a worker thread: an error there must reach the task (was swallowed:
    the load reported OK over bytes never copied)."""
    from ucm.tiers import pool as pool_module

    src = kv_cache(blocks=4)
    assert pool_store.wait(pool_store.dump_blocks(["c0", "c1"], src, [0, 1])) == 0
    pool_store.commit(["c0", "c1"])

    def broken(*a):
        raise RuntimeError("injected")

    monkeypatch.setattr(pool_module, "copy_planes_cpu", broken)
    out = [torch.zeros_like(t) for t in src]
    task = pool_store.load_blocks(["c0", "c1"], out, [2, 3])
    assert pool_store.wait(task) != 0 and set(task.failed) == {b"c0", b"c1"}
    br = pool_store.open_blocks(["c0"], [2])
    pool_store.read_planes(br, out, last=True)
    assert pool_store.wait(br.task) != 0 and b"c0" in br.task.failed
    bw = pool_store.reserve_blocks(["c2"], [0])
    pool_store.write_planes(bw, src)
    assert pool_store.wait(bw.task) != 0 and b"c2" in bw.task.failed


def test_words_view_bytes_as_int64_only_where_the_layout_allows():
    rows = torch.arange(4 * 48, dtype=torch.uint8).view(4, 48)
    (w,) = words(rows)
    assert w.dtype == torch.int64 and w.shape == (4, 6)
    assert w.data_ptr() == rows.data_ptr()  # a view: writes land in the bytes
    w[1].zero_()
    assert rows[1].eq(0).all() and rows[2].ne(0).any()
    # a column slice at a byte offset, an odd width, or one odd partner: all left as bytes
    for ts in ((rows[:, 3:19],), (rows[:, :12],), (rows, rows[:, 3:51 - 3 - 3])):
        assert all(t.dtype == torch.uint8 for t in words(*ts))
    # an index copy through the words moves the same bytes as one over the bytes
    src = torch.randint(0, 255, (8, 64), dtype=torch.uint8)
    idx = torch.tensor([5, 0, 3])
    a, b = torch.zeros(3, 64, dtype=torch.uint8), torch.zeros(3, 64, dtype=torch.uint8)
    torch.index_select(src, 0, idx, out=a)
    wb, ws = words(b, src)
    torch.index_select(ws, 0, idx, out=wb)
    assert torch.equal(a, b)


def test_the_copier_goes_direct_when_staging_would_not_save_dmas():
    layer = 32 << 10  # 8 blocks of a layer make the 256 KiB a DMA needs
    assert copier_path(RowPlan(list(range(100)), list(range(100))), layer) == "direct"
    twenty = [s for r in range(20) for s in range(100 * r, 100 * r + 10)]  # 20 runs of 10 slots
    # onto consecutive rows: as many DMAs as staging would need, so direct
    assert copier_path(RowPlan(twenty, list(range(200))), layer) == "direct"
    # onto rows that break every 2 blocks (100 pairs for 20 slot runs): staged
    assert copier_path(RowPlan(twenty, [r * 3 + j for r in range(100) for j in range(2)]), layer) == "staged"
    assert copier_path(RowPlan(list(range(0, 200, 2)), list(range(100))), layer) == "uva-kernel"


class _Part:
    def __init__(self, landed):
        self.landed = landed

    def done(self):
        return self.landed

    def wait(self, timeout):
        return self.landed


def test_a_dump_issued_later_is_done_only_once_issued_and_landed():
    """The submitter thread's completion: not done while the thread has not issued the copies, nor
    while they are in flight; a submission that raised is done, and ``wait`` says whether its error
    was recorded by the caller's hook."""
    from concurrent.futures import Future

    from ucm.tiers.planes import _Later

    fut = Future()
    later = _Later(fut, handled=True)
    assert not later.done() and not later.wait(0.01)  # not issued yet
    fut.set_result([_Part(True), _Part(False)])
    assert not later.done() and not later.wait(0.01)  # issued, one plane still copying
    fut = Future()
    fut.set_result([_Part(True)])
    assert _Later(fut, handled=True).done() and _Later(fut, handled=True).wait(0.01)
    fut = Future()
    fut.set_exception(RuntimeError("injected"))
    assert _Later(fut, handled=True).done() and _Later(fut, handled=True).wait(0.01)
    assert not _Later(fut, handled=False).wait(0.01)


class _CountingPart(_Part):
    def __init__(self, landed):
        super().__init__(landed)
        self.calls = 0

    def done(self):
        self.calls += 1
        return self.landed

    def wait(self, timeout):
        self.calls += 1
        return self.landed


def test_a_landed_dump_is_not_polled_again_however_many_planes_share_it():
    """A dump's planes share one completion (and a DMA loop one event set): the task waits it once,
    the completion asks each distinct part once, and once landed it asks nothing (the profile's 784
    event queries a stage held the GIL the submitter thread needed)."""
    from concurrent.futures import Future

    from ucm.tiers.base import Task
    from ucm.tiers.planes import _Later

    part = _CountingPart(True)
    fut = Future()
    fut.set_result([part] * 28)
    later = _Later(fut, handled=True)
    task = Task("dump")
    for _ in range(28):
        task.add(later)
    assert task.wait(1.0) and part.calls == 1
    assert later.done() and later.wait(1.0) and task.done() and part.calls == 1
    shared = _CountingPart(True)  # a DMA loop's events, one completion for all of its planes
    task = Task("dump")
    for _ in range(28):
        task.add(shared)
    assert task.wait(1.0) and shared.calls == 1
    pending = _CountingPart(False)
    fut = Future()
    fut.set_result([pending] * 3)
    later = _Later(fut, handled=True)
    assert not later.wait(0.01) and not later.done()  # not landed: asked again each time
    pending.landed = True
    assert later.done() and later.wait(0.01)


def test_landed_copy_events_are_not_queried_again():
    from ucm.tiers.planes import _Events

    class Ev:
        queries = 0

        def query(self):
            Ev.queries += 1
            return True

    evs = _Events([Ev(), Ev()])
    assert evs.wait(1.0) and evs.wait(1.0) and evs.done() and Ev.queries == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the UVA kernel and the batched DMAs are CUDA-only")
@pytest.mark.parametrize("small_direct", [True, False], ids=["small-call-direct", "uva-kernel"])
def test_a_few_scattered_blocks_round_trip_on_cuda(small_direct, monkeypatch):
    """A decode step's dump: a few blocks on scattered rows and slots, every layer in one call, then
    loaded back layer by layer onto other scattered rows. Small calls go direct where the driver batches
    DMAs (SMALL_CALL_BYTES), else through one UVA kernel a plane: the bytes are exact either way."""
    from ucm.tiers import batch_dma
    from ucm.tiers import planes as planes_mod
    if small_direct and not batch_dma.available():
        pytest.skip(f"no batched DMAs here: {batch_dma._missing}")
    if not small_direct:
        monkeypatch.setattr(planes_mod, "SMALL_CALL_BYTES", 0)
    layers = 6
    block = 2 * layers * ROW
    with create_store("UcmDramStore", {"kv_block_size": block, "max_cache_size": 64 * block,
                                       "planes": layers}) as store:
        import random
        random.Random(3).shuffle(store._free)
        g = torch.Generator().manual_seed(11)
        src = [torch.randint(-100, 100, (80, ROW), dtype=torch.int16, generator=g).cuda() for _ in range(layers)]
        rows, back = [61, 7, 33], [5, 70, 18]
        ids = [f"s{r}" for r in rows]
        plan_path = planes_mod.copier_path(planes_mod.RowPlan([0, 9, 4], rows), 2 * ROW, batch_dma.available())
        assert plan_path == ("direct" if small_direct else "uva-kernel")
        assert store.wait(store.dump_rows(ids, src, rows)) == OK
        store.commit(ids)
        dst = [torch.zeros_like(t) for t in src]
        br = store.open_blocks(ids, back)
        for layer in range(layers):
            store.read_planes(br, [dst[layer]], offset=layer * 2 * ROW, last=layer == layers - 1)
        assert store.wait(br.task) == OK
        for s_, d in zip(src, dst):
            assert torch.equal(d[back], s_[rows])
        whole = [torch.zeros_like(t) for t in src]
        task = store.load_blocks(ids, whole, back)  # read at once: its UVA planes share one completion
        assert store.wait(task) == OK
        for s_, d in zip(src, whole):
            assert torch.equal(d[back], s_[rows])
        if not small_direct:
            assert len({id(parts[-1]) for parts in task.planes}) == 1
