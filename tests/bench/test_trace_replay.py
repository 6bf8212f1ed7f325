"""bench/trace_replay.py: the pure parts (prompt building, arrival compression, percentiles and the
per-mode summary, the merge into json/md), no vLLM needed."""
from __future__ import annotations

import argparse
import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "bench"))

import trace_replay as tr  # noqa: E402

LO, HI, SEED, BT = 10, 900, 1234, 8


def test_block_is_deterministic_and_in_range():
    a = tr.block_of(7, BT, LO, HI, SEED)
    assert a == tr.block_of(7, BT, LO, HI, SEED)
    assert len(a) == BT and all(LO <= t < HI for t in a)
    assert a != tr.block_of(8, BT, LO, HI, SEED)
    assert a != tr.block_of(7, BT, LO, HI, SEED + 1)


def test_prompt_deterministic_without_cache():
    p1 = tr.build_prompt([0, 1, 2], 20, BT, LO, HI, SEED, 0)
    p2 = tr.build_prompt([0, 1, 2], 20, BT, LO, HI, SEED, 0, cache={})
    assert p1 == p2 and len(p1) == 20


def test_shared_hash_ids_give_identical_token_prefixes():
    cache = {}
    a = tr.build_prompt([0, 1, 2, 3], 4 * BT, BT, LO, HI, SEED, 0, cache)
    b = tr.build_prompt([0, 1, 9, 10], 4 * BT, BT, LO, HI, SEED, 1, cache)
    c = tr.build_prompt([5, 1, 2, 3], 4 * BT, BT, LO, HI, SEED, 2, cache)
    assert a[:2 * BT] == b[:2 * BT]
    assert a[2 * BT:3 * BT] != b[2 * BT:3 * BT]
    assert a[:BT] != c[:BT] and a[BT:] == c[BT:]  # a block's tokens do not depend on its position
    # the cache changes nothing
    assert b == tr.build_prompt([0, 1, 9, 10], 4 * BT, BT, LO, HI, SEED, 1)


def test_truncation_and_padding():
    full = tr.build_prompt([3, 4, 5], 3 * BT, BT, LO, HI, SEED, 0)
    cut = tr.build_prompt([3, 4, 5], BT + 3, BT, LO, HI, SEED, 0)
    assert cut == full[:BT + 3]
    # longer than its hash ids: padded with blocks unique to the request
    long0 = tr.build_prompt([3], 3 * BT, BT, LO, HI, SEED, 0)
    long1 = tr.build_prompt([3], 3 * BT, BT, LO, HI, SEED, 1)
    assert len(long0) == 3 * BT and long0[:BT] == full[:BT]
    assert long0[BT:] != long1[BT:]


def test_prompt_length_and_output_tokens():
    assert tr.prompt_length(6758, 1, 16384, 16) == 6758
    assert tr.prompt_length(6758, 16, 16384, 16) == 423  # ceil(6758 / 16)
    assert tr.prompt_length(120000, 1, 16384, 16) == 16384 - 16 - 8
    assert tr.prompt_length(0, 1, 100, 4) == 1
    assert tr.output_tokens(500, 32) == 32 and tr.output_tokens(3, 32) == 3 and tr.output_tokens(0, 32) == 1


def test_arrivals_compressed():
    assert tr.arrivals([1000, 1000, 3000, 11000], 10) == pytest.approx([0, 0, 0.2, 1.0])
    assert tr.arrivals([0, 500], 1) == pytest.approx([0, 0.5])
    assert tr.arrivals([], 5) == []


def _args(**kw):
    d = dict(time_scale=2.0, max_output=4, scale=1.0, max_model_len=64, block_tokens=BT)
    d.update(kw)
    return argparse.Namespace(**d)


def test_plan_and_working_set():
    trace = [dict(timestamp=0, input_length=20, output_length=9, hash_ids=[0, 1, 2]),
             dict(timestamp=2000, input_length=30, output_length=2, hash_ids=[0, 1, 2, 3]),
             dict(timestamp=4000, input_length=500, output_length=2, hash_ids=list(range(10, 80)))]
    reqs = tr.plan(trace, _args())
    assert [r["arrival"] for r in reqs] == pytest.approx([0, 1, 2])
    assert [r["max_tokens"] for r in reqs] == [4, 2, 2]
    assert [r["prompt_len"] for r in reqs] == [20, 30, 64 - 2 - 8]
    # blocks used: {0,1,2} + {0,1,2,3} + 7 blocks of 10.. (54 tokens / 8) -> 4 + 7
    assert tr.working_set_blocks(reqs, BT) == 11


