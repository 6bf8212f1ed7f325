"""CPU time of ucm's connector hooks for one prefix-hit step, without a GPU or vLLM.

    python bench/hook_cpu.py --requests 4 --blocks 1000 --hit 1.0 [--profile]
    python bench/hook_cpu.py --requests 4 --blocks 1000 --hit 1.0 --hbm-hit   # the same prefixes in vLLM's cache
    python bench/hook_cpu.py --decode 32,2      # a decode step of 32 running requests, 2 filling a block

Builds a DRAM store holding ``--requests`` prompts of ``--blocks`` blocks each (28 layers, K and V planes,
as the 7B model of the GPU grid; its memory is never touched: the copies are stood in for), then
times one step the way vLLM drives it: the scheduler's lookups and pins, the allocation notes and the
step's metadata, then the worker's ``start_load_kv``, every layer's ``wait_for_layer_load`` and
``save_kv_layer``, ``wait_for_save`` (the step's dumps) and ``finish_layer_loads``. ``--hit 1.0`` is a
load-bound step (every layer launched before the forward), below it the layer-wise path.

``--staged ROWS`` times the GPU copier's staged path alone (scattered rows: DMAs into staging, a gather or
scatter kernel a plane): a dump and a load of ROWS scattered rows of the 28 planes, for 1, 4 and 8 planes
a staging buffer (``planes.STAGE_PLANES``).

``--decode BATCH,DUMPS`` times a decode step of a stream instead (``DecodeSetup``): the step's metadata, the
forward's hooks with the dumps of the blocks DUMPS requests fill (scattered vLLM rows), and the step's end.

The GPU copier runs with CUDA stood in for: streams, events and the batched-DMA driver call are no-ops,
so its Python work (plans, descriptors, one batched DMA and one event per plane and stage) is timed but
not the driver's: ``cuda_calls`` counts the batched-DMA commands and events a step queues (each a driver
call of the model's thread on the GPU, ~50 µs with its Python on an H200 host). On the H200 grid's 16k x 4
at 100 % ``start_load_kv`` took 38 ms (thirteenth session, ``bench/step_phases.py``); compare what this
prints with that to see what the driver adds.
"""
from __future__ import annotations

import argparse
import contextlib
import cProfile
import functools
import json
import os
import pstats
import statistics
import sys
import time
import types

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

# the 7B model of the GPU grid: 28 layers, a K or V row of a 16-token block = 16 tokens x 4 KV heads x 128 x 2
# bytes. Real sizes (they pick the copier's path and the stage sizes), but never touched: the pool and the KV
# cache are torch.empty (no page is written, so a 4 x 16k store takes no memory) and the copies are no-ops
LAYERS, ROW, BLOCK_TOKENS = 28, 16384, 16


class _Stream:
    cuda_stream = 0

    def wait_stream(self, other) -> None:
        pass

    def wait_event(self, event) -> None:
        pass


class _Event:
    def __init__(self, *a, **k):
        pass

    def record(self, stream=None) -> None:
        pass

    def query(self) -> bool:
        return True

    def synchronize(self) -> None:
        pass


def _put(monkey: list, obj, name: str, value) -> None:
    """``obj.name = value``, the old value kept in ``monkey`` (main undoes them in reverse)."""
    monkey.append((obj, name, getattr(obj, name)))
    setattr(obj, name, value)


