"""bench/slot_fragmentation.py: the copier path rule it reports, and a replay on a small pool."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "bench"))

import slot_fragmentation as sf  # noqa: E402
from ucm.tiers.planes import RowPlan  # noqa: E402


def test_the_path_rule_is_the_copiers():
    layer = 32 << 10  # 8 blocks of a layer make the 256 KiB a DMA needs
    assert sf.path(RowPlan(list(range(100)), list(range(100))), layer) == "direct"
    nine = [s for r in range(9) for s in range(100 * r, 100 * r + 10)]  # 9 runs of 10 slots
    assert sf.path(RowPlan(nine, list(range(90))), layer) == "staged"
    assert sf.path(RowPlan(list(range(0, 200, 2)), list(range(100))), layer) == "uva-kernel"


def test_churn_spreads_a_prompts_blocks_over_several_slot_runs():
    # 0.5 GiB holds 585 blocks of 917 KB: 4k-token prompts (250 blocks) evict each other
    res = sf.main(["--cache-gib", "0.5", "--reps", "2", "--order", "4000", "--concurrency", "1"])
    row = res["rows"][0]
    assert res["slots"] == (1 << 29) // (16 * 57344)
    assert row["dump"]["calls"] == 2 * 2 and row["load100"]["calls"] == 2 and row["load80"]["calls"] == 2
    assert row["load100"]["max_runs"] > 1, "after evictions a prompt's blocks no longer sit in one run"
