"""Dump and load bandwidth through UcmDramStore, beside a plain 1 GiB pinned copy of the same run.

Layouts (what a vLLM worker hands the store):
- per-layer: every block is 2 x layers pieces (one layer's K or V), each --piece-kib, taken from
  per-layer KV tensors at scattered block ids (as vLLM's block table gives them);
- whole-block: one piece per block (vLLM's cross-layer layout), --whole-kib each, scattered ids.
Each through both APIs: the seed's piece API (dump/load with one tensor per piece) and the batched
row API (dump_blocks/load_blocks with one tensor per plane). The pool uses one plane per piece.
- vllm: the connector's own path on vLLM's real layout (0.26 FlashAttention, 0.32 CPU: K and V packed,
  one (num_blocks, --vllm-layer-kib) tensor per layer; pool: one plane per layer): dumps write every
  layer in one call (``dump_rows``: reserved and written in stages of blocks), loads are one
  ``load_blocks`` over every layer (also in stages), as the worker does at a step's end and for a
  load-bound step. ``vllm/seq``: the same with consecutive block rows on both sides, as vLLM hands a
  fresh prompt its blocks (the prefix grid's loads: one slot-and-row run a call, copied by plain DMAs);
  the other runs take scattered rows (every block a run of its own: DMAs into staging, then a scatter).

The plain copy is measured before and after the layouts; each ratio ("x plain") is against the faster
of the two (the link's rate moves between runs). Prints a table and writes JSON (--out); "launch ms" is
the time until the call returned (planning and launching the copies on the CPU), the rest of a call's
time is waiting for them. Runs on a GPU
(device tensors, pinned pool) and on the CPU (host tensors, plain pool). Example:
    python bench/dram_bandwidth.py --blocks 2048 --out bench/results/dram_bandwidth.json
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time

import torch
from tqdm import tqdm

import host_speed  # bench/ (this script's folder)
from gc_clock import GcClock  # bench/

from ucm.tiers import create_store


GC = GcClock()  # the collector's pauses inside the timed calls


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def plain_copy_gbps(device, nbytes: int, reps: int) -> dict:
    """One large copy each way between a pinned host buffer and the device (host->host on CPU)."""
    pin = device.type == "cuda"
    host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=pin)
    dev = torch.empty(nbytes, dtype=torch.uint8, device=device)
    host.fill_(1)
    out = {}
    for name, dst, src in (("h2d", dev, host), ("d2h", host, dev)):
        dst.copy_(src, non_blocking=True)  # warm-up
        sync(device)
        best = float("inf")
        for _ in range(reps):
            t0 = time.perf_counter()
            dst.copy_(src, non_blocking=True)
            sync(device)
            best = min(best, time.perf_counter() - t0)
        out[name] = nbytes / best / 1e9
    del host, dev
    return out


def profiled(fn, stem: str, stack: bool = False) -> dict:
    """``fn()`` (a dump or load and its wait) once under torch.profiler: the wall ms, and per CUDA
    stream its busy ms, first/last GPU event and ms per kind (where the link idles, and why). The
    trace goes to ``<stem>.trace.json.gz``; with ``stack`` it also holds the Python calls (what the
    CPU does before a call's first copy: checks, planning, launch; 2026-11-29, H200)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from trace_summary import save_trace, stream_summary

    acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=acts, with_stack=stack) as prof:
        torch.cuda.synchronize()
        g0 = GC.snapshot()
        t0 = time.perf_counter()
        fn()
        wall = time.perf_counter() - t0
        gc_pauses = GC.since(g0)
    trace = save_trace(prof, stem)
    return {"wall_ms": round(wall * 1e3, 3), "gc": gc_pauses, "streams": stream_summary(trace)}