def stand_in_cuda(monkey: list) -> None:
    """Let planes.CudaPlaneCopier run on the CPU: its CUDA calls become no-ops (undone by ``monkey``)."""
    from ucm.tiers import batch_dma, planes

    put = functools.partial(_put, monkey)
    stream = _Stream()
    put(torch.cuda, "current_stream", lambda device=None: stream)
    put(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    put(torch.cuda, "Event", _Event)
    put(planes, "_record", lambda s: COUNTS.update(events=COUNTS["events"] + 1) or _Event())
    put(torch.Tensor, "record_stream", lambda self, s: None)
    put(batch_dma, "available", lambda: True)
    put(batch_dma, "_entry", lambda *args: COUNTS.update(dma_commands=COUNTS["dma_commands"] + 1) or 0)


#: CUDA work a step would have queued: batched-DMA driver commands and events recorded by the copier
#: (each costs the model's thread a driver call on the GPU, which the stand-ins here do not)
COUNTS = {"dma_commands": 0, "events": 0}


def fake_copier():
    from ucm.tiers import planes

    stream = _Stream()
    return planes.CudaPlaneCopier(torch.device("cpu"), streams=(stream, stream))


def use_fake_copiers(tier) -> None:
    """The tier's plane copies go through GPU copiers on stand-ins (one for dumps, one for loads, as the
    pool's own), its pool standing in for its UVA alias (only addresses are read)."""
    tier.pool_uva = tier.pool
    cop_dump, cop_load = fake_copier(), fake_copier()

    def submit_planes(views, plan, to_pool, task, keys, whole=False):
        return (cop_dump if to_pool else cop_load).submit(views, plan, to_pool, whole=whole) if len(plan) else []
    tier._submit_planes = submit_planes


def _request(rid: str, seed: int, blocks: int):
    toks = [seed * 1_000_000 + i for i in range(blocks * BLOCK_TOKENS)]
    return types.SimpleNamespace(request_id=rid, all_token_ids=toks, num_tokens=len(toks),
                                 block_hashes=[b"v%d-%d" % (seed, i) for i in range(blocks)], mm_features=[],
                                 lora_request=None, cache_salt=None, prompt_embeds=None, kv_transfer_params=None)


class Setup:
    def __init__(self, n_req: int, blocks: int, hit: float, hbm_hit: bool = False):
        from ucm.integration.vllm import stores
        from ucm.integration.vllm.keys import KeyMaker, RequestKeys
        from ucm.integration.vllm.lookup_rpc import RankedLookup, store_key
        from ucm.integration.vllm.scheduler import UcmScheduler
        from ucm.integration.vllm.worker import UcmWorker
        from ucm.tiers import create_store

        self.n_req, self.blocks, self.hit_blocks = n_req, blocks, max(1, int(round(hit * blocks)))
        self.hbm_hit = hbm_hit  # the stored head is in vLLM's own prefix cache too: nothing loads
        self.num_blocks = 2 * n_req * blocks + 64
        whole = LAYERS * 2 * ROW
        self.store = create_store("UcmDramStore", {"kv_block_size": whole, "planes": LAYERS,
                                                   "max_cache_size": (2 * n_req * blocks + 64) * whole})
        use_fake_copiers(self.store)
        self.engine = f"hookcpu-{os.getpid()}"
        stores.acquire(store_key(self.engine, 0), lambda: self.store)
        self.keys = KeyMaker(b"root", BLOCK_TOKENS, 1)
        # FlashAttention's layout on vLLM 0.26: a layer is (num_blocks, ...), K and V of a block in one row
        self.kv = {f"model.layers.{i}.self_attn.attn": torch.empty((self.num_blocks, 2 * ROW), dtype=torch.uint8)
                   for i in range(LAYERS)}
        self.worker = UcmWorker(self.store, self.keys, 0, self.num_blocks, whole)
        self.worker.register_kv_caches(self.kv)
        self.sched = UcmScheduler(RankedLookup(self.engine, 1), self.keys, BLOCK_TOKENS, layerwise=True,
                                  step_tokens=1 << 30, in_turn_tokens=0)  # every hit in one step
        planes = list(self.kv.values())
        self.reqs = [_request(f"r{i}", i, blocks) for i in range(n_req)]
        for i, r in enumerate(self.reqs):  # store each prompt's first hit_blocks blocks
            k = self.keys.rank_keys(self.keys.hashes(RequestKeys(r), self.hit_blocks), 0)
            rows = list(range(i * blocks, i * blocks + self.hit_blocks))
            self.store.wait(self.store.dump_blocks(k, planes, rows))
            self.store.commit(k)
        self.passes = 0

    def close(self) -> None:
        from ucm.integration.vllm import stores
        from ucm.integration.vllm.lookup_rpc import store_key

        stores.release(store_key(self.engine, 0))  # closes the store

    def step(self) -> dict:
        """One step of every request's prompt (new request ids, so nothing is cached in the scheduler),
        timed per hook group (ms)."""
        self.passes += 1
        COUNTS.update(dma_commands=0, events=0)
        blocks, hit = self.blocks, self.hit_blocks
        reqs = []
        for i, r in enumerate(self.reqs):  # the stored head, then a tail of this pass's own
            c = _request(f"{r.request_id}-{self.passes}", 1000 * self.passes + i, blocks)
            n = hit * BLOCK_TOKENS
            c.all_token_ids = r.all_token_ids[:n] + c.all_token_ids[n:]
            c.block_hashes = r.block_hashes[:hit] + c.block_hashes[hit:]
            reqs.append(c)
        t = [time.perf_counter()]
        head = min(hit, blocks - 1) * BLOCK_TOKENS  # the hit's tokens
        local = head if self.hbm_hit else 0  # of them in vLLM's own cache
        for r in reqs:
            n, _ = self.sched.get_num_new_matched_tokens(r, local)
            assert n == head - local, n
        t.append(time.perf_counter())
        base = (self.passes % 2) * self.n_req * blocks  # other vLLM rows than the store pass used
        ids = [list(range(base + i * blocks, base + (i + 1) * blocks)) for i in range(len(reqs))]
        for r, b in zip(reqs, ids):
            self.sched.update_state_after_alloc(r, types.SimpleNamespace(get_block_ids=lambda b=b: (b,)),
                                                head - local)
        cached = types.SimpleNamespace(req_ids=[], new_block_ids=[], num_computed_tokens=[], resumed_req_ids=set())
        new = [types.SimpleNamespace(req_id=r.request_id, block_ids=(b,), num_computed_tokens=head)
               for r, b in zip(reqs, ids)]
        sched_tokens = {r.request_id: r.num_tokens - head for r in reqs}
        meta = self.sched.build_connector_meta(types.SimpleNamespace(
            scheduled_new_reqs=new, scheduled_cached_reqs=cached, num_scheduled_tokens=sched_tokens,
            total_num_scheduled_tokens=sum(sched_tokens.values()), preempted_req_ids=()))
        t.append(time.perf_counter())
        w = self.worker
        w.handle_preemptions(meta)
        w.start_load_kv(meta)
        t.append(time.perf_counter())
        for name in self.kv:
            w.wait_for_layer_load(name)
            w.save_kv_layer(meta, name)
        t.append(time.perf_counter())
        w.wait_for_save(meta)
        w.finished_loads(), w.finished_dumps()  # the connector's get_finished
        w.get_block_ids_with_load_errors()
        w.worker_meta()
        t.append(time.perf_counter())
        for r in reqs:
            self.sched.request_finished(r, [])
        w.close()  # commit the step's dumps (the next step must not skip them as in flight)
        ms = [1e3 * (b - a) for a, b in zip(t, t[1:])]
        return dict(zip(("lookups_and_pins", "alloc_and_meta", "start_load_kv", "layer_hooks", "step_end"), ms),
                    upfront=meta.upfront, **COUNTS)


class DecodeSetup(Setup):
    """Decode steps of a stream: ``batch`` running requests, ``dumps`` of which fill a block in each step
    (a request fills one every 16 tokens, so a stream of staggered requests dumps a few blocks in most
    steps; the A B B A decode benchmark's requests fill theirs together, once in 16 steps). Their vLLM
    rows are scattered, as a busy engine's free blocks are."""

    def __init__(self, batch: int, dumps: int, blocks: int = 64):
        # the store and hooks, vLLM rows for every request (the one prompt Setup stores is not used)
        super().__init__(1, max(4, batch * blocks // 2), 0.0)
        import random
        from ucm.integration.vllm.keys import RequestKeys

        self.batch, self.dumps = batch, min(dumps, batch)
        rng = random.Random(7)
        rows = rng.sample(range(self.num_blocks), min(self.num_blocks, batch * blocks))
        self.reqs = [_request(f"d{i}", 700 + i, blocks) for i in range(batch)]
        for i, r in enumerate(self.reqs):  # as after their prompt's step: state kept, first block stored
            self.sched.get_num_new_matched_tokens(r, 0)
            st = self.sched.reqs[r.request_id]
            st.keys = RequestKeys(r)
            st.block_ids = rows[i * blocks:(i + 1) * blocks] or [i]
            st.dumped_upto = 1
        self.turn = 0

    def step(self) -> dict:
        COUNTS.update(dma_commands=0, events=0)
        ids, computed, sched_tokens = [], [], {}
        filling = {(self.turn + j) % self.batch for j in range(self.dumps)}
        self.turn += self.dumps
        for i, r in enumerate(self.reqs):
            st = self.sched.reqs[r.request_id]
            if st.dumped_upto + 1 >= len(st.block_ids):  # a request at its end starts over (new blocks)
                st.dumped_upto = 1
            full = st.dumped_upto + (1 if i in filling else 0)
            ids.append(r.request_id)
            computed.append(full * BLOCK_TOKENS - 1 if i in filling else st.dumped_upto * BLOCK_TOKENS + 3)
            sched_tokens[r.request_id] = 1
        cached = types.SimpleNamespace(req_ids=ids, new_block_ids=[None] * len(ids), num_computed_tokens=computed,
                                       resumed_req_ids=set())
        t = [time.perf_counter()]
        meta = self.sched.build_connector_meta(types.SimpleNamespace(
            scheduled_new_reqs=[], scheduled_cached_reqs=cached, num_scheduled_tokens=sched_tokens,
            total_num_scheduled_tokens=len(ids), preempted_req_ids=()))
        t.append(time.perf_counter())
        w = self.worker
        w.handle_preemptions(meta)
        w.start_load_kv(meta)
        for name in self.kv:
            w.wait_for_layer_load(name)
            w.save_kv_layer(meta, name)
        w.wait_for_save(meta)
        t.append(time.perf_counter())
        w.finished_loads(), w.finished_dumps()
        w.get_block_ids_with_load_errors()
        self.sched.update_connector_output(types.SimpleNamespace(kv_connector_worker_meta=w.worker_meta()))
        t.append(time.perf_counter())
        ms = [1e3 * (b - a) for a, b in zip(t, t[1:])]
        return dict(zip(("meta", "forward_hooks", "step_end"), ms), dumped=sum(len(d.block_ids) for d in meta.dumps),
                    **COUNTS)


def staged_call_ms(rows: int, stage_planes: int, reps: int = 21, width: int = 64) -> dict:
    """Median ms of the copier's ``_submit`` on the staged path (CUDA stood in for: ``stand_in_cuda`` first):
    a dump and a load of ``rows`` scattered rows of LAYERS planes, ``stage_planes`` planes a staging buffer.
    Rows of ``width`` bytes: the CPU's index kernels stay cheap, the Python and driver calls are what is timed
    (the batched DMAs are no-ops here, their count is in ``COUNTS``)."""
    import random

    from ucm.tiers import planes

    saved = {k: getattr(planes, k) for k in ("STAGE_PLANES", "SMALL_CALL_BYTES", "MIN_RUN_BYTES", "MAX_DIRECT_RUNS")}
    planes.STAGE_PLANES, planes.SMALL_CALL_BYTES, planes.MIN_RUN_BYTES, planes.MAX_DIRECT_RUNS = stage_planes, 0, 1, 0
    try:
        rng = random.Random(3)
        users = [torch.zeros(2 * rows, width, dtype=torch.uint8) for _ in range(LAYERS)]
        pools = [torch.zeros(2 * rows, width, dtype=torch.uint8) for _ in range(LAYERS)]
        views = [planes.PlaneCopy(u, p, p) for u, p in zip(users, pools)]
        user_rows, slots = rng.sample(range(2 * rows), rows), rng.sample(range(2 * rows), rows)
        copier = fake_copier()
        out = {}
        for name, to_pool in (("dump", True), ("load", False)):
            times = []
            for _ in range(reps):
                plan = planes.RowPlan(slots, user_rows)  # a fresh plan: its index tensors are made per call
                COUNTS.update(dma_commands=0, events=0)
                t = time.perf_counter()
                copier._submit(views, plan, to_pool, lambda stream: None)
                times.append(time.perf_counter() - t)
            out[f"{name}_ms"] = round(1e3 * statistics.median(times), 3)
            out[f"{name}_dma_commands"] = COUNTS["dma_commands"]
        return out
    finally:
        for k, v in saved.items():
            setattr(planes, k, v)


def bandwidth_call_ms(blocks: int, fragmented: bool, reps: int = 9, profile: bool = False) -> dict:
    """Median ms until ``dram_bandwidth.py``'s connector calls return (its "launch ms"): ``dump_rows`` and
    ``load_blocks`` of ``blocks`` scattered rows of LAYERS planes of 32 KiB (that script's vLLM layout), the
    pool's free slots in random order with ``fragmented``. CUDA is stood in for (``stand_in_cuda`` first)
    and so are the index kernels (a CPU would copy the bytes): what is left is the calls' Python, torch's
    dispatch of views and the driver calls' count. ``profile``: a cProfile of one more load (tottime)."""
    import collections
    import random

    from ucm.tiers import create_store

    width = 32 << 10
    store = create_store("UcmDramStore", {"kv_block_size": width * LAYERS, "max_cache_size": width * LAYERS * blocks,
                                          "planes": LAYERS})
    use_fake_copiers(store)
    if fragmented:
        free = list(store._free)
        random.Random(0).shuffle(free)
        store._free = collections.deque(free)
    rng = random.Random(0)
    src = [torch.empty((2 * blocks, width), dtype=torch.uint8) for _ in range(LAYERS)]  # never touched
    dst = [torch.empty((2 * blocks, width), dtype=torch.uint8) for _ in range(LAYERS)]
    rows, dst_rows = rng.sample(range(2 * blocks), blocks), rng.sample(range(2 * blocks), blocks)
    out, dumps, loads = {}, [], []
    for rep in range(reps):
        ids = [f"b{b}-{rep}".encode() for b in range(blocks)]
        COUNTS.update(dma_commands=0, events=0)
        t = time.perf_counter()
        task = store.dump_rows(ids, src, rows)
        dumps.append(time.perf_counter() - t)
        store.wait(task)
        store.commit(ids, is_success=False)  # dropped: every repetition dumps into free slots
    out.update(dump_ms=round(1e3 * statistics.median(dumps), 3), dump_dma_commands=COUNTS["dma_commands"],
               dump_events=COUNTS["events"])
    ids = [f"b{b}".encode() for b in range(blocks)]
    store.wait(store.dump_rows(ids, src, rows))
    store.commit(ids)
    for _ in range(reps):
        COUNTS.update(dma_commands=0, events=0)
        t = time.perf_counter()
        task = store.load_blocks(ids, dst, dst_rows)
        loads.append(time.perf_counter() - t)
        store.wait(task)
    out.update(load_ms=round(1e3 * statistics.median(loads), 3), load_dma_commands=COUNTS["dma_commands"],
               load_events=COUNTS["events"])
    if profile:
        prof = cProfile.Profile()
        prof.enable()
        store.wait(store.load_blocks(ids, dst, dst_rows))
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    store.close()
    return out


def stand_in_index_kernels(monkey: list) -> None:
    """The planes' gather / scatter kernels as no-ops (``bandwidth_call_ms``: real sizes, no bytes moved)."""
    put = functools.partial(_put, monkey)
    put(torch.Tensor, "index_copy_", lambda self, dim, index, source: self)
    put(torch.Tensor, "index_select", lambda self, dim, index: self[:len(index)])
    index_select = torch.index_select
    put(torch, "index_select", lambda t, dim, index, out=None: out if out is not None else index_select(t, dim, index))
    put(torch.Tensor, "copy_", lambda self, src, non_blocking=False: self)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=4)
    ap.add_argument("--blocks", type=int, default=1000, help="blocks a prompt (16 tokens each)")
    ap.add_argument("--hit", type=float, default=1.0, help="stored share of each prompt")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--hbm-hit", action="store_true",
                    help="the stored share is in vLLM's own prefix cache too (an HBM hit: nothing loads, the step "
                         "dumps the rest of each prompt)")
    ap.add_argument("--decode", metavar="BATCH,DUMPS", default=None,
                    help="decode steps instead: BATCH running requests, DUMPS of them filling a block each step")
    ap.add_argument("--staged", type=int, metavar="ROWS", default=0,
                    help="the copier's staged path alone: ROWS scattered rows of every plane, 1 / 4 / 8 planes a buffer")
    ap.add_argument("--bandwidth-call", type=int, metavar="BLOCKS", default=0,
                    help="dram_bandwidth.py's connector calls: a dump and a load of BLOCKS scattered rows of 32 KiB "
                         "planes (slots in order, then fragmented), index kernels stood in too")
    ap.add_argument("--profile", action="store_true", help="also a cProfile of one more step (cumulative)")
    ap.add_argument("--out", default=None, help="write the medians as JSON here")
    a = ap.parse_args()
    monkey: list = []
    stand_in_cuda(monkey)
    s = None
    try:
        if a.bandwidth_call:
            stand_in_index_kernels(monkey)
            for frag in (False, True):
                print(json.dumps(dict(blocks=a.bandwidth_call, fragmented=frag,
                                      **bandwidth_call_ms(a.bandwidth_call, frag, profile=a.profile))))
            return
        if a.staged:
            for k in (1, 4, 8, 1, 4, 8):  # twice, alternating: this machine's speed drifts
                print(json.dumps(dict(rows=a.staged, planes=LAYERS, stage_planes=k, **staged_call_ms(a.staged, k))))
            return
        if a.decode:
            batch, dumps = (int(x) for x in a.decode.split(","))
            s = DecodeSetup(batch, dumps)
        else:
            s = Setup(a.requests, a.blocks, a.hit, a.hbm_hit)
        s.step()  # warm-up
        runs = [s.step() for _ in range(a.reps)]
        skip = ("upfront", "dumped", *COUNTS)
        med = {k: round(statistics.median(r[k] for r in runs), 3) for k in runs[0] if k not in skip}
        med["total"] = round(sum(med.values()), 3)
        what = (dict(decode_batch=batch, dumps=dumps, dumped_blocks=runs[-1]["dumped"]) if a.decode else
                dict(requests=a.requests, blocks=a.blocks, hit=a.hit, hbm_hit=a.hbm_hit, upfront=runs[0]["upfront"]))
        res = dict(what, median_ms=med, cuda_calls={k: runs[-1][k] for k in COUNTS}, python=sys.version.split()[0],
                   torch=torch.__version__)
        print(json.dumps(res))
        if a.out:
            with open(a.out, "w") as f:
                json.dump(res, f, indent=1)
        if a.profile:
            prof = cProfile.Profile()
            prof.enable()
            s.step()
            prof.disable()
            pstats.Stats(prof).sort_stats("cumulative").print_stats(40)
    finally:
        if s is not None:
            s.close()
        for obj, name, value in reversed(monkey):
            setattr(obj, name, value)


if __name__ == "__main__":
    main()
