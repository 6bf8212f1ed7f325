#!/usr/bin/env python3
"""How fragmented the DRAM pool's slots get under the prefix_ttft grid's traffic, without a GPU.

The GPU copier moves a load or dump as one DMA per run of consecutive slots (and caller rows) only
when they are long and, where vLLM's rows do not run with the slots, few (``planes.takes_direct``);
otherwise it stages through a gather/scatter kernel, or, for short runs, one UVA kernel that
occupies SMs while it crosses the link (``planes.copier_path``). This replays the grid's store traffic (bench/prefix_ttft.py:
per cell and repetition, c fresh prompts computed and stored, a store pass of 2c prompts, a 100 %
load of c of them, an 80 % load of the other c plus their new tails stored) on a pool of the grid's
slot count with tiny blocks (the plans depend on slots, not bytes), and reports per cell the slot
runs of each load and dump call and the path the copier would take for it on vLLM's layout.

    python bench/slot_fragmentation.py [--cache-gib 16] [--reps 5] [--order 8000,4000,16000]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch
from tqdm import tqdm

from ucm.tiers import base, create_store
from ucm.tiers.planes import copier_path

BLOCK_TOKENS = 16
KV_BYTES_PER_TOKEN = 57344  # Qwen2.5-7B, bfloat16: 28 layers x 2 x 4 heads x 128 x 2 bytes
LAYERS = 28


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache-gib", type=float, default=16.0)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--order", default="8000,4000,16000")
    ap.add_argument("--concurrency", default="1,2,4")
    ap.add_argument("--hit", type=float, default=0.8)
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    block_bytes = BLOCK_TOKENS * KV_BYTES_PER_TOKEN
    layer_bytes = block_bytes // LAYERS
    slots = int(a.cache_gib * (1 << 30)) // block_bytes
    tiny = LAYERS * 8  # 8 bytes a plane: the plans only depend on slot numbers
    store = create_store("UcmDramStore", {"kv_block_size": tiny, "max_cache_size": tiny * slots, "planes": LAYERS})
    kv = [torch.zeros(1 << 17, 8, dtype=torch.uint8) for _ in range(LAYERS)]
    calls: list = []
    real = store._submit_planes
    store._submit_planes = lambda views, plan, to_pool, task, keys: calls.append(plan) or real(views, plan, to_pool, task, keys)
    counter = [0]

    def prompt(n_blocks):
        counter[0] += 1
        return [f"p{counter[0]}-{i}".encode() for i in range(n_blocks)]

    def dump(prompts):
        """Chunked prefill: 16384 tokens a step; each step's new blocks in one staged dump."""
        budget, step, out = 1024, [], []
        for p in prompts:
            for k in p:
                step.append(k)
                if len(step) == budget:
                    out.append(step)
                    step = []
        out += [step] if step else []
        plans = []
        for keys in out:
            calls.clear()
            rows = list(range(len(keys)))
            failed = set()
            for lo, hi in base.stages(len(keys), block_bytes):
                bw = store.reserve_blocks(keys[lo:hi], rows[lo:hi])
                store.write_planes(bw, kv, 0)
                store.wait(bw.task)
                failed |= bw.task.failed_ids  # refused: more in flight than the pool holds
            plans += list(calls)
            store.commit([k for k in keys if k not in failed])
            store.commit([k for k in keys if k in failed], False)
        return plans

    def load(keys):
        calls.clear()
        store.wait(store.load_blocks(keys, kv, list(range(len(keys)))))  # evicted blocks just miss
        return list(calls)

    rows = []
    cells = [(int(L), int(c)) for L in a.order.split(",") for c in a.concurrency.split(",")]
    for L, c in tqdm(cells, desc="cells", leave=False):
        nb = L // BLOCK_TOKENS
        cell = {"dump": [], "load100": [], "load80": []}
        for _ in range(a.reps):
            cell["dump"] += dump([prompt(nb) for _ in range(c)])  # full pass, connector on
            A, B = [prompt(nb) for _ in range(c)], [prompt(nb) for _ in range(c)]
            dump(A + B)  # store pass
            cell["load100"] += load([k for p in A for k in p[:nb - 1]])
            hit = int(a.hit * nb)
            cell["load80"] += load([k for p in B for k in p[:hit]])
            cell["dump"] += dump([prompt(nb - hit) for _ in B])  # the 80 % pass stores its new tails
        row = {"L": L, "c": c}
        for kind, plans in cell.items():
            paths = [copier_path(p, layer_bytes) for p in plans]
            row[kind] = {"calls": len(plans), "median_runs": statistics.median(len(p.runs) for p in plans),
                         "max_runs": max(len(p.runs) for p in plans),
                         "paths": {x: paths.count(x) for x in sorted(set(paths))}}
        rows.append(row)
        print(json.dumps(row), flush=True)
    store.close()
    res = {"slots": slots, "block_bytes": block_bytes, "reps": a.reps, "order": a.order, "rows": rows,
           "command": " ".join(["python"] + sys.argv)}
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)
    return res


if __name__ == "__main__":
    main()
