"""Batched DMAs (ucm/tiers/batch_dma.py): which bytes go where, checked on the CPU through a stand-in
for the driver call that performs each copy; the real driver call on CUDA."""
import ctypes

import numpy as np
import pytest
import torch

from ucm.tiers import OK, batch_dma, create_store


def _memmove_entry(calls):
    """A stand-in for cuMemcpyBatchAsync that copies at once, reading the same arrays the driver would."""
    def entry(dsts, srcs, sizes, count, attrs, first, num_attrs, fail, stream):
        arr = ctypes.c_int64 * count
        d, s, n = arr.from_address(dsts), arr.from_address(srcs), arr.from_address(sizes)
        order = batch_dma._Attributes.from_address(attrs).srcAccessOrder
        calls.append((count, order, stream, ctypes.c_size_t.from_address(first).value, num_attrs))
        for i in range(count):
            ctypes.memmove(d[i], s[i], n[i])
        return 0
    return entry


def _planes(rows, width, n_planes, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 255, (rows, width), dtype=torch.uint8, generator=g) for _ in range(n_planes)]


def test_runs_of_rows_land_where_the_descriptors_say_in_every_plane():
    users, pools = _planes(40, 24, 3, seed=1), [torch.zeros(30, 24, dtype=torch.uint8) for _ in range(3)]
    runs = [(2, 10, 4), (20, 0, 1), (7, 30, 3)]  # (pool row, user row, rows)
    slots, rows, counts = zip(*runs)
    dsts, srcs, sizes = batch_dma.descriptors(pools, users, slots, rows, counts)
    assert len(dsts) == len(srcs) == len(sizes) == 9  # planes x runs, plane by plane
    for j in range(3):  # one plane (built from lists, not NumPy): that plane's part of the three
        one = batch_dma.descriptors([pools[j]], [users[j]], slots, rows, counts)
        assert [t.tolist() for t in one] == [t[3 * j:3 * j + 3].tolist() for t in (dsts, srcs, sizes)]
    assert sizes.tolist() == [96, 24, 72] * 3
    calls = []
    batch_dma.copy(dsts, srcs, sizes, stream_handle=1234, entry=_memmove_entry(calls))
    assert calls == [(9, batch_dma.SRC_IN_STREAM_ORDER, 1234, 0, 1)]  # one call, one attribute set
    for u, p in zip(users, pools):
        for slot, row, n in runs:
            assert torch.equal(p[slot:slot + n], u[row:row + n])
        untouched = [r for r in range(30) if not any(s <= r < s + n for s, _, n in runs)]
        assert p[untouched].eq(0).all()
    # and back, one plane at a time (a load's planes land one by one): slices of the descriptors
    back = [torch.zeros_like(u) for u in users]
    dsts, srcs, sizes = batch_dma.descriptors(back, pools, rows, slots, counts)
    for j in range(3):
        batch_dma.copy(dsts[3 * j:3 * j + 3], srcs[3 * j:3 * j + 3], sizes[3 * j:3 * j + 3], 0,
                       entry=_memmove_entry(calls))
        for slot, row, n in runs:
            assert torch.equal(back[j][row:row + n], users[j][row:row + n])
    # the same by descriptor range, no slicing (what the copier does per plane)
    again = [torch.zeros_like(u) for u in users]
    dsts, srcs, sizes = batch_dma.descriptors(again, pools, rows, slots, counts)
    calls.clear()
    done = set()
    for j in (2, 0, 1):
        batch_dma.copy(dsts, srcs, sizes, 0, entry=_memmove_entry(calls), lo=3 * j, hi=3 * j + 3)
        done.add(j)
        for slot, row, n in runs:
            assert torch.equal(again[j][row:row + n], users[j][row:row + n])
        assert all(again[i].eq(0).all() for i in range(3) if i not in done)  # only plane j's range moved
    assert [c[0] for c in calls] == [3, 3, 3]


