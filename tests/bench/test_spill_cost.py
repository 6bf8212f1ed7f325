"""bench/spill_cost.py: every block of a dump into a full DRAM reaches the disk tier; with the
demote-ahead the victims leave ahead of the dumps (no gap needed to count them)."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "bench"))

import spill_cost  # noqa: E402


def test_a_full_dram_spills_every_evicted_block(tmp_path):
    r = spill_cost.run(layers=2, layer_kib=1, slots=8, step=4, steps=5, gap_ms=0, demote_ahead=0.5,
                       path=str(tmp_path / "d"))
    # 20 blocks dumped into 8 slots: 12 went down, 4 of them ahead of a dump; all written to files
    assert r["dram"]["evictions"] == r["dram"]["demoted"] == r["disk"]["written"] == r["disk"]["blocks"] == 16
    assert r["dram"]["demoted_ahead"] > 0 and r["dram"]["used_slots"] == 4
    assert r["reserve_ms"] > 0 and r["dump_call_ms"] >= r["reserve_ms"]


def test_disk_hits_come_back_exactly_through_the_dram(tmp_path):
    r = spill_cost.disk_hits(layers=2, layer_kib=1, slots=8, blocks=4, path=str(tmp_path / "h"))
    assert r["blocks"] == 4 and r["load_ms"] > 0 and r["dram"]["filled"] == 4