def run_layout(device, layout: str, api: str, blocks: int, piece: int, layers: int, reps: int,
               fragmented: bool = False, profile: str = "", consecutive: bool = False,
               profile_stack: bool = False) -> dict:
    """Dump ``blocks`` scattered blocks of a vLLM-like cache into the store, then load them into a
    second cache at other scattered rows; best of ``reps`` for each direction. With ``profile`` (a
    path stem, CUDA only) one more dump and load run under torch.profiler (``result["profile"]``). With
    ``consecutive`` both sides take consecutive rows (a run each) instead."""
    n_planes = {"per-layer": 2 * layers, "vllm": layers}.get(layout, 1)
    block_bytes = piece * n_planes
    total = blocks * 2  # the "GPU cache" holds twice the blocks we move
    src = [torch.randint(0, 255, (total, piece), dtype=torch.uint8, device=device) for _ in range(n_planes)]
    dst = [torch.zeros_like(t) for t in src]
    gen = torch.Generator().manual_seed(0)
    rows = torch.randperm(total, generator=gen)[:blocks].tolist()
    dst_rows = torch.randperm(total, generator=gen)[:blocks].tolist()
    if consecutive:  # as a fresh prompt's blocks: the source low in the cache, the destination high
        rows, dst_rows = list(range(blocks)), list(range(total - blocks, total))
    store = create_store("UcmDramStore", {"kv_block_size": block_bytes, "max_cache_size": block_bytes * blocks,
                                          "planes": n_planes})
    offs = [p * piece for p in range(n_planes)]
    if fragmented:  # worst case for runs: free slots in random order, as after long random eviction
        import collections
        import random

        free = list(store._free)
        random.Random(0).shuffle(free)
        store._free = collections.deque(free)

    def dump(ids):
        if api == "connector":  # as the worker at a step's end: every layer, reserved and written in stages
            return store.dump_rows(ids, src, rows)
        if api == "blocks":
            return store.dump_blocks(ids, src, rows)
        return store.dump([i for i in ids for _ in src], offs * len(ids), [t[r] for r in rows for t in src])

    def load(ids):
        if api in ("blocks", "connector"):
            return store.load_blocks(ids, dst, dst_rows)
        return store.load([i for i in ids for _ in dst], offs * len(ids), [t[r] for r in dst_rows for t in dst])

    def name(s: str):  # the worker's keys are bytes (keys.rank_keys): the connector api takes those
        return s.encode() if api == "connector" else s

    nbytes = blocks * block_bytes
    result = {"layout": layout + ("/seq" if consecutive else "") + ("/frag" if fragmented else ""), "api": api, "blocks": blocks, "piece_bytes": piece,
              "pieces": blocks * n_planes, "bytes": nbytes}
    def timed(call) -> tuple[float, float, float]:
        """(seconds until the call returned: planning and launching on the CPU, seconds to done, ms the
        garbage collector stopped the call: a pause before the first copy idles the link)."""
        sync(device)
        g0 = GC.snapshot()
        t0 = time.perf_counter()
        task = call()
        t1 = time.perf_counter()
        assert store.wait(task) == 0
        return t1 - t0, time.perf_counter() - t0, GC.since(g0)["ms"]

    # as vLLM's engine core after start-up (freeze_gc_heap): the set-up's objects out of the collector's
    # way, so a pause in a timed call is the call's own (its objects: ``dump_gc_ms``, ``load_gc_ms``)
    gc.collect()
    gc.freeze()
    dump_times = []
    for rep in range(reps + 1):  # fresh ids each time (a committed id is skipped), dropped after
        ids = [name(f"b{b}-{rep}") for b in range(blocks)]
        dump_times.append(timed(lambda: dump(ids)))
        store.commit(ids, is_success=False)
    best = min(dump_times[1:], key=lambda t: t[1])
    result["dump_gbps"], result["dump_launch_ms"] = nbytes / best[1] / 1e9, best[0] * 1e3
    result["dump_gc_ms"] = dict(best=best[2], reps=[t[2] for t in dump_times[1:]])
    ids = [name(f"b{b}") for b in range(blocks)]
    assert store.wait(dump(ids)) == 0
    store.commit(ids)
    load_times = [timed(lambda: load(ids)) for _ in range(reps + 1)]
    best = min(load_times[1:], key=lambda t: t[1])
    result["load_gbps"], result["load_launch_ms"] = nbytes / best[1] / 1e9, best[0] * 1e3
    result["load_gc_ms"] = dict(best=best[2], reps=[t[2] for t in load_times[1:]])
    if profile and device.type == "cuda":
        # the load first: the pool holds just ``blocks``, so the extra dump evicts what it loads
        result["profile"] = {"load": profiled(lambda: store.wait(load(ids)), profile + "_load", profile_stack)}
        fresh = [name(f"p{b}") for b in range(blocks)]
        result["profile"]["dump"] = profiled(lambda: store.wait(dump(fresh)), profile + "_dump", profile_stack)
        store.commit(fresh, is_success=False)
    for s_, d_ in zip(src, dst):
        assert torch.equal(s_[rows], d_[dst_rows]), "round trip must be byte-exact"
    store.close()
    gc.unfreeze()  # this layout's set-up may be collected again (the next layout freezes its own)
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--blocks", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=28)
    ap.add_argument("--piece-kib", type=int, nargs="+", default=[16, 32, 64])
    ap.add_argument("--whole-kib", type=int, default=1024)
    ap.add_argument("--plain-mib", type=int, default=1024)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--vllm-layer-kib", type=int, default=32,
                    help="vllm layout: one layer of one block, K and V (Qwen2.5-7B, 16-token blocks: 32)")
    ap.add_argument("--fragmented", action="store_true", help="also run the blocks API with shuffled free slots")
    ap.add_argument("--out")
    ap.add_argument("--profile", metavar="DIR",
                    help="CUDA: also profile one dump and load of vLLM's layout (traces and a summary into DIR)")
    ap.add_argument("--profile-stack", action="store_true",
                    help="--profile: the traces also record Python calls (with_stack; slower, larger traces)")
    args = ap.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    plain = plain_copy_gbps(device, args.plain_mib << 20, args.reps)
    runs = [("whole-block", args.whole_kib << 10, args.blocks)]
    for kib in args.piece_kib:  # keep the moved bytes comparable: fewer blocks for bigger blocks
        block = (kib << 10) * 2 * args.layers
        runs.append(("per-layer", kib << 10, max(16, (args.blocks * (args.whole_kib << 10)) // block)))
    vllm_block = (args.vllm_layer_kib << 10) * args.layers
    vllm_run = ("vllm", args.vllm_layer_kib << 10, max(16, (args.blocks * (args.whole_kib << 10)) // vllm_block))
    rows = []
    plan = [(r, a, False, False) for r in runs for a in ("pieces", "blocks")] + [(vllm_run, "connector", False, False)]
    plan += [(vllm_run, "connector", False, True)]
    plan += [(r, "blocks", True, False) for r in runs] + [(vllm_run, "connector", True, False)] if args.fragmented else []
    if args.profile:
        os.makedirs(args.profile, exist_ok=True)
    for (layout, piece, blocks), api, frag, seq in tqdm(plan, desc="layouts"):
        stem = (f"{args.profile}/{layout}{'_seq' if seq else ''}{'_frag' if frag else ''}"
                if args.profile and layout == "vllm" else "")
        r = run_layout(device, layout, api, blocks, piece, args.layers, args.reps, frag, stem, consecutive=seq,
                       profile_stack=args.profile_stack)
        rows.append(r)
    # the link's own rate moved 47-55 GB/s between runs on one H200 (2026-11-29, 1.08 x plain for a load):
    # measured again after the layouts, and each ratio taken against the faster of the two
    after = plain_copy_gbps(device, args.plain_mib << 20, args.reps)
    plain_first = dict(plain)
    plain = {k: max(plain[k], after[k]) for k in plain}
    for r in rows:
        r["dump_ratio"] = r["dump_gbps"] / plain["d2h"]
        r["load_ratio"] = r["load_gbps"] / plain["h2d"]
    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "device": str(device),
            "gpu": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
            "torch": torch.__version__, "plain_h2d_gbps": plain["h2d"], "plain_d2h_gbps": plain["d2h"],
            "plain_before": plain_first, "plain_after": after,
            "command": "python bench/dram_bandwidth.py " + " ".join(sys.argv[1:]),
            # the A / B switches set for this run (bench/bandwidth_table.py names runs by them)
            "env": {k: v for k, v in sorted(os.environ.items()) if k.startswith("UCM_")},
            "host_speed": host_speed.measure(device.type == "cuda")}  # launch-bound layouts move with it
    print(f"{meta['gpu']} | torch {meta['torch']} | plain {args.plain_mib} MiB copy: "
          f"h2d {plain['h2d']:.1f} GB/s, d2h {plain['d2h']:.1f} GB/s")
    print(f"{'layout':17} {'api':9} {'piece':>8} {'blocks':>7} {'MiB':>7} {'dump GB/s':>10} {'x plain':>8} "
          f"{'launch ms':>9} {'load GB/s':>10} {'x plain':>8} {'launch ms':>9}")
    for r in rows:
        print(f"{r['layout']:17} {r['api']:9} {r['piece_bytes'] >> 10:>6}Ki {r['blocks']:>7} {r['bytes'] >> 20:>7} "
              f"{r['dump_gbps']:>10.2f} {r['dump_ratio']:>8.2f} {r['dump_launch_ms']:>9.2f} "
              f"{r['load_gbps']:>10.2f} {r['load_ratio']:>8.2f} {r['load_launch_ms']:>9.2f}")
    for r in rows:
        for direction, p in r.get("profile", {}).items():
            print(f"profile {r['layout']} {direction}: wall {p['wall_ms']} ms; gc {p['gc']};", "; ".join(
                f"stream {k}: busy {v['busy_ms']} ms, {v['first_ms']}-{v['last_ms']} ms, {v['ms_by_kind']}"
                for k, v in p["streams"].items()))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({**meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
