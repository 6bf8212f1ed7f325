"""The connector on a GPU with vLLM 0.26 (not part of the CPU suite; run by hand on the device):

    source .gpu/device_setup.sh && PYTHONPATH=$PWD:$PYTHONPATH python3 -m tests.vllm.gpu_check --out $OUT [--load-mode async] [--tp 2]

Tiny random-weight Llama in bf16 (FlashAttention), vLLM's prefix cache off: a run without ucm,
then with ucm (DRAM): first pass dumps, second pass must hit every full block with the same greedy
tokens; then an injected load failure must be recomputed with the same tokens. Writes a JSON.
``--skip-failure`` leaves the injected failure out. vLLM 0.26 mishandles a failed same-step
(layer-wise) load of any connector except on its V1 runner with async scheduling off: the V2 runner
keeps the failed blocks as computed, async scheduling on or off (different tokens,
vllm-project/vllm#49250), and the V1 runner with async scheduling crashes (an output token read as a
placeholder id, vllm-project/vllm#34484; H200, 2026-11-28). So the hit pass runs with vLLM's defaults
and ``--skip-failure``; the failure pass only on V1 with ``UCM_GPU_ASYNC_SCHEDULING=0``.
With ``--tp 2`` (two GPUs) the stores live in the worker processes: no failure injection and no
connector counters; the check is identical greedy tokens and every full block hit (no garbling
across ranks).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from typing import Optional

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=".")
    ap.add_argument("--model-dir", default="/tmp/ucm-tiny-bf16")
    ap.add_argument("--load-mode", default="layerwise", choices=["layerwise", "async"])
    ap.add_argument("--tp", type=int, default=1, help="tensor-parallel size (2: two GPUs)")
    ap.add_argument("--skip-failure", action="store_true",
                    help="no injected load failure: the hits and greedy tokens only (see the module docstring)")
    ap.add_argument("--cross-layer", action="store_true",
                    help="ucm_cross_layer (run with VLLM_USE_V2_MODEL_RUNNER=0: only the V1 runner has that layout)")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    import torch

    from tests.vllm import engine
    from tests.vllm.test_offline import _failing_load
    from ucm.integration.vllm import compat, stats
    from ucm.integration.vllm.tiny_model import make_tiny_model

    res: dict = dict(vllm=compat.VLLM_VERSION, torch=torch.__version__,
                     device=torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")
    model = make_tiny_model(a.model_dir, hidden_size=256, num_heads=4, num_kv_heads=2, head_dim=64,
                            intermediate_size=512, dtype="bfloat16")
    kw = dict(dtype="bfloat16", gpu_memory_utilization=0.2, block_size=16, tensor_parallel_size=a.tp)
    if os.environ.get("UCM_GPU_ASYNC_SCHEDULING") is not None:
        kw["async_scheduling"] = os.environ["UCM_GPU_ASYNC_SCHEDULING"] == "1"
    res["engine_kwargs"] = kw
    res["env"] = {k: os.environ.get(k) for k in ("VLLM_USE_V2_MODEL_RUNNER", "UCM_GPU_ASYNC_SCHEDULING")}
    res["cross_layer"] = a.cross_layer
    texts = engine.prompts("shared")
    t0 = time.time()
    with engine.llm(model, None, **kw) as llm:
        base = engine.generate(llm, texts)
    res["baseline_s"] = time.time() - t0
    t0 = time.time()
    res["load_mode"] = a.load_mode
    if a.tp > 1:
        return _check_tp(a, res, model, kw, texts, base, t0)
    extra = dict(ucm_load_mode=a.load_mode, ucm_cross_layer=True) if a.cross_layer else dict(ucm_load_mode=a.load_mode)
    with engine.llm(model, engine.ktc(config={"max_cache_size": 256 << 20}, **extra), **kw) as llm:
        store = engine.live_store()
        stats.reset_totals()
        first = engine.generate(llm, texts)
        res["first_totals"] = stats.totals()
        stats.reset_totals()
        second = engine.generate(llm, texts)
        res["second_totals"] = stats.totals()
        if a.skip_failure:
            return _finish(a, res, base, first, second, t0, store)
        injected = _failing_load(store, every=3)
        stats.reset_totals()
        third = engine.generate(llm, texts)
        res["failure_totals"] = stats.totals()
        res["injected_failures"] = injected["failed"]
        for name in ("load", "load_blocks", "open_blocks", "read_planes"):  # undo the wrappers
            setattr(store, name, getattr(type(store), name).__get__(store))
        _failing_load(store, every=3, garbage=False)
        fourth = engine.generate(llm, texts)
        res["store"] = store.stats()
    _finish(a, res, base, first, second, t0, store, third, fourth)


def _finish(a, res: dict, base: list, first: list, second: list, t0: float, store,
            third: Optional[list] = None, fourth: Optional[list] = None) -> None:
    """The verdict: every pass's greedy tokens equal the baseline's, the second pass hits every full
    block (layer-wise when asked), and the injected failures (unless skipped) were reported."""
    res["connector_s"] = time.time() - t0
    if "store" not in res:
        res["store"] = store.stats()
    runs = dict(first=first, second=second) if third is None else dict(first=first, second=second,
                                                                        third=third, fourth_no_garbage=fourth)
    res["cached"] = {k: [o["cached"] for o in v] for k, v in runs.items() if k != "fourth_no_garbage"}
    res["expected_second"] = [(o["prompt_len"] - 1) // 16 * 16 for o in second]
    res["tokens_equal"] = {k: [o["tokens"] for o in v] == [o["tokens"] for o in base] for k, v in runs.items()}
    res["runs"] = dict(base=base, **runs)
    res["max_logprob_diff_second"] = max(abs(x - y) for o, b in zip(second, base)
                                         for x, y in zip(o["logprobs"], b["logprobs"]))
    layerwise = a.load_mode == "layerwise" and not a.cross_layer
    res["ok"] = (all(res["tokens_equal"].values()) and res["cached"]["second"] == res["expected_second"]
                 and (third is None or res["failure_totals"]["load_failed_blocks"] > 0)
                 and (res["second_totals"]["layerwise_blocks"] > 0) == layerwise)
    print(json.dumps(res, indent=1, default=str))
    name = f"gpu_check_{a.load_mode}{'_cross_layer' if a.cross_layer else ''}{'_no_failure' if third is None else ''}.json"
    with open(os.path.join(a.out, name), "w") as f:
        json.dump(res, f, indent=1, default=str)


def _check_tp(a, res: dict, model: str, kw: dict, texts: list, base: list, t0: float) -> None:
    from tests.vllm import engine

    with engine.llm(model, engine.ktc(config={"max_cache_size": 256 << 20}, ucm_load_mode=a.load_mode), **kw) as llm:
        first = engine.generate(llm, texts)
        second = engine.generate(llm, texts)
    res["connector_s"] = time.time() - t0
    res["cached"] = dict(first=[o["cached"] for o in first], second=[o["cached"] for o in second])
    res["expected_second"] = [(o["prompt_len"] - 1) // 16 * 16 for o in second]
    res["tokens_equal"] = dict(first=[o["tokens"] for o in first] == [o["tokens"] for o in base],
                               second=[o["tokens"] for o in second] == [o["tokens"] for o in base])
    res["runs"] = dict(base=base, second=second)
    res["ok"] = all(res["tokens_equal"].values()) and res["cached"]["second"] == res["expected_second"]
    print(json.dumps(res, indent=1, default=str))
    with open(os.path.join(a.out, f"gpu_check_tp{a.tp}_{a.load_mode}.json"), "w") as f:
        json.dump(res, f, indent=1, default=str)


if __name__ == "__main__":
    main()