def test_plane_views_keep_their_dma_addresses_and_give_the_same_descriptors():
    """A PlaneCopy keeps (row bytes, pool address, caller address) from when it is made (the pool keeps
    its views across steps): the descriptors built from them equal those made from scratch, in both
    directions, with no plane checked again; a plane whose rows are not back to back keeps None."""
    from ucm.tiers.planes import PlaneCopy

    users, pools = _planes(40, 24, 3, seed=2), [torch.zeros(30, 24, dtype=torch.uint8) for _ in range(3)]
    runs = [(2, 10, 4), (20, 0, 1)]
    slots, rows, counts = zip(*runs)
    views = [PlaneCopy(u, p, None) for u, p in zip(users, pools)]
    assert [v.dma_addrs for v in views] == [(24, p.data_ptr(), u.data_ptr()) for u, p in zip(users, pools)]
    cols = np.array([v.dma_addrs for v in views], dtype=np.int64).T[:, :, None]
    checked = []
    real = batch_dma.plane_bases
    try:
        batch_dma.plane_bases = lambda d, s: checked.append(1) or real(d, s)
        got = batch_dma.descriptors(pools, users, slots, rows, counts, bases=(cols[0], cols[1], cols[2]))
        back = batch_dma.descriptors(users, pools, rows, slots, counts, bases=(cols[0], cols[2], cols[1]))
        assert not checked
    finally:
        batch_dma.plane_bases = real
    want = batch_dma.descriptors(pools, users, slots, rows, counts)
    assert all(torch.equal(a, b) for a, b in zip(want, got))
    want_back = batch_dma.descriptors(users, pools, rows, slots, counts)
    assert all(torch.equal(a, b) for a, b in zip(want_back, back))
    strided = torch.zeros(30, 48, dtype=torch.uint8)[:, :24]  # rows not back to back
    assert PlaneCopy(users[0], strided, None).dma_addrs is None