def test_percentile_matches_linear_interpolation():
    xs = [5, 1, 4, 2, 3]
    assert tr.percentile(xs, 50) == 3
    assert tr.percentile(xs, 0) == 1 and tr.percentile(xs, 100) == 5
    assert tr.percentile(xs, 90) == pytest.approx(4.6)
    assert tr.percentile([7], 99) == 7
    assert tr.percentile([], 50) is None
    assert tr.percentile([None, 2.0], 50) == 2.0
    assert tr.percentile(list(range(101)), 99) == pytest.approx(99)


def test_summarize():
    recs = [dict(arrival=0.0, first=0.5, finish=1.0, prompt_len=100, max_tokens=4, cached=10),
            dict(arrival=0.5, first=1.5, finish=2.0, prompt_len=100, max_tokens=4, cached=30),
            dict(arrival=1.0, first=None, finish=None, prompt_len=100, max_tokens=4, cached=None)]
    s = tr.summarize(recs)
    assert s["requests"] == 3 and s["completed"] == 2
    assert s["makespan_s"] == 2.0 and s["req_s"] == 1.0 and s["prompt_tok_s"] == 100.0
    assert s["ttft_p50_s"] == pytest.approx(0.75) and s["ttft_p99_s"] == pytest.approx(0.995)
    assert s["mean_cached_tokens"] == 20 and s["cached_fraction"] == 0.2
    empty = tr.summarize([])
    assert empty["completed"] == 0 and empty["req_s"] is None and empty["ttft_p50_s"] is None


def test_transfer_configs():
    assert tr.transfer_config("full", 1, "chainlfu") is None
    n = tr.transfer_config("native", 123, "chainlfu")
    assert n["kv_connector"] == "OffloadingConnector" and n["kv_connector_extra_config"] == {"cpu_bytes_to_use": 123}
    lru = tr.transfer_config("ucm_lru", 456, "chainlfu")["kv_connector_extra_config"]
    best = tr.transfer_config("ucm_best", 456, "arc")["kv_connector_extra_config"]
    assert lru == {"ucm_config": "dram", "ucm_overrides": ["eviction=lru", "admission=always", "store.max_cache_size=456"]}
    assert best["ucm_overrides"][0] == "eviction=arc"
    reuse = tr.transfer_config("ucm_lru", 1 << 20, "arc", "reuse")["kv_connector_extra_config"]
    assert "admission=reuse" in reuse["ucm_overrides"]
    from ucm.config import load_config  # the overrides are ones the connector's Hydra config accepts

    cfg = load_config(reuse["ucm_overrides"] + ["store.kv_block_size=4096"], store=reuse["ucm_config"])
    assert cfg.store.admission.name == "reuse" and cfg.store.max_cache_size == 1 << 20


def _part(d, mode, summary=None, error=None):
    info = dict(mode=mode, started="2026-11-28T00:00:00Z", command="python3 x", run_command="python3 bench/trace_replay.py",
                vllm="0.26.0", torch="2.11", gpu="NVIDIA H200", model=dict(layers=28, kv_bytes_per_token=57344),
                hbm_kv_tokens=1000)
    p = dict(info=info, settings=dict(requests=2, working_set_bytes=4e9, cpu_bytes=1e9, cpu_fraction_of_ws=0.25))
    if summary:
        p["summary"] = summary
        p["requests"] = [dict(index=0, arrival=0.0, first=0.2, finish=0.4, cached=0),
                         dict(index=1, arrival=0.1, first=0.5, finish=0.9, cached=0)]
    if error:
        p["error"] = error
    with open(tr.part_path(d, mode), "w") as f:
        json.dump(p, f)


