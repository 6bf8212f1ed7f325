"""Run one offline vLLM engine in a fresh process (for tests that need a new process):
``python -m tests.vllm.run_offline '<json args>'`` with keys model, ktc (null: no connector), prompt_set,
out, and optionally engine_kw (more LLM arguments)."""
from __future__ import annotations

import json
import os
import sys

for k, v in (("VLLM_CPU_KVCACHE_SPACE", "1"), ("VLLM_ENABLE_V1_MULTIPROCESSING", "0"), ("OMP_NUM_THREADS", "1")):
    os.environ.setdefault(k, v)


def main() -> None:
    args = json.loads(sys.argv[1])
    from tests.vllm import engine
    from ucm.integration.vllm import stats

    with engine.llm(args["model"], args["ktc"], **args.get("engine_kw", {})) as llm:
        stats.reset_totals()
        outs = engine.generate(llm, engine.prompts(args["prompt_set"]))
        store = engine.live_store() if args["ktc"] else None
        result = dict(outputs=outs, totals=stats.totals(), store=store.stats() if store else None)
    with open(args["out"], "w") as f:
        json.dump(result, f, default=str)


if __name__ == "__main__":
    main()