def test_views_a_batch_cannot_take_are_refused():
    a, b = torch.zeros(8, 16, dtype=torch.uint8), torch.zeros(8, 32, dtype=torch.uint8)
    with pytest.raises(ValueError, match="same width"):
        batch_dma.descriptors([a], [b], [0], [0], [1])
    strided = torch.zeros(8, 32, dtype=torch.uint8)[:, :16]  # rows not back to back
    with pytest.raises(ValueError, match="contiguous rows"):
        batch_dma.descriptors([strided], [a], [0], [0], [2])
    d, s, n = batch_dma.descriptors([a], [a], [0], [1], [1])
    with pytest.raises(ValueError, match="one entry per copy"):
        batch_dma.copy(d, s[:0], n, 0, entry=lambda *x: 0)
    with pytest.raises(ValueError, match="0 <= lo <= hi"):
        batch_dma.copy(d, s, n, 0, entry=lambda *x: 0, lo=1, hi=len(d) + 1)
    with pytest.raises(RuntimeError, match="CUresult 1 at copy 0"):
        batch_dma.copy(d, s, n, 0, entry=lambda *x: 1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the driver's batched DMAs are CUDA-only")
@pytest.mark.parametrize("batched", [True, False], ids=["batched", "run-by-run"])
@pytest.mark.parametrize("forward", [True, False], ids=["direct-load", "staged-load"])
def test_dumps_and_loads_through_the_driver_batch_move_exact_bytes(monkeypatch, forward, batched):
    """The pool's direct path with UCM_BATCH_DMA on (the real cuMemcpyBatchAsync) and off (one
    PyTorch copy per run): dumped rows and loaded rows (layer by layer) equal the source."""
    from ucm.tiers import planes as P

    monkeypatch.setattr(batch_dma, "ENABLED", batched)
    monkeypatch.setattr(batch_dma, "_missing", None)
    monkeypatch.setattr(P, "SMALL_CALL_BYTES", 0)  # these calls are small: keep them on the paths named
    assert batch_dma.available() == batched, batch_dma._missing
    layers, n, row = 6, 300, 1024
    block = layers * row
    with create_store("UcmDramStore", {"kv_block_size": block, "max_cache_size": (n + 8) * block,
                                       "planes": layers}) as store:
        g = torch.Generator().manual_seed(4)
        src = [torch.randint(-100, 100, (n + 20, row // 2), dtype=torch.int16, generator=g).cuda()
               for _ in range(layers)]
        rows = list(range(20, 20 + n))
        ids = [f"b{r}" for r in rows]
        assert store.wait(store.dump_rows(ids, src, rows)) == OK
        store.commit(ids)
        dst = [torch.zeros_like(t) for t in src]
        back = list(range(n)) if forward else list(reversed(range(n)))
        br = store.open_blocks(ids, back)
        for layer in range(layers):
            store.read_planes(br, [dst[layer]], offset=layer * row, last=layer == layers - 1)
        assert store.wait(br.task) == OK
        for s, d in zip(src, dst):
            assert torch.equal(d[back], s[rows])


def _stand_in_copier(monkeypatch, batched: bool):
    """A CudaPlaneCopier on the CPU: streams, events and the driver's batch call replaced by stand-ins
    (the batch call copies at once and is logged in ``calls``)."""
    import contextlib
    from types import SimpleNamespace

    from ucm.tiers import planes as P

    calls = []
    monkeypatch.setattr(batch_dma, "ENABLED", batched)
    monkeypatch.setattr(batch_dma, "_missing", None)
    monkeypatch.setattr(batch_dma, "_entry", _memmove_entry(calls))
    # stream and device contexts are logged: the batched call names its stream, so it only sets the device
    monkeypatch.setattr(P.torch.cuda, "stream", lambda s: calls.append(("stream context", s)) or contextlib.nullcontext())
    monkeypatch.setattr(P.torch.cuda, "device", lambda i: calls.append(("device", i)) or contextlib.nullcontext())
    monkeypatch.setattr(P, "_record", lambda stream: "event")
    copier = P.CudaPlaneCopier(torch.device("cuda", 3), streams=(SimpleNamespace(cuda_stream=7, wait_event=lambda e: None),
                                                             SimpleNamespace(wait_event=lambda e: None)))
    return copier, calls


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "run-by-run"])
def test_the_copiers_direct_path_moves_every_run_of_every_plane(monkeypatch, batched):
    """CudaPlaneCopier._direct (dumps: one completion for all planes; loads: one per group of
    LOAD_PLANES_PER_EVENT planes) on CPU tensors, with stand-ins for the stream, the event and the
    driver's batch call: the bytes land where the plan says, batched or run by run, and a batched load
    issues one command per group."""
    from ucm.tiers import planes as P

    copier, calls = _stand_in_copier(monkeypatch, batched)
    users = _planes(40, 16, 3, seed=2)
    pools = [torch.zeros(50, 16, dtype=torch.uint8) for _ in range(3)]
    planes = [P.PlaneCopy(u, p, None) for u, p in zip(users, pools)]
    plan = P.RowPlan([3, 4, 5, 20, 21, 30], [10, 11, 12, 0, 1, 39])
    waited = []
    done = copier._direct(planes, plan, True, waited.append)
    assert waited == [copier.copy_stream] and len(done) == 3 and len({id(d) for d in done}) == 1
    for u, p in zip(users, pools):
        assert torch.equal(p[[3, 4, 5, 20, 21, 30]], u[[10, 11, 12, 0, 1, 39]])
    assert calls == ([("device", 3), (3 * 3, batch_dma.SRC_IN_STREAM_ORDER, 7, 0, 1)] if batched  # 3 runs x 3 planes
                     else [("stream context", copier.copy_stream)])
    monkeypatch.setattr(P, "LOAD_PLANES_PER_EVENT", 2)
    back = [torch.zeros_like(u) for u in users]
    calls.clear()
    done = copier._direct([P.PlaneCopy(b, p, None) for b, p in zip(back, pools)], plan, False, waited.append)
    # a load's planes land a group at a time: planes 0 and 1 share a completion, plane 2 has its own
    assert len(done) == 3 and done[0] is done[1] and done[2] is not done[0]
    for b, u in zip(back, users):
        assert torch.equal(b[[10, 11, 12, 0, 1, 39]], u[[10, 11, 12, 0, 1, 39]])
    assert [c[0] for c in calls] == (["device", 2 * 3, 3] if batched else ["stream context"])  # a command a group


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "run-by-run"])
def test_the_copiers_staging_dmas_move_every_slot_run(monkeypatch, batched):
    """CudaPlaneCopier._dma_out / _dma_in (the staged path's DMAs between a staging buffer and the
    pool's slot runs, ``RowPlan.run_cols``) on CPU tensors with stand-ins for the streams, events,
    ring and driver: staging row i goes to / comes from pool row ``plan.slots[i]``, one command each."""
    from types import SimpleNamespace

    from ucm.tiers import planes as P

    copier, calls = _stand_in_copier(monkeypatch, batched)
    plan = P.RowPlan([30, 3, 20, 4, 5, 21], [0, 1, 2, 3, 4, 5])  # sorted: slots 3 4 5 | 20 21 | 30
    assert plan.run_cols == ([3, 20, 30], [0, 3, 5], [3, 2, 1])
    staging = _planes(6, 16, 1, seed=3)[0]
    pool = torch.zeros(40, 16, dtype=torch.uint8)
    ring = SimpleNamespace(free=[None, None], take=lambda rows, width, producer: (0, torch.zeros(rows, width,
                                                                                              dtype=torch.uint8)))
    landed = copier._dma_out(ring, 1, [staging], [pool], plan.run_cols)
    assert torch.equal(pool[plan.slots], staging) and ring.free[1] == landed.events[0]
    assert [c[0] for c in calls] == (["device", 3] if batched else ["stream context"])  # one command, 3 slot runs
    calls.clear()
    b, (back,) = copier._dma_in(ring, 6, 16, [pool], plan.run_cols)
    assert torch.equal(back, staging)
    assert [c[0] for c in calls] == (["device", 3] if batched else ["stream context"])


