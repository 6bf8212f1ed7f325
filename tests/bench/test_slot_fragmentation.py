"""bench/slot_fragmentation.py: the copier path rule it reports, and a replay on a small pool."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "bench"))

import slot_fragmentation as sf  # noqa: E402
from ucm.tiers.planes import RowPlan, copier_path  # noqa: E402


def test_the_copiers_path_rule():
    layer = 32 << 10  # 8 blocks of a layer make the 256 KiB a DMA needs
    assert copier_path(RowPlan(list(range(100)), list(range(100))), layer) == "direct"
    twenty = [s for r in range(20) for s in range(100 * r, 100 * r + 10)]  # 20 runs of 10 slots
    # onto consecutive rows: as many DMAs as staging would need, so direct
    assert copier_path(RowPlan(twenty, list(range(200))), layer) == "direct"
    # onto rows that break every 2 blocks (100 pairs for 20 slot runs): staged
    assert copier_path(RowPlan(twenty, [r * 3 + j for r in range(100) for j in range(2)]), layer) == "staged"
    assert copier_path(RowPlan(list(range(0, 200, 2)), list(range(100))), layer) == "uva-kernel"


def test_churn_spreads_a_prompts_blocks_over_several_slot_runs():
    # 0.5 GiB holds 585 blocks of 917 KB: 4k-token prompts (250 blocks) evict each other
    res = sf.main(["--cache-gib", "0.5", "--reps", "2", "--order", "4000", "--concurrency", "1"])
    row = res["rows"][0]
    assert res["slots"] == (1 << 29) // (16 * 57344)
    assert row["dump"]["calls"] == 2 * 2 and row["load100"]["calls"] == 2 and row["load80"]["calls"] == 2
    assert row["load100"]["max_runs"] > 1, "after evictions a prompt's blocks no longer sit in one run"