def test_report(tmp_path, monkeypatch):
    monkeypatch.setattr(tr, "plot", lambda res, path: None)  # matplotlib is slow to import; smoke-tested
    s = tr.summarize([dict(arrival=0.0, first=0.2, finish=0.4, prompt_len=10, max_tokens=2, cached=0)])
    _part(str(tmp_path), "full", s)
    _part(str(tmp_path), "ucm_lru", dict(s, ucm=dict(hit_tokens=64, loaded_bytes=2e9, evictions=5)))
    _part(str(tmp_path), "native", error="Exception: CPU Offloading is currently only supported on CUDA")
    res = tr.report(str(tmp_path), [])
    assert [r["mode"] for r in res["rows"]] == ["full", "native", "ucm_lru"]
    ucm = res["rows"][2]
    assert ucm["ucm_hit_tokens"] == 64 and ucm["ucm_evictions"] == 5
    assert res["rows"][1]["error"].startswith("Exception")
    assert res["gpu"] == "NVIDIA H200" and res["date"] == "2026-11-28" and "trace_replay.py" in res["command"]
    assert res["ttft_s"]["full"] == pytest.approx([0.2, 0.4])
    md = (tmp_path / "trace_replay_h200_2026-11-28.md").read_text()
    assert "| ucm_lru |" in md and "CPU Offloading" in md
    assert res["paired"]["ucm_lru"]["requests"] == 2 and "| ucm_lru | 2 | +0.0 |" in md
    assert (tmp_path / "trace_replay_h200_2026-11-28.json").exists()


def test_replay_args_carry_every_engine_option_of_prefix_ttft():
    """ReplayBench hands its own parsed args to prefix_ttft.Bench, which builds the engine from
    them: an engine option added to one script only broke the other's every mode (found in a CPU run)."""
    import prefix_ttft as pt

    engine_options = ("model", "gpu_util", "max_model_len", "max_num_batched_tokens", "block_size", "dtype",
                      "model_runner", "tp", "load_format", "seed", "out")
    ttft = vars(pt.parse_args(["--model", "m"]))
    replay = vars(tr.parse_args(["--model", "m"]))
    assert all(k in ttft for k in engine_options)
    assert [k for k in engine_options if k not in replay] == []


def test_paired_compares_the_same_requests_and_splits_off_the_hits():
    """Request i of a mode against request i of full compute: the median of the differences (not
    the difference of the percentiles), and the requests with more cached tokens apart."""
    def reqs(ttfts, cached):
        return [dict(index=i, arrival=float(i), first=i + t, finish=i + t + 1, cached=c)
                for i, (t, c) in enumerate(zip(ttfts, cached))]
    base = [0.5, 0.4, 0.3, 0.2, 0.1]
    parts = {"full": dict(requests=reqs(base, [0] * 5)),
             "ucm_lru": dict(requests=reqs([0.5, 0.4, 0.3, 0.2, 0.12], [0, 0, 0, 0, 0])[:4]
                             + reqs([0.1] * 5, [0, 0, 0, 0, 64])[4:] + reqs([0.9] * 6, [0] * 6)[5:]
                             + [dict(index=7, arrival=7.0, first=None, finish=None)])}
    p = tr.paired(parts)
    assert list(p) == ["ucm_lru"]
    u = p["ucm_lru"]
    assert u["requests"] == 5  # request 5 has no partner, 7 never finished
    assert u["median_s"] == pytest.approx(0.0) and u["mean_s"] == pytest.approx(0.0)
    assert u["more_cached"] == 1 and u["more_cached_median_s"] == pytest.approx(0.0)
    parts["ucm_lru"]["requests"][0]["first"] += 0.3  # one request slower: the median stays, the mean moves
    u = tr.paired(parts)["ucm_lru"]
    assert u["median_s"] == pytest.approx(0.0) and u["mean_s"] == pytest.approx(0.06)
    assert u["rest_median_s"] == pytest.approx(0.0)
    # by arrival window (ceil(5 / 6) = 1 request each): where in the trace the differences sit
    assert [(w["first"], w["last"]) for w in u["windows"]] == [(i, i) for i in range(5)]
    assert u["windows"][0]["median_s"] == pytest.approx(0.3) and u["windows"][0]["base_median_s"] == pytest.approx(0.5)


def test_step_summary_splits_prefill_from_decode_steps():
    log = [(0.010, 512, {"execute": 8.0}), (0.030, 1024, {"execute": 20.0, "exec.load": 4.0}), (0.002, 0, {}),
           (0.004, 0, {}), (0.003, -32, {})]  # -32: a preempted request restarts
    s = tr.step_summary(log)
    assert s["prefill_phases_ms"] == {"execute": 14.0, "exec.load": 2.0}  # mean over the prefill steps
    assert "decode_phases_ms" not in s  # no phases recorded there
    assert (s["prefill_steps"], s["decode_steps"]) == (2, 3)
    assert s["prefill_step_p50_ms"] == pytest.approx(30.0) and s["prefill_step_total_s"] == pytest.approx(0.04)
    assert s["decode_step_p50_ms"] == pytest.approx(3.0) and s["decode_step_p90_ms"] == pytest.approx(3.0)
    assert tr.step_summary([])["prefill_steps"] == 0 and tr.step_summary([])["decode_step_p50_ms"] is None


