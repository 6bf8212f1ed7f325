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
import collections
import json
import statistics
import sys

import torch
from tqdm import tqdm

from ucm.tiers import create_store
from ucm.tiers.planes import copier_path

BLOCK_TOKENS = 16
KV_BYTES_PER_TOKEN = 57344  # Qwen2.5-7B, bfloat16: 28 layers x 2 x 4 heads x 128 x 2 bytes
LAYERS = 28


class VllmBlocks:
    """vLLM's free block queue (v1 ``BlockPool``, 0.26 and 0.32, prefix caching on): allocation takes
    from the front; a finished request's blocks, which carry hashes, are appended at the back in
    reverse (tail first: ``free_blocks(reversed(...))``); a prefix-cache reset keeps the order."""

    def __init__(self, n: int):
        self.free = collections.deque(range(1, n))  # block 0 is vLLM's null block

    def take(self, n: int) -> list[int]:
        return [self.free.popleft() for _ in range(n)]

    def give_back(self, rows: list[int]) -> None:
        self.free.extend(reversed(rows))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache-gib", type=float, default=16.0)
    ap.add_argument("--gpu-blocks", type=int, default=111320, help="vLLM's KV blocks (H200, 7B, gpu_util 0.8)")
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
    kv = [torch.zeros(a.gpu_blocks, 8, dtype=torch.uint8) for _ in range(LAYERS)]
    gpu = VllmBlocks(a.gpu_blocks)
    calls: list = []
    real = store._submit_planes
    store._submit_planes = lambda views, plan, to_pool, task, keys, whole=False: (
        calls.append(plan) if len(plan) else None) or real(views, plan, to_pool, task, keys, whole)
    counter = [0]

    def prompt(n_blocks):
        counter[0] += 1
        return [f"p{counter[0]}-{i}".encode() for i in range(n_blocks)]

    def dump_steps(pairs):
        """Chunked prefill: 16384 tokens a step; each step's new blocks (key, row) in one ``dump_rows``."""
        plans = []
        for lo in range(0, len(pairs), 1024):
            keys, rows = [k for k, _ in pairs[lo:lo + 1024]], [r for _, r in pairs[lo:lo + 1024]]
            calls.clear()
            task = store.dump_rows(keys, kv, rows)
            store.wait(task)
            plans += list(calls)
            failed = task.failed_ids  # refused: more in flight than the pool holds
            store.commit([k for k in keys if k not in failed])
            store.commit([k for k in keys if k in failed], False)
        return plans

    def run_pass(prompts, loaded=0):
        """One pass: vLLM gives each prompt its rows; the first ``loaded`` blocks of each load from
        the store, the rest are computed and dumped; the rows go back when the pass ends.
        Returns (load plans, dump plans)."""
        rows = [gpu.take(len(p)) for p in prompts]
        calls.clear()
        if loaded:
            store.wait(store.load_blocks([k for p in prompts for k in p[:loaded]], kv,
                                         [r for rs in rows for r in rs[:loaded]]))  # evicted blocks just miss
        loads = list(calls)
        dumps = dump_steps([(k, r) for p, rs in zip(prompts, rows) for k, r in list(zip(p, rs))[loaded:]])
        for rs in rows:
            gpu.give_back(rs)
        return loads, dumps

    rows = []
    cells = [(int(L), int(c)) for L in a.order.split(",") for c in a.concurrency.split(",")]
    for L, c in tqdm(cells, desc="cells", leave=False):
        nb = L // BLOCK_TOKENS
        cell = {"dump": [], "load100": [], "load80": []}
        for _ in range(a.reps):
            cell["dump"] += run_pass([prompt(nb) for _ in range(c)])[1]  # full pass, connector on
            A, B = [prompt(nb) for _ in range(c)], [prompt(nb) for _ in range(c)]
            run_pass(A + B)  # store pass
            cell["load100"] += run_pass(A, loaded=nb - 1)[0]  # the last block is computed (and stored)
            hit = int(a.hit * nb)
            loads, dumps = run_pass([p[:hit] + prompt(nb - hit) for p in B], loaded=hit)
            cell["load80"] += loads
            cell["dump"] += dumps
        row = {"L": L, "c": c}
        for kind, plans in cell.items():
            paths = [copier_path(p, layer_bytes) for p in plans]
            row[kind] = {"calls": len(plans), "median_runs": statistics.median(len(p.runs) for p in plans),
                         "max_runs": max(len(p.runs) for p in plans),
                         "median_pairs": statistics.median(len(p.pairs) for p in plans),
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
