"""``bench/trace_replay.py`` end to end on real vLLM (CPU build): full compute and ucm replay a small
multi-turn trace, and the second turns are served from ucm's DRAM once vLLM's small KV cache has
dropped the first turns. The script builds its engines from its own arguments through
``prefix_ttft.Bench``; an option added to one script only broke every mode of the other on the
H200 (2026-11-29), which only a real run shows."""
from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONVERSATIONS, TURN1_BLOCKS, MORE_BLOCKS = 12, 8, 4


def _trace(path) -> None:
    """Mooncake JSONL: every conversation's first turn, then every second turn (its first turn's ids
    and more), so by the second turns the first turns' blocks are long out of a 40-block KV cache."""
    rows = []
    for turn in (0, 1):
        for c in range(CONVERSATIONS):
            ids = [100 * c + i for i in range(TURN1_BLOCKS + turn * MORE_BLOCKS)]
            rows.append(dict(timestamp=1000 * len(rows), input_length=512 * len(ids), output_length=2, hash_ids=ids))
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_replay_full_and_ucm_complete_and_ucm_serves_second_turns_from_dram(tiny_model, tmp_path):
    trace, out = tmp_path / "trace.jsonl", tmp_path / "out"
    _trace(trace)
    env = dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="0", PYTHONPATH=ROOT)
    cmd = [sys.executable, os.path.join(ROOT, "bench", "trace_replay.py"), "--model", tiny_model,
           "--trace", str(trace), "--requests", str(2 * CONVERSATIONS), "--block-tokens", "32",
           "--max-model-len", "1024", "--time-scale", "20", "--max-output", "2", "--num-gpu-blocks", "40",
           "--cpu-gib", "0.01", "--modes", "full,ucm_lru", "--out", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    parts = {m: json.loads((out / f"trace_replay_part_{m}.json").read_text())["summary"] for m in ("full", "ucm_lru")}
    for mode, s in parts.items():
        assert (s["completed"], s["aborted"], s["cut_off"]) == (2 * CONVERSATIONS, 0, False), (mode, s)
    ucm = parts["ucm_lru"]["ucm"]
    # the second turns' first 8 blocks (256 tokens) come back from DRAM in ucm, are recomputed in full
    assert ucm["hit_tokens"] >= CONVERSATIONS // 2 * TURN1_BLOCKS * 32 and ucm["loaded_bytes"] > 0, ucm
    assert parts["ucm_lru"]["mean_cached_tokens"] > parts["full"]["mean_cached_tokens"] + 64, parts
    assert list(out.glob("trace_replay_*.md")) and list(out.glob("trace_replay_*.png"))