def test_prompt_left_counts_uncomputed_prompt_tokens_and_preemptions():
    req = lambda prompt, done, pre=0: argparse.Namespace(num_prompt_tokens=prompt, num_computed_tokens=done,  # noqa: E731
                                                         num_preemptions=pre)
    sched = argparse.Namespace(requests={"a": req(100, 40), "b": req(50, 60, 2), "c": req(10, 0, 1)})
    seen = {}
    assert tr._prompt_left(sched, seen) == 60 + 0 + 10
    assert seen == {"b": 2, "c": 1}


def test_report_has_the_step_table(tmp_path, monkeypatch):
    monkeypatch.setattr(tr, "plot", lambda res, path: None)
    s = tr.summarize([dict(arrival=0.0, first=0.2, finish=0.4, prompt_len=10, max_tokens=2, cached=0)])
    _part(str(tmp_path), "full", dict(s, **tr.step_summary([(0.05, 10, {"execute": 40.0, "cpu": 45.0}),
                                                                 (0.01, 0, {})]), preemptions=3))
    res = tr.report(str(tmp_path), [])
    assert res["rows"][0]["preemptions"] == 3 and res["rows"][0]["prefill_steps"] == 1
    md = (tmp_path / "trace_replay_h200_2026-11-28.md").read_text()
    assert "| full | 1 | 50.0 | 50.0 | 0.050 | 1 | 10.0 | 10.0 | 0.010 | 3 | n/a | n/a |" in md
    phase_row = next(line for line in md.splitlines() if line.startswith("| full | prefill |"))
    assert "| 40.0 |" in phase_row and phase_row.endswith("| 45.0 |")  # execute; cpu, the last column


def test_step_record_reads_the_scheduler_and_ucm_held_blocks():
    ns = argparse.Namespace
    ucm = ns(held={"a": (3, 250), "b": (4, 6)})  # finished requests -> (step, blocks kept for their dumps)
    sched = ns(kv_cache_manager=ns(usage=0.93751), running=[1, 2, 3], waiting=[4], connector=ns(_scheduler=ucm))
    row = tr.step_record(sched, 1.23456, (0.0421, 512, {}), 2)
    assert dict(zip(tr.STEP_COLUMNS, row)) == dict(t_s=1.2346, ms=42.1, prompt_tokens=512, running=3, waiting=1,
                                                    kv_usage=0.9375, preemptions=2, held_blocks=256)
    plain = tr.step_record(ns(running=[], waiting=[]), 0.5, (0.01, 0, {}), 0)  # no connector, no KV manager
    assert plain[tr.STEP_COLUMNS.index("held_blocks")] is None and plain[tr.STEP_COLUMNS.index("kv_usage")] is None


def test_preemption_context_looks_at_the_step_before_each_preemption():
    row = lambda pre, held, usage: [0.0, 1.0, 0, 1, 0, usage, pre, held]  # noqa: E731
    steps = dict(columns=list(tr.STEP_COLUMNS), rows=[row(0, 0, 0.5), row(0, 250, 0.99), row(1, 0, 0.98),
                                                       row(1, 0, 0.97), row(3, 0, 0.99)])
    c = tr.preemption_context(steps)
    assert c == dict(steps=2, with_held_blocks=1, held_blocks_median=125.0, kv_usage_median=0.98)
    assert tr.preemption_context(None) is None and tr.preemption_context(dict(columns=[], rows=[])) is None


def _fake_spy(tmp_path, body: str) -> str:
    """An executable standing in for py-spy: records its arguments, then runs ``body`` (bash)."""
    path = tmp_path / "py-spy"
    path.write_text(f"#!/bin/bash\necho \"$@\" > {tmp_path}/args\n{body}\n")
    path.chmod(0o755)
    return str(path)


