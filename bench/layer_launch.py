"""What one layer of a layer-wise load or dump costs the model's thread, per copier path, without vLLM.

The connector reads a DRAM hit layer by layer: ``open_blocks`` once, then ``read_planes`` per layer,
the model's stream waiting for each layer's copies; it writes a step's new blocks the same way
(``reserve_blocks`` once, ``write_planes`` per layer). On a step that computes few tokens (a 100 %
hit) those per-layer calls, not the link, set the pace. This measures them on a vLLM-0.26-like KV
cache (``--layers`` tensors of (blocks, ``--layer-kib``) bytes: K and V of a block packed) and a
DRAM pool with one plane per layer, for the rows vLLM hands out:

  consecutive  fresh blocks, ascending: slots and rows run together (the direct path: a DMA a layer)
  pairs        reused blocks, freed in reverse: ascending pairs in descending order (the staging
               path: DMAs by slot run into a staging buffer, then a scatter kernel)
  pairs-uva    the same rows with the DMA paths off (``planes.MIN_RUN_BYTES`` raised): one gather
               and one scatter kernel reading or writing the pinned pool through UVA

For each: CPU microseconds per ``read_planes`` / ``write_planes`` call (median over layers and
repetitions), the whole read's or write's wall time with the waits as the model makes them, and
GB/s. Bytes are checked after every run. On the CPU it runs the thread copies (checks the code only).

    python bench/layer_launch.py --out /tmp/layer_launch.json
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import torch

from ucm.tiers import create_store, planes

ORDERS = ("consecutive", "pairs", "pairs-uva")


def dst_rows(order: str, blocks: int, base: int) -> list[int]:
    """Rows of the loaded (or dumped) blocks in the KV cache, first block first."""
    if order == "consecutive":
        return list(range(base, base + blocks))
    top = base + blocks - blocks % 2  # reused blocks: ascending pairs, in descending order
    rows = [r for i in range(2, top - base + 1, 2) for r in (top - i, top - i + 1)]
    return rows + list(range(top, base + blocks))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _wait_parts(parts) -> None:
    for p in parts:  # as the worker does: the model's stream waits on the GPU, the CPU on the CPU
        stream_wait = getattr(p, "stream_wait", None)
        if stream_wait is not None:
            stream_wait()
        else:
            p.wait(60.0)


def _layers(call, layers: int) -> list[float]:
    """``call(layer)`` for every layer as the connector makes it; CPU seconds of each call."""
    cpu = []
    for layer in range(layers):
        c0 = time.perf_counter()
        parts = call(layer)
        cpu.append(time.perf_counter() - c0)
        if parts:
            _wait_parts(parts)
    return cpu


def run(device: torch.device, order: str, layers: int, blocks: int, layer_bytes: int, reps: int) -> dict:
    """Per repetition: fresh blocks dumped from ``order``'s rows into fresh slots, committed, then loaded
    back into the same rows of a zeroed cache. The pool holds every repetition (no eviction)."""
    store = create_store("UcmDramStore", {"kv_block_size": layer_bytes * layers,
                                          "max_cache_size": layer_bytes * layers * (blocks * (reps + 1) + 4),
                                          "planes": layers})
    g = torch.Generator().manual_seed(0)
    src = [torch.randint(0, 255, (2 * blocks + 2, layer_bytes), dtype=torch.uint8, generator=g).to(device)
           for _ in range(layers)]
    dst = [torch.zeros_like(t) for t in src]
    rows = dst_rows(order, blocks, blocks + 1)
    saved = planes.MIN_RUN_BYTES
    if order.endswith("-uva"):
        planes.MIN_RUN_BYTES = 1 << 62
    dump_cpu, load_cpu, dump_wall, load_wall = [], [], [], []
    try:
        for rep in range(reps + 1):  # the first repetition warms up (staging buffers, index tensors)
            ids = [f"r{rep}-{i}" for i in range(blocks)]
            _sync(device)
            t0 = time.perf_counter()
            bw = store.reserve_blocks(ids, rows)
            cpu = _layers(lambda l: store.write_planes(bw, [src[l]], offset=l * layer_bytes), layers)
            assert store.wait(bw.task) == 0
            _sync(device)
            wall = time.perf_counter() - t0
            store.commit(ids)
            for d in dst:
                d.zero_()
            _sync(device)
            t0 = time.perf_counter()
            br = store.open_blocks(ids, rows)
            rcpu = _layers(lambda l: store.read_planes(br, [dst[l]], offset=l * layer_bytes,
                                                    last=l == layers - 1), layers)
            assert store.wait(br.task) == 0
            _sync(device)
            rwall = time.perf_counter() - t0
            for s_, d in zip(src, dst):
                assert torch.equal(d[rows], s_[rows]), "bytes must round-trip exactly"
            if rep:
                dump_cpu += cpu
                load_cpu += rcpu
                dump_wall.append(wall)
                load_wall.append(rwall)
    finally:
        planes.MIN_RUN_BYTES = saved
        store.close()
    nbytes = layers * blocks * layer_bytes
    plan = planes.RowPlan(list(range(blocks)), rows)  # fresh slots, in order
    return {"order": order, "layers": layers, "blocks": blocks, "layer_bytes": layer_bytes,
            "row_runs": len(plan.pairs), "slot_runs": len(plan.runs),
            "dump_cpu_us_per_layer": 1e6 * statistics.median(dump_cpu),
            "load_cpu_us_per_layer": 1e6 * statistics.median(load_cpu),
            "dump_wall_ms": 1e3 * min(dump_wall), "load_wall_ms": 1e3 * min(load_wall),
            "dump_gbps": nbytes / min(dump_wall) / 1e9, "load_gbps": nbytes / min(load_wall) / 1e9}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--layers", type=int, default=28)
    ap.add_argument("--blocks", type=int, default=800, help="blocks a load moves (16k tokens at 80 %%: 800)")
    ap.add_argument("--layer-kib", type=int, default=32, help="one layer of one block, K and V (Qwen2.5-7B: 32)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--orders", default=",".join(ORDERS))
    ap.add_argument("--out")
    a = ap.parse_args()
    device = torch.device("cuda" if a.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if a.device == "auto" else a.device))
    info = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv)}
    rows = []
    print(f"{info['device']} | torch {info['torch']} | {a.layers} layers x {a.blocks} blocks x {a.layer_kib} KiB")
    print(f"{'order':<12} {'row runs':>8} {'dump us/layer':>13} {'load us/layer':>13} {'dump ms':>8} {'load ms':>8} "
          f"{'dump GB/s':>9} {'load GB/s':>9}")
    for order in a.orders.split(","):
        r = run(device, order, a.layers, a.blocks, a.layer_kib << 10, a.reps)
        rows.append(r)
        print(f"{order:<12} {r['row_runs']:>8} {r['dump_cpu_us_per_layer']:>13.0f} {r['load_cpu_us_per_layer']:>13.0f} "
              f"{r['dump_wall_ms']:>8.2f} {r['load_wall_ms']:>8.2f} {r['dump_gbps']:>9.1f} {r['load_gbps']:>9.1f}",
              flush=True)
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"info": info, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
