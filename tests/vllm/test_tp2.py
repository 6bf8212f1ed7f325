"""Tensor parallel 2 on the CPU: each rank stores and loads its own shard under its own keys, the
scheduler (another process) asks both ranks over IPC and takes a block only if both hold it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.vllm import engine

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="TP=2 on the CPU needs 2 cores")
def test_tp2_second_pass_hits_on_both_ranks(tiny_model, baseline, tmp_path):
    out = tmp_path / "tp2.json"
    env = dict(os.environ)
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
    proc = subprocess.run([sys.executable, "-m", "tests.vllm.run_tp2", json.dumps(dict(model=tiny_model, out=str(out)))],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    r = json.loads(out.read_text())
    assert [o["cached"] for o in r["second"]] == [engine.full_blocks(o["prompt_len"]) * engine.BLOCK for o in r["second"]]
    for o, b in zip(r["second"], baseline["shared"]):
        assert o["tokens"] == b["tokens"]  # TP=2 with ucm hits gives TP=1's greedy tokens
    engine.assert_same_outputs(r["second"], r["first"], atol=1e-3)
