"""The DRAM -> disk chain: blocks that DRAM evicts spill to disk, and a new process (with the
Hydra form of the config) loads them back from disk with identical outputs."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.vllm import engine

ROOT = Path(__file__).resolve().parents[2]


def _run(tmp_path: Path, name: str, model: str, ktc, **engine_kw) -> dict:
    out = tmp_path / f"{name}.json"
    args = dict(model=model, ktc=ktc, prompt_set="distinct", out=str(out), engine_kw=engine_kw)
    proc = subprocess.run([sys.executable, "-m", "tests.vllm.run_offline", json.dumps(args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return json.loads(out.read_text())


def test_blocks_come_back_from_disk_in_a_new_process(tiny_model, baseline, tmp_path):
    block_bytes = 2 * 2 * engine.BLOCK * 2 * 32 * 4
    disk = tmp_path / "spill"
    dram_cap = 2 * block_bytes  # 2 blocks of DRAM: nearly everything spills
    disk_cap = 64 * block_bytes
    first = _run(tmp_path, "first", tiny_model, engine.ktc(
        "dram_disk", {"max_cache_size": dram_cap, "disk": {"path": str(disk), "max_size": disk_cap}}))
    assert first["totals"]["hit_tokens"] == 0
    engine.assert_same_outputs(first["outputs"], baseline["distinct"])
    files = [p for p in disk.rglob("*") if p.is_file()]
    assert files, "nothing spilled to disk"
    assert sum(p.stat().st_size for p in files) <= disk_cap

    # a new process with room in DRAM, the same disk, configured through Hydra
    # (conf/store/dram_disk.yaml + overrides)
    second = _run(tmp_path, "second", tiny_model, engine.ktc_hydra(
        "dram_disk", [f"store.max_cache_size={32 * block_bytes}", f"store.disk.path={disk}",
                      f"store.disk.max_size={disk_cap}"]))
    t = second["totals"]
    # 3 prompts x 9 full blocks were stored: the 2 blocks left in the first process's DRAM are
    # gone (the first prompt's first two), the 25 others spilled to disk, so prompts 2 and 3 hit fully.
    assert [o["cached"] for o in second["outputs"]] == [0, 9 * engine.BLOCK, 9 * engine.BLOCK]
    assert t["hit_tokens"] == 18 * engine.BLOCK and t["load_failed_blocks"] == 0, t
    chain = second["store"]
    assert chain["lower_hits"] == 18, chain  # each block read from disk once (first layer), then from DRAM
    engine.assert_same_outputs(second["outputs"], baseline["distinct"])

    # the same disk with disk hits turned off (disk.hits=never): no hit at all, the same outputs
    third = _run(tmp_path, "third", tiny_model, engine.ktc_hydra(
        "dram_disk", [f"store.max_cache_size={32 * block_bytes}", f"store.disk.path={disk}",
                      f"store.disk.max_size={disk_cap}", "store.disk.hits=never"]))
    assert [o["cached"] for o in third["outputs"]] == [0, 0, 0] and third["totals"]["hit_tokens"] == 0
    assert third["store"]["lower_hits"] == 0 and third["store"]["slow_hits"]["refused_lookups"] >= 2, third["store"]
    assert third["totals"]["disk_hits_refused"] >= 2 and third["totals"]["refusals"] == 0, third["totals"]
    engine.assert_same_outputs(third["outputs"], baseline["distinct"])


def test_a_disk_behind_drops_victims_and_outputs_stay_identical(tiny_model, tmp_path):
    """A write queue of one block (disk.max_write_backlog): DRAM victims that arrive while a file is
    pending are dropped, not waited for. Greedy outputs stay identical to vLLM alone (one request a
    step, so each prompt's blocks evict the last one's), the spill holds only what was written, and
    a new process reading that spill still computes the same tokens."""
    block_bytes = 2 * 2 * engine.BLOCK * 2 * 32 * 4
    disk = tmp_path / "spill"
    alone = _run(tmp_path, "alone", tiny_model, None, max_num_seqs=1)
    first = _run(tmp_path, "first", tiny_model, engine.ktc(
        "dram_disk", {"max_cache_size": 12 * block_bytes, "demote_ahead": 0.0,
                      "disk": {"path": str(disk), "max_size": 64 * block_bytes, "max_write_backlog": block_bytes}}),
        max_num_seqs=1)
    engine.assert_same_outputs(first["outputs"], alone["outputs"])
    dram, dsk = first["store"]["tiers"]
    assert dram["evictions"] == dram["demoted"] + dram["dropped"] and dram["dropped"] > 0, dram
    assert dsk["written"] == dram["demoted"] > 0, (dram, dsk)
    second = _run(tmp_path, "second", tiny_model, engine.ktc_hydra(
        "dram_disk", [f"store.max_cache_size={32 * block_bytes}", f"store.disk.path={disk}",
                      f"store.disk.max_size={64 * block_bytes}"]), max_num_seqs=1)
    engine.assert_same_outputs(second["outputs"], alone["outputs"])
    # victims leave tail first, so the disk may hold no request's first block: hits only from what it holds
    assert second["totals"]["load_failed_blocks"] == 0 and second["store"]["lower_hits"] <= dsk["written"]
