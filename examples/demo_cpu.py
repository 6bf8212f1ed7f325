#!/usr/bin/env python3
"""The main job on a CPU: real vLLM serving repeated long prompts, with and without ucm.

Makes a small random-weight Llama and a tokenizer offline, then runs the same long prompts twice
through vLLM (its own prefix cache off, so a repeat costs a full prefill) without ucm and with
ucm's DRAM tier (``UnifiedCacheConnectorV1``), and prints the hits and the times.

    python examples/demo_cpu.py [--prompts 8] [--prompt-tokens 1500] [--model-dir DIR]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

for k, v in (("VLLM_CPU_KVCACHE_SPACE", "1"), ("VLLM_ENABLE_V1_MULTIPROCESSING", "0"), ("OMP_NUM_THREADS", "1"),
             ("HF_HUB_OFFLINE", "1"), ("VLLM_NO_USAGE_STATS", "1"), ("VLLM_LOGGING_LEVEL", "WARNING")):
    os.environ.setdefault(k, v)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

KV_TRANSFER_CONFIG = {
    "kv_connector": "UnifiedCacheConnectorV1",
    "kv_connector_module_path": "ucm.integration.vllm.uc_connector",
    "kv_role": "kv_both",
    "kv_connector_extra_config": {"ucm_connector_name": "UcmDramStore",
                                  "ucm_connector_config": {"max_cache_size": 1 << 30}},
}
BLOCK = 32


def run(model: str, prompts: list[str], kv_transfer_config, max_tokens: int) -> dict:
    import gc

    from vllm import LLM, SamplingParams

    from ucm.integration.vllm import stats

    llm = LLM(model, enforce_eager=True, block_size=BLOCK, max_model_len=4096, enable_prefix_caching=False,
              dtype="float32", seed=0, kv_transfer_config=kv_transfer_config)
    sp = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    from ucm.integration.vllm.tiny_model import random_text

    llm.generate([random_text(200, 1)], SamplingParams(max_tokens=1), use_tqdm=False)  # warm-up, other text
    res = {}
    for name in ("first", "repeat"):
        stats.reset_totals()
        t0 = time.perf_counter()
        outs = llm.generate(prompts, sp, use_tqdm=False)
        res[name] = dict(seconds=time.perf_counter() - t0, totals=stats.totals(),
                         cached=sum(o.num_cached_tokens or 0 for o in outs),
                         prompt_tokens=sum(len(o.prompt_token_ids) for o in outs),
                         tokens=[list(o.outputs[0].token_ids) for o in outs])
    llm.llm_engine.engine_core.shutdown()
    del llm
    gc.collect()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--prompt-tokens", type=int, default=1500)
    ap.add_argument("--max-tokens", type=int, default=4)
    ap.add_argument("--model-dir", default=os.path.expanduser("~/.cache/ucm/demo-llama"))
    a = ap.parse_args()

    from ucm.integration.vllm.tiny_model import make_tiny_model, random_text

    t0 = time.perf_counter()
    model = make_tiny_model(a.model_dir, num_layers=4, hidden_size=512, num_heads=8, num_kv_heads=2, head_dim=64,
                            intermediate_size=1024)
    print(f"model: random-weight Llama (4 layers, hidden 512, 8 heads, 2 KV heads) in {a.model_dir} "
          f"({time.perf_counter() - t0:.1f} s)")
    prompts = [random_text(a.prompt_tokens, 100 + i) for i in range(a.prompts)]
    print(f"workload: {a.prompts} prompts x {a.prompt_tokens} tokens, each sent twice; vLLM prefix cache off\n")

    base = run(model, prompts, None, a.max_tokens)
    ucm = run(model, prompts, KV_TRANSFER_CONFIG, a.max_tokens)

    print(f"{'pass':<8}{'vLLM alone (s)':>16}{'vLLM + ucm (s)':>16}{'ucm DRAM hits (tokens)':>26}"
          f"{'loaded (MiB)':>14}{'dumped (MiB)':>14}")
    for name in ("first", "repeat"):
        t = ucm[name]["totals"]
        print(f"{name:<8}{base[name]['seconds']:>16.2f}{ucm[name]['seconds']:>16.2f}"
              f"{int(t['hit_tokens']):>15} / {ucm[name]['prompt_tokens']:<8}"
              f"{t['loaded_bytes'] / 2**20:>14.1f}{t['dumped_bytes'] / 2**20:>14.1f}")
    same = all(base[n]["tokens"] == ucm[n]["tokens"] for n in ("first", "repeat"))
    speedup = base["repeat"]["seconds"] / max(ucm["repeat"]["seconds"], 1e-9)
    print(f"\nrepeat pass: {speedup:.1f}x faster with ucm; greedy tokens identical to vLLM alone: {same}")
    if not same or ucm["repeat"]["totals"]["hit_tokens"] == 0:
        sys.exit(1)


if __name__ == "__main__":
    main()