def test_a_small_call_goes_direct_in_one_command_where_the_driver_batches(monkeypatch):
    """A dump of a few scattered blocks (a decode step's) through CudaPlaneCopier._submit: with the
    driver's batch call, one command for every plane and no kernels; a call above SMALL_CALL_BYTES, or
    without the batch call, keeps the UVA-kernel path (stood in for here: it must not be reached)."""
    from ucm.tiers import planes as P

    copier, calls = _stand_in_copier(monkeypatch, True)
    for staged in ("_dump_planes", "_dump_uva"):
        monkeypatch.setattr(copier, staged, lambda *a: pytest.fail("small call took the kernel path"))
    users = _planes(40, 64, 4, seed=5)
    pools = [torch.zeros(50, 64, dtype=torch.uint8) for _ in range(4)]
    planes = [P.PlaneCopy(u, p, p) for u, p in zip(users, pools)]  # pool_uva set: DMA-able planes
    plan = P.RowPlan([7, 31, 2], [30, 4, 17])  # three blocks, neither slots nor rows consecutive
    assert P.copier_path(plan, 64) == "uva-kernel" and P.copier_path(plan, 64, batched=True) == "direct"
    done = copier._submit(planes, plan, True, lambda stream: None)
    assert len(done) == 4 and calls == [("device", 3), (3 * 4, batch_dma.SRC_IN_STREAM_ORDER, 7, 0, 1)]
    for u, p in zip(users, pools):
        assert torch.equal(p[[7, 31, 2]], u[[30, 4, 17]])
    monkeypatch.setattr(P, "SMALL_CALL_BYTES", 3 * 64 * 4 - 1)  # one byte short: not small any more
    assert not P.takes_direct(plan, [64] * 4, batched=True)
    monkeypatch.setattr(batch_dma, "ENABLED", False)
    assert not P.takes_direct(P.RowPlan([7], [30]), [64], batch_dma.available())


def test_a_whole_load_shares_one_completion_per_stage(monkeypatch):
    """A load of every plane at once (``whole``: load_blocks, e.g. a 100 % hit's upfront load) issues one
    command for all its planes (WHOLE_LOAD_PLANES_PER_EVENT), a layer-wise read one per
    LOAD_PLANES_PER_EVENT planes; the bytes land either way."""
    from ucm.tiers import planes as P

    copier, calls = _stand_in_copier(monkeypatch, True)
    users = _planes(40, 16, 6, seed=4)
    pools = [torch.zeros(50, 16, dtype=torch.uint8) for _ in range(6)]
    plan = P.RowPlan([3, 4, 5, 20], [10, 11, 12, 0])
    for whole, commands in ((True, ["device", 6 * 2]), (False, ["device", 4 * 2, 2 * 2])):
        monkeypatch.setattr(P, "LOAD_PLANES_PER_EVENT", 4)
        back = [torch.zeros_like(u) for u in users]
        calls.clear()
        done = copier._direct([P.PlaneCopy(b, p, None) for b, p in zip(back, pools)], plan, False, lambda s: None,
                              whole)
        assert [c[0] for c in calls] == commands  # descriptors a command: planes x 2 pairs
        assert len({id(d) for d in done}) == len(commands) - 1  # a completion a command
        for b, p in zip(back, pools):
            assert torch.equal(b[[10, 11, 12, 0]], p[[3, 4, 5, 20]])


