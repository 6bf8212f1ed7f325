"""bench/bandwidth_table.py: several dram_bandwidth.py results of one machine in one table and plot."""
from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "bench"))

import bandwidth_table as bt  # noqa: E402


def _result(path, env=None, ratio=0.9):
    rows = [dict(layout=lay, api="connector", dump_gbps=50.0 * ratio, dump_ratio=ratio, dump_launch_ms=3.0,
                 load_gbps=49.0 * ratio, load_ratio=ratio - 0.01, load_launch_ms=2.5)
            for lay in ("vllm", "vllm/seq", "per-layer")]
    res = dict(date="2026-11-28 21:35 UTC", gpu="NVIDIA H200", torch="2.11.0+cu130", plain_h2d_gbps=55.2,
               plain_d2h_gbps=55.1, command="python bench/dram_bandwidth.py --blocks 1024", rows=rows)
    if env is not None:
        res["env"] = env
    path.write_text(json.dumps(res))
    return str(path)


def test_runs_are_named_by_their_switches_and_tabled_per_layout(tmp_path):
    a = _result(tmp_path / "bw_DEFER_DUMPS=0.json")  # older result: named by its file
    b = _result(tmp_path / "run2.json", env={"UCM_STAGE_HEAD_MIB": "512"}, ratio=0.8)
    c = _result(tmp_path / "run3.json", env={})
    out = tmp_path / "out"
    bt.main([a, b, c, "--out", str(out), "--layouts", "vllm,vllm/seq"])
    md = (out / "bandwidth.md").read_text()
    assert "| DEFER_DUMPS=0 | vllm/seq | connector | 45.00 | 0.90 | 3.00 | 44.10 | 0.89 | 2.50 |" in md
    assert "| UCM_STAGE_HEAD_MIB=512 | vllm | connector | 40.00 | 0.80 |" in md
    assert "| defaults | vllm |" in md and "per-layer" not in md  # layouts not asked for are left out
    assert "NVIDIA H200" in md and ">= 0.9" in md
    assert (out / "bandwidth.png").stat().st_size > 1000
