"""bench/gpu_lanes.py: lane choice from copy numbers, and the job runner end to end (CPU only)."""
import os
import subprocess
import sys
import time

import pytest

BENCH = os.path.join(os.path.dirname(__file__), "..", "..", "bench")
sys.path.insert(0, BENCH)

import gpu_lanes  # noqa: E402

SCRIPT = os.path.join(BENCH, "gpu_lanes.py")


def test_no_interference_gives_all_gpus():
    solo = {0: 50.0, 1: 50.0, 2: 49.0, 3: 51.0}
    assert gpu_lanes.choose_lanes(solo, {0: 49.0, 1: 48.0, 2: 47.0, 3: 50.0}, None, 0.9) == [0, 1, 2, 3]


def test_switch_pairs_give_one_gpu_per_switch():
    solo = {g: 50.0 for g in range(4)}
    together = {g: 26.0 for g in range(4)}
    pairs = {(i, j): ((26.0, 26.0) if {i, j} in ({0, 1}, {2, 3}) else (49.0, 49.5))
             for i in range(4) for j in range(i + 1, 4)}
    assert gpu_lanes.choose_lanes(solo, together, pairs, 0.9) == [0, 2]
    # one side dropping is enough for a conflict; an unmeasured pair counts as one
    pairs[(0, 2)] = (49.0, 40.0)
    del pairs[(1, 3)]
    assert gpu_lanes.choose_lanes(solo, together, pairs, 0.9) == [0, 3]


def test_one_gpu():
    assert gpu_lanes.choose_lanes({0: 50.0}, None, None, 0.9) == [0]


def _run(tmp_path, *jobs, timeout_s=None, lanes="0,1"):
    cmd = [sys.executable, SCRIPT, "run", "--lanes", lanes, "--log-dir", str(tmp_path)]
    if timeout_s is not None:
        cmd += ["--timeout-s", str(timeout_s)]
    for j in jobs:
        cmd += ["--job", j]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30)


STAMPED = 'echo "start $(date +%s.%N) gpu=$CUDA_VISIBLE_DEVICES lane=$LANE job=$JOB"; sleep 0.3; echo "end $(date +%s.%N)"'


def test_run_jobs_on_lanes_without_overlap(tmp_path):
    r = _run(tmp_path, STAMPED, STAMPED, STAMPED)
    assert r.returncode == 0, r.stdout + r.stderr
    spans = {}
    for n in (1, 2, 3):
        lines = (tmp_path / f"job{n}.log").read_text().split()
        start, gpu, lane, job, end = lines[1], lines[2], lines[3], lines[4], lines[6]
        assert gpu.split("=")[1] == lane.split("=")[1] in ("0", "1") and job == f"job={n}"
        spans.setdefault(gpu, []).append((float(start), float(end)))
        assert f"[job{n} gpu{gpu.split('=')[1]}] start" in r.stdout
    assert sorted(len(v) for v in spans.values()) == [1, 2]  # both lanes used, 3rd job waited
    for v in spans.values():
        v.sort()
        assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(v, v[1:]))
    rows = [ln.split() for ln in r.stdout.splitlines() if ln.split()[:1] in (["1"], ["2"], ["3"])]
    assert [(row[0], row[2]) for row in rows] == [("1", "0"), ("2", "0"), ("3", "0")]  # summary: job, rc
    assert all(len(ln) <= 120 for ln in r.stdout.splitlines() if not ln.startswith("[job"))  # command cut to 80


def test_failing_job_gives_exit_1(tmp_path):
    r = _run(tmp_path, "true", "echo oops; exit 3", "true")
    assert r.returncode == 1
    row = next(ln for ln in r.stdout.splitlines() if ln.rstrip().endswith("exit 3"))
    assert row.split()[:3] == ["2", row.split()[1], "3"]
    assert (tmp_path / "job2.log").read_text() == "oops\n"


def test_timeout_kills_job(tmp_path):
    t0 = time.monotonic()
    r = _run(tmp_path, "sleep 30", "echo fine", timeout_s=0.5, lanes="0")
    assert time.monotonic() - t0 < 5
    assert r.returncode == 1
    assert "TIMED OUT" in r.stdout and "[job2 gpu0] fine" in r.stdout


@pytest.mark.parametrize("lanes", ["", "0,0"])
def test_bad_lanes(tmp_path, lanes):
    assert _run(tmp_path, "true", lanes=lanes).returncode == 2
