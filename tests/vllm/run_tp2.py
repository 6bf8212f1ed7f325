"""TP=2 on the CPU in a fresh process (two worker processes): ``python -m tests.vllm.run_tp2 '<json: model, out>'``."""
from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "0|1")  # one core per rank (one NUMA node here)


def main() -> None:
    args = json.loads(sys.argv[1])
    from tests.vllm import engine

    texts = engine.prompts("shared")
    with engine.llm(args["model"], engine.ktc(config={"max_cache_size": 64 << 20}), tensor_parallel_size=2) as llm:
        first = engine.generate(llm, texts)
        second = engine.generate(llm, texts)
    with open(args["out"], "w") as f:
        json.dump(dict(first=first, second=second), f)


if __name__ == "__main__":
    main()
