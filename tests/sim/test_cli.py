"""The command line of the simulator, exactly as documented."""
from __future__ import annotations

import csv
import json

import pytest

from tests.sim.conftest import run_sim
from ucm.sim.trace import load_jsonl

REQUIRED = ["trace", "mode", "eviction", "admission", "capacity_blocks", "accesses", "hits", "hit_ratio",
            "prefix_hit_ratio"]


@pytest.mark.parametrize("mode", ["raw", "prefix"])
def test_cli_last_line_is_json_and_results_file(tmp_path, fixture_trace, mode):
    out = tmp_path / "run"
    p = run_sim([f"trace={fixture_trace}", f"mode={mode}", "eviction=arc", "admission=always",
                 "capacity_blocks=500", f"hydra.run.dir={out}"], tmp_path)
    assert p.returncode == 0, p.stderr
    last = p.stdout.strip().splitlines()[-1]
    res = json.loads(last)
    for k in REQUIRED:
        assert k in res, k
    assert res["trace"] == fixture_trace and res["mode"] == mode and res["eviction"] == "arc"
    assert res["capacity_blocks"] == 500
    assert res["accesses"] == load_jsonl(fixture_trace).n_accesses
    assert 0.0 <= res["prefix_hit_ratio"] <= 1.0 and res["hits"] <= res["accesses"]
    assert json.loads((out / "result.json").read_text())["hits"] == res["hits"]


def test_cli_bad_arguments(tmp_path, fixture_trace):
    p = run_sim(["trace=/no/such/file.jsonl", "capacity_blocks=10", f"hydra.run.dir={tmp_path / 'a'}"], tmp_path)
    assert p.returncode != 0 and "trace file not found" in p.stderr
    p = run_sim([f"trace={fixture_trace}", f"hydra.run.dir={tmp_path / 'b'}"], tmp_path)
    assert p.returncode != 0 and "capacity_blocks" in p.stderr
    p = run_sim([f"trace={fixture_trace}", "capacity_blocks=10", "eviction=nope"], tmp_path)
    assert p.returncode != 0


def test_cli_synthetic_and_chain(tmp_path):
    p = run_sim(["trace=zipf", "synthetic.zipf.n_accesses=20000", "synthetic.zipf.n_objects=5000", "mode=raw",
                 "eviction=s3fifo", "admission=tinylfu", "capacity_blocks=300", "with_belady=true",
                 "lower_tiers=[{name: disk, capacity_blocks: 2000}]", f"hydra.run.dir={tmp_path / 'z'}"], tmp_path)
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout.strip().splitlines()[-1])
    assert res["accesses"] == 20000 and set(res["tiers"]) == {"dram", "disk"}
    assert res["tiers"]["disk"]["hits"] > 0
    assert res["belady_hit_ratio"] >= res["tiers"]["dram"]["hit_ratio"]


def test_sweep_writes_csv_and_plot(tmp_path, fixture_trace):
    sweep = tmp_path / "sweep"
    p = run_sim(["-m", f"trace={fixture_trace}", "mode=prefix", "eviction=lru,sieve,belady",
                 "capacity_blocks=200,2000", "progress=false", f"hydra.sweep.dir={sweep}"], tmp_path)
    assert p.returncode == 0, p.stderr
    rows = list(csv.DictReader(open(sweep / "sweep.csv")))
    assert len(rows) == 6
    assert {r["eviction"] for r in rows} == {"lru", "sieve", "belady"}
    assert (sweep / "sweep.png").stat().st_size > 1000
    by = {(r["eviction"], r["capacity_blocks"]): float(r["prefix_hit_ratio"]) for r in rows}
    assert by[("belady", "2000")] >= by[("lru", "2000")]


def test_sweep_joblib_launcher(tmp_path, fixture_trace):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason="hydra-joblib-launcher is not installed")
    sweep = tmp_path / "sweep"
    p = run_sim(["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"trace={fixture_trace}",
                 "eviction=lru,arc", "capacity_blocks=300", "progress=false", f"hydra.sweep.dir={sweep}"], tmp_path)
    assert p.returncode == 0, p.stderr
    assert len(list(csv.DictReader(open(sweep / "sweep.csv")))) == 2


def test_sweep_submitit_launcher_local(tmp_path, fixture_trace):
    """The cluster path of docs/policies.md: Hydra's submitit launcher, with submitit's local
    executor (each job pickled and run in a process of its own, as on Slurm), feeds the same
    collector: one CSV row per job."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="hydra-submitit-launcher is not installed")
    sweep = tmp_path / "sweep"
    p = run_sim(["-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5", f"trace={fixture_trace}",
                 "eviction=lru,arc", "capacity_blocks=300", "progress=false", f"hydra.sweep.dir={sweep}"], tmp_path)
    assert p.returncode == 0, p.stderr
    rows = list(csv.DictReader(open(sweep / "sweep.csv")))
    assert sorted(r["eviction"] for r in rows) == ["arc", "lru"]
