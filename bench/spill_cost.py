"""What a dump into a full DRAM tier with a disk tier below costs the caller's thread (in vLLM: the model's).

Each step reserves ``--step`` new blocks (``reserve_blocks``) and writes every layer of them in one
call (``write_planes``), as the connector's worker does at a step's end (there in stages of
blocks, ``dump_rows``: one stage at this bench's sizes); the DRAM holds ``--slots`` blocks, so from the
second fill on every new block needs a victim moved down to the disk tier. ``--gap-ms`` sleeps
between steps (the model's compute, during which the disk writes in the background). Reports the
caller's milliseconds per step (median of the steps after the DRAM filled): the reservation (slots,
evictions) and the whole dump call (reservation + the layers' launch), and the tiers' counters.
Then ``--hit-blocks`` blocks pushed down to disk are loaded back (a disk hit: read, promoted into the
full DRAM, copied to the caller's planes): milliseconds and GB/s.
On the CPU the layer copies run on a worker thread; what is measured is the caller's own time.

    python bench/spill_cost.py --gap-ms 0,150 --out bench/results/spill_cost_cpu.json
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time

import torch
from tqdm import tqdm

from ucm.tiers import create_store


def dump_step(store, ids: list, kv: list) -> tuple[float, float]:
    """``ids`` from rows 0.. of ``kv`` (a tensor a layer), as the connector's worker dumps at a step's
    end: one reservation, then one write of every layer; committed. The caller's seconds of the
    reservation and of the whole call (reservation + the launch), before the wait."""
    t0 = time.perf_counter()
    bw = store.reserve_blocks(ids, list(range(len(ids))))
    t1 = time.perf_counter()
    store.write_planes(bw, kv, offset=0)
    t2 = time.perf_counter()
    assert store.wait(bw.task) == 0
    store.commit(ids)
    return t1 - t0, t2 - t0


def run(layers: int, layer_kib: int, slots: int, step: int, steps: int, gap_ms: float, demote_ahead: float,
        path: str) -> dict:
    width = layer_kib << 10
    shutil.rmtree(path, ignore_errors=True)
    cfg = {"kv_block_size": layers * width, "planes": layers, "max_cache_size": slots * layers * width,
           "disk": {"path": path, "max_size": (steps + 2) * step * layers * width}}
    try:
        store = create_store("dram_disk", {**cfg, "demote_ahead": demote_ahead})
    except ValueError:  # a build without the demote_ahead key (an older commit)
        store = create_store("dram_disk", cfg)
    kv = [torch.randint(0, 255, (step, width), dtype=torch.uint8) for _ in range(layers)]
    reserve, whole = [], []
    try:
        for n in tqdm(range(steps), desc=f"gap {gap_ms:g} ms", leave=False):
            r, w = dump_step(store, [f"s{n}-{i}" for i in range(step)], kv)
            if (n + 1) * step > slots:  # the DRAM is full: this step evicted
                reserve.append(r)
                whole.append(w)
            time.sleep(gap_ms / 1e3)
        store.flush()
        stats = store.stats()
    finally:
        store.close()
        shutil.rmtree(path, ignore_errors=True)
    dram, disk = stats["tiers"][0], stats["tiers"][1]
    return {"gap_ms": gap_ms, "demote_ahead": demote_ahead, "layers": layers, "layer_kib": layer_kib,
            "slots": slots, "step": step, "steps": steps,
            "reserve_ms": 1e3 * statistics.median(reserve), "dump_call_ms": 1e3 * statistics.median(whole),
            "dump_call_us_per_block": 1e6 * statistics.median(whole) / step,
            "dram": {k: dram.get(k) for k in ("evictions", "demoted", "demoted_ahead", "used_slots")},
            "disk": {k: disk.get(k) for k in ("blocks", "written")}}


def disk_hits(layers: int, layer_kib: int, slots: int, blocks: int, path: str) -> dict:
    """Milliseconds to load ``blocks`` blocks that sit on disk (page cache warm) into a caller's
    planes through the chain (promoted into a full DRAM on the way), and the bytes checked."""
    width = layer_kib << 10
    shutil.rmtree(path, ignore_errors=True)
    store = create_store("dram_disk", {"kv_block_size": layers * width, "planes": layers,
                                       "max_cache_size": slots * layers * width,
                                       "disk": {"path": path, "max_size": 8 * (slots + blocks) * layers * width}})
    kv = [torch.randint(0, 255, (blocks, width), dtype=torch.uint8) for _ in range(layers)]
    try:
        hits = [f"hit-{i}" for i in range(blocks)]
        dump_step(store, hits, kv)
        for n in range(-(-slots // blocks) + 1):  # push them out of the DRAM
            dump_step(store, [f"fill{n}-{i}" for i in range(blocks)], kv)
        store.flush()
        assert not any(store.head.holds(k.encode()) for k in hits)
        out = [torch.zeros_like(t) for t in kv]
        t0 = time.perf_counter()
        assert store.wait(store.load_blocks(hits, out, list(range(blocks)))) == 0
        dt = time.perf_counter() - t0
        assert all(torch.equal(a, b) for a, b in zip(out, kv)), "bytes must round-trip exactly"
        counters = {k: store.head.counters.get(k) for k in ("filled", "evictions")}
    finally:
        store.close()
        shutil.rmtree(path, ignore_errors=True)
    return {"blocks": blocks, "load_ms": 1e3 * dt, "gbps": blocks * layers * width / dt / 1e9, "dram": counters}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=28)
    ap.add_argument("--layer-kib", type=int, default=32, help="one layer of one block (Qwen2.5-7B, 16 tokens: 32)")
    ap.add_argument("--slots", type=int, default=512, help="DRAM blocks")
    ap.add_argument("--step", type=int, default=128, help="new blocks a step dumps")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--gap-ms", default="0,150", help="comma list: the model's time between steps")
    ap.add_argument("--demote-ahead", type=float, default=0.25)
    ap.add_argument("--hit-blocks", type=int, default=400, help="disk hits loaded at the end (0: none)")
    ap.add_argument("--path", default=None, help="disk tier folder (default: a fresh temporary one)")
    ap.add_argument("--out")
    a = ap.parse_args()
    path = a.path or tempfile.mkdtemp(prefix="ucm_spill_cost_")
    info = {"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv)}
    rows = [run(a.layers, a.layer_kib, a.slots, a.step, a.steps, float(g), a.demote_ahead, path)
            for g in a.gap_ms.split(",")]
    print(f"{a.layers} layers x {a.layer_kib} KiB, DRAM {a.slots} blocks, {a.step} new blocks a step")
    print(f"{'gap ms':>6} {'reserve ms':>10} {'dump call ms':>12} {'us/block':>8}  dram / disk counters")
    for r in rows:
        print(f"{r['gap_ms']:>6g} {r['reserve_ms']:>10.1f} {r['dump_call_ms']:>12.1f} {r['dump_call_us_per_block']:>8.0f}"
              f"  {r['dram']} {r['disk']}")
    hit = disk_hits(a.layers, a.layer_kib, a.slots, a.hit_blocks, path) if a.hit_blocks else None
    if hit:
        print(f"{hit['blocks']} disk hits into a full DRAM, then the caller's planes: {hit['load_ms']:.0f} ms "
              f"({hit['gbps']:.2f} GB/s) {hit['dram']}")
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"info": info, "rows": rows, "disk_hits": hit}, f, indent=1)


if __name__ == "__main__":
    main()