def test_spy_on_self_samples_this_process_and_stops_it_with_sigint(tmp_path):
    # like py-spy record: sample until SIGINT, then write the profile and exit 0
    spy = _fake_spy(tmp_path, 'out="${@: -1}"; trap \'echo "thread (1): MainThread;f (x.py:1) 3" > "$out"; '
                              'exit 0\' INT; while true; do sleep 0.05; done')
    out = tmp_path / "spy_ucm_lru.txt"
    with tr.SpyOnSelf(str(out), env={"UCM_SPY": spy, "UCM_SPY_ARGS": "-r 50"}) as s:
        assert s.proc is not None and s.proc.poll() is None  # sampling while the loop runs
    assert s.proc.returncode == 0 and out.read_text().startswith("thread (1)")
    args = (tmp_path / "args").read_text().split()
    assert args[:3] == ["record", "--pid", str(os.getpid())]
    assert {"--threads", "--gil"} <= set(args) and args[args.index("-r") + 1] == "50"
    assert args[-4:] == ["-f", "raw", "-o", str(out)]


def test_spy_on_self_is_off_without_ucm_spy_and_survives_a_py_spy_that_cannot_attach(tmp_path, capsys):
    with tr.SpyOnSelf(str(tmp_path / "a.txt"), env={}) as s:
        assert s.proc is None
    spy = _fake_spy(tmp_path, 'echo "Permission denied (os error 1)"; exit 1')
    with tr.SpyOnSelf(str(tmp_path / "b.txt"), env={"UCM_SPY": spy}) as s:
        assert s.proc is None  # the replay runs on without a profile
    assert "py-spy did not start (1): Permission denied" in capsys.readouterr().out


def _replay_reqs():
    """Chat-like: sessions re-sending their growing history, a shared system block 0, one scan."""
    reqs, nxt = [], 100
    for turn in range(4):
        for sess in range(6):
            ids = [0] + [10 * sess + j + 1 for j in range(turn + 2)]
            reqs.append(dict(hash_ids=ids, prompt_len=len(ids) * BT))
        reqs.append(dict(hash_ids=list(range(nxt, nxt + 8)), prompt_len=8 * BT))  # a one-off long prompt
        nxt += 8
    return reqs


def test_rank_policies_is_the_simulator_on_the_blocks_the_prompts_use():
    from ucm.policies import EVICTION_POLICIES
    from ucm.sim.core import simulate
    from ucm.sim.trace import from_requests

    reqs = _replay_reqs()
    reqs[0] = dict(hash_ids=[0, 1, 2, 77, 78, 79], prompt_len=3 * BT - 1)  # ids past the prompt are not replayed
    ranking = tr.rank_policies(reqs, BT, 12)
    assert sorted(p for p, _ in ranking) == sorted(EVICTION_POLICIES) and "lru" in dict(ranking)
    assert [r for _, r in ranking] == sorted((r for _, r in ranking), reverse=True)
    ids = [r["hash_ids"][:-(-r["prompt_len"] // BT)] for r in reqs]
    trace = from_requests("t", ids, BT, tokens=[r["prompt_len"] for r in reqs])
    for p, r in ranking:
        assert r == simulate(trace, mode="prefix", eviction=p, capacity_blocks=12, block_tokens=BT)["prefix_hit_ratio"]
    assert 0 < ranking[0][1] <= 1


def test_best_policy_auto_takes_the_simulators_best_and_an_explicit_one_is_kept():
    reqs = _replay_reqs()
    ws = dict(kv_bytes_per_token=4, cpu_bytes=12 * BT * 4)
    a = argparse.Namespace(best_policy="auto", block_tokens=BT)
    tr.resolve_best_policy(a, reqs, ws)
    assert a.best_policy == [p for p, _ in a.best_policy_ranking if p != "lru"][0]  # ucm_lru runs LRU already
    assert a.best_policy_ranking == [[p, round(r, 4)] for p, r in tr.rank_policies(reqs, BT, 12)]
    assert "ucm_best's eviction: " + a.best_policy + " (auto: simulated" in tr.best_policy_line(
        dict(best_policy=a.best_policy, best_policy_ranking=a.best_policy_ranking))
    b = argparse.Namespace(best_policy="prefixlfu", block_tokens=BT)
    tr.resolve_best_policy(b, reqs, ws)
    assert b.best_policy == "prefixlfu" and b.best_policy_ranking is None
    assert tr.best_policy_line(dict(best_policy="prefixlfu", best_policy_ranking=None)) == " ucm_best's eviction: prefixlfu."
    assert tr.parse_args(["--model", "m", "--modes", "full"]).best_policy == "auto"
