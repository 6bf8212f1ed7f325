"""bench/slot_fragmentation.py: a replay of the grid's store traffic on a small pool."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "bench"))

import slot_fragmentation as sf  # noqa: E402


def test_churn_spreads_a_prompts_blocks_over_several_slot_runs():
    # 0.5 GiB holds 585 blocks of 917 KB: 4k-token prompts (250 blocks) evict each other
    res = sf.main(["--cache-gib", "0.5", "--reps", "2", "--order", "4000", "--concurrency", "1"])
    row = res["rows"][0]
    assert res["slots"] == (1 << 29) // (16 * 57344)
    assert row["dump"]["calls"] == 2 * 2 and row["load100"]["calls"] == 2 and row["load80"]["calls"] == 2
    assert row["load100"]["max_runs"] > 1, "after evictions a prompt's blocks no longer sit in one run"
