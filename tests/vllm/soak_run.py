"""The soak body, run in a fresh process by test_soak.py (so the malloc tunables apply):
``python -m tests.vllm.soak_run '<json: model, disk, out>'``."""
from __future__ import annotations

import gc
import json
import os
import random
import sys
from pathlib import Path

for k, v in (("VLLM_CPU_KVCACHE_SPACE", "1"), ("VLLM_ENABLE_V1_MULTIPROCESSING", "0"), ("OMP_NUM_THREADS", "1")):
    os.environ.setdefault(k, v)

NUM_REQUESTS = 3000
BATCH = 200
DRAM_BLOCKS, DISK_BLOCKS = 16, 48


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    args = json.loads(sys.argv[1])
    from tests.vllm import engine
    from ucm.integration.vllm import stats
    from ucm.integration.vllm.tiny_model import random_text

    block_bytes = 2 * 2 * engine.BLOCK * 2 * 32 * 4
    dram_cap, disk_cap = DRAM_BLOCKS * block_bytes, DISK_BLOCKS * block_bytes
    disk = Path(args["disk"])
    rng = random.Random(0)
    prefixes = [random_text(64, 5000 + i) for i in range(40)]  # 2 blocks each, shared
    texts = [rng.choice(prefixes) + " " + random_text(rng.randint(10, 40), 9000 + i) for i in range(NUM_REQUESTS)]
    cfg = engine.ktc("dram_disk", {"max_cache_size": dram_cap, "disk": {"path": str(disk), "max_size": disk_cap}})
    rss, caps = [], []
    with engine.llm(args["model"], cfg, max_num_seqs=128) as llm:
        chain = engine.live_store()
        stats.reset_totals()
        for start in range(0, NUM_REQUESTS, BATCH):
            outs = engine.generate(llm, texts[start:start + BATCH], max_tokens=2)
            assert len(outs) == len(texts[start:start + BATCH])
            dram, dsk = chain.stats()["tiers"]
            caps.append(dict(dram_slots=dram["used_slots"], dram_pool_bytes=dram["pool_bytes"],
                             disk_used=dsk["used_bytes"], disk_dir=_dir_bytes(disk)))
            gc.collect()
            rss.append(_rss_kib())
        totals = stats.totals()
    with open(args["out"], "w") as f:
        json.dump(dict(rss_kib=rss, caps=caps, totals=totals, dram_cap=dram_cap, disk_cap=disk_cap,
                       dram_slots=DRAM_BLOCKS), f)


if __name__ == "__main__":
    main()