def test_load_blocks_asks_for_a_whole_load_and_read_planes_does_not(monkeypatch):
    """The pool tells the copier which loads are read all at once (load_blocks) and which layer by
    layer (open_blocks + read_planes), so only the first share completions across all planes."""
    with create_store("UcmDramStore", {"kv_block_size": 2 * 64, "max_cache_size": 16 * 2 * 64, "planes": 2}) as store:
        src = _planes(8, 64, 2, seed=6)
        ids = [b"w0", b"w1"]
        assert store.wait(store.dump_blocks(ids, src, [1, 5])) == OK
        store.commit(ids)
        seen, real = [], store._submit_planes
        monkeypatch.setattr(store, "_submit_planes", lambda views, plan, to_pool, task, keys, whole=False: (
            seen.append(whole) or real(views, plan, to_pool, task, keys, whole)))
        dst = [torch.zeros_like(t) for t in src]
        assert store.wait(store.load_blocks(ids, dst, [2, 3])) == OK and seen == [True]
        seen.clear()
        br = store.open_blocks(ids, [6, 7])
        store.read_planes(br, dst, last=True)
        assert store.wait(br.task) == OK and seen == [False]
        assert all(torch.equal(d[[2, 3]], s[[1, 5]]) and torch.equal(d[[6, 7]], s[[1, 5]]) for d, s in zip(dst, src))


def test_the_small_call_limit_comes_from_the_environment():
    """``UCM_SMALL_CALL_BYTES`` (A/B runs: a huge value sends every call direct) is read at import; a bad
    value stops the import with the variable's name."""
    import os
    import subprocess
    import sys

    def small_call_bytes(value: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", "from ucm.tiers import planes; print(planes.SMALL_CALL_BYTES)"],
                              env=dict(os.environ, UCM_SMALL_CALL_BYTES=value), capture_output=True, text=True)

    assert small_call_bytes("1099511627776").stdout.strip() == "1099511627776"
    bad = small_call_bytes("4MiB")
    assert bad.returncode != 0 and "UCM_SMALL_CALL_BYTES must be a positive whole number" in bad.stderr


def _staged_copier(monkeypatch, batched: bool, stage_planes: int):
    """A CudaPlaneCopier on the CPU device whose calls take the staged path (scattered rows, DMA'd however
    short), with stand-ins for the streams, events and the driver's batch call (which copies at once and
    is logged in ``calls``)."""
    import contextlib
    from types import SimpleNamespace

    from ucm.tiers import planes as P

    calls = []
    monkeypatch.setattr(batch_dma, "ENABLED", batched)
    monkeypatch.setattr(batch_dma, "_missing", None)
    monkeypatch.setattr(batch_dma, "_entry", _memmove_entry(calls))
    monkeypatch.setattr(P.torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(P.torch.cuda, "device", lambda i: contextlib.nullcontext())
    monkeypatch.setattr(P, "_record", lambda stream: "event")
    monkeypatch.setattr(torch.Tensor, "record_stream", lambda self, s: None)
    monkeypatch.setattr(P, "SMALL_CALL_BYTES", 0)
    monkeypatch.setattr(P, "MIN_RUN_BYTES", 1)  # small rows, still DMA'd (not the UVA kernel)
    monkeypatch.setattr(P, "MAX_DIRECT_RUNS", 0)  # staged, not a DMA per row
    monkeypatch.setattr(P, "STAGE_PLANES", stage_planes)
    stream = SimpleNamespace(cuda_stream=7, wait_event=lambda e: None, wait_stream=lambda s: None)
    return P.CudaPlaneCopier(torch.device("cpu"), streams=(stream, stream)), calls


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "run-by-run"])
@pytest.mark.parametrize("stage_planes", [1, 3])
def test_the_staged_path_moves_scattered_rows_of_every_plane_exactly(monkeypatch, batched, stage_planes):
    """CudaPlaneCopier._submit on scattered caller rows (the staged path: DMAs by slot run through a
    staging buffer, a gather or scatter kernel a plane), on the CPU with stand-ins for the streams,
    events and driver: a dump then a load move every row exactly, with STAGE_PLANES planes through
    one staging buffer in one DMA command (1: a command a plane)."""
    from ucm.tiers import planes as P

    copier, calls = _staged_copier(monkeypatch, batched, stage_planes)
    n_planes, width = 7, 64
    users = _planes(60, width, n_planes, seed=8)
    pools = [torch.zeros(80, width, dtype=torch.uint8) for _ in range(n_planes)]
    planes = [P.PlaneCopy(u, p, p) for u, p in zip(users, pools)]
    rows = [51, 3, 17, 40, 8, 33, 22, 9, 45, 1, 30, 12]  # scattered on both sides
    slots = [70, 2, 3, 4, 41, 42, 15, 60, 61, 62, 25, 77]
    plan = P.RowPlan(slots, rows)
    assert not P.takes_direct(plan, [width] * n_planes, batch_dma.available())
    done = copier._submit(planes, plan, True, lambda s: None)
    assert len(done) == n_planes
    for u, p in zip(users, pools):
        assert torch.equal(p[slots], u[rows])
    commands = [c for c in calls if isinstance(c[0], int)]
    groups = -(-n_planes // stage_planes)  # 7 planes: 7 commands a plane at a time, 3 (3 + 3 + 1) by three
    assert len(commands) == (groups if batched else 0)
    calls.clear()
    back = [torch.zeros_like(u) for u in users]
    planes = [P.PlaneCopy(b, p, p) for b, p in zip(back, pools)]
    done = copier._submit(planes, P.RowPlan(slots, rows), False, lambda s: None)
    assert len(done) == n_planes
    for b, u in zip(back, users):
        assert torch.equal(b[rows], u[rows])
    assert len([c for c in calls if isinstance(c[0], int)]) == (groups if batched else 0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the staged path's streams and kernels are CUDA-only")
@pytest.mark.parametrize("stage_planes", [1, 4])
def test_scattered_rows_through_the_staged_path_move_exact_bytes_on_cuda(monkeypatch, stage_planes):
    """dump_rows / load_blocks of scattered vLLM rows on the GPU take the staged path (DMAs by slot run,
    a gather or scatter kernel a plane), with STAGE_PLANES planes a staging buffer: every row exact."""
    from ucm.tiers import planes as P

    monkeypatch.setattr(P, "SMALL_CALL_BYTES", 0)
    monkeypatch.setattr(P, "MIN_RUN_BYTES", 1)
    monkeypatch.setattr(P, "MAX_DIRECT_RUNS", 0)
    monkeypatch.setattr(P, "STAGE_PLANES", stage_planes)
    layers, n, row = 6, 300, 1024
    block = layers * row
    with create_store("UcmDramStore", {"kv_block_size": block, "max_cache_size": (n + 8) * block,
                                       "planes": layers}) as store:
        g = torch.Generator().manual_seed(6)
        src = [torch.randint(-100, 100, (2 * n, row // 2), dtype=torch.int16, generator=g).cuda()
               for _ in range(layers)]
        rows = torch.randperm(2 * n, generator=g)[:n].tolist()
        ids = [f"s{r}" for r in rows]
        assert store.wait(store.dump_rows(ids, src, rows)) == OK
        store.commit(ids)
        dst = [torch.zeros_like(t) for t in src]
        back = torch.randperm(2 * n, generator=g)[:n].tolist()
        assert store.wait(store.load_blocks(ids, dst, back)) == OK
        for s, d in zip(src, dst):
            assert torch.equal(d[back], s[rows])


def test_a_staging_group_stays_within_its_byte_cap(monkeypatch):
    """STAGE_PLANES planes share a staging buffer only while it stays within STAGE_GROUP_BYTES: a call of
    many rows moves fewer planes at a time, so the ring's buffers stay bounded."""
    from ucm.tiers import planes as P

    copier, calls = _staged_copier(monkeypatch, True, 3)
    users = _planes(60, 64, 7, seed=9)
    pools = [torch.zeros(80, 64, dtype=torch.uint8) for _ in range(7)]
    rows, slots = [51, 3, 17, 40, 8, 33], [2, 3, 4, 40, 41, 42]  # two slot runs, six rows: staged
    monkeypatch.setattr(P, "STAGE_GROUP_BYTES", 2 * len(rows) * 64)  # two planes' rows
    copier._submit([P.PlaneCopy(u, p, p) for u, p in zip(users, pools)], P.RowPlan(slots, rows), True, lambda s: None)
    assert len(calls) == 4  # 2 + 2 + 2 + 1 planes
    for u, p in zip(users, pools):
        assert torch.equal(p[slots], u[rows])
    assert max(b.numel() for b in copier._rings[True].bufs if b is not None) <= 2 * len(rows) * 64
