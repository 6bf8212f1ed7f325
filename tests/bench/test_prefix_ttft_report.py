"""bench/prefix_ttft_report.py: merging per-mode parts into the issue's result JSON, the targets,
and the Markdown/PNG, on synthetic parts (no vLLM needed)."""
from __future__ import annotations

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "bench"))

from prefix_ttft import ROW_KEYS, part_path  # noqa: E402
from prefix_ttft_report import first_output_calls, gpu_slug, report  # noqa: E402

GB = 1e9


def _pass(mean_s, cached, **counters):
    p = dict(mean_s=mean_s, max_s=mean_s * 1.2, cached_tokens=[cached, cached])
    p.update(counters)
    return p


def _part(path, mode, cells, pinned=None):
    info = dict(mode=mode, started="2026-11-28T10:00:00Z", command=f"python3 x --worker {mode}",
                run_command="python3 bench/prefix_ttft.py --model m", vllm="0.26.0", torch="2.11.0",
                gpu="NVIDIA H100 80GB HBM3", model=dict(layers=28), hit=0.8, reps=3, engine_in_process=True,
                pinned_h2d_gbps=pinned, kv_transfer_config=None)
    with open(part_path(path, mode), "w") as f:
        json.dump(dict(info=info, cells=cells), f)


def _reps(*per_rep):
    return [dict(p) for p in per_rep]


@pytest.fixture
def parts(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    L, c = 8000, 1
    full = [dict(full=_pass(1.0, 0), hbm100=_pass(0.03, 7984), hbm80=_pass(0.10, 6400)) for _ in range(3)]
    _part(a, "full", [dict(L=L, c=c, reps=full)])
    ucm = [dict(full_connector_on=_pass(1.0, 0, ucm=dict(loaded_bytes=0.0)),
                hit100=_pass(t100, 7984, ucm=dict(loaded_bytes=0.46 * GB, loaded_blocks=499.0)),
                hit80=_pass(t80, 6400, ucm=dict(loaded_bytes=0.37 * GB, loaded_blocks=400.0)))
           for t100, t80 in ((0.035, 0.104), (0.040, 0.105), (0.045, 0.200))]  # medians 0.040 / 0.105
    _part(a, "ucm", [dict(L=L, c=c, reps=ucm)], pinned=50.0)
    best = [dict(full_connector_on=_pass(1.0, 0), hit100=_pass(0.041, 7936), hit80=_pass(0.061, 6400))] * 3
    _part(a, "native_best", [dict(L=L, c=c, reps=best)])
    # ucm_disk split over two folders: 8000 from b, 4000 from a (and a stale 8000 cell in a that b replaces)
    disk = lambda t: [dict(full_connector_on=_pass(1.0, 0), hit80=_pass(t, 6400, ucm=dict(  # noqa: E731
        loaded_bytes=0.37 * GB, loaded_blocks=400.0, chain_lower_hits=400.0)))] * 3
    _part(a, "ucm_disk", [dict(L=4000, c=1, reps=disk(0.3)), dict(L=L, c=c, reps=disk(9.9))])
    _part(b, "ucm_disk", [dict(L=L, c=c, reps=disk(0.5))])
    return a, b, tmp_path / "out"


def test_rows_targets_and_files(parts):
    a, b, out = parts
    out.mkdir()
    res = report(str(out), [str(a), str(b)])
    stem = out / "prefix_ttft_h100_2026-11-28"
    for ext in ("json", "md", "png"):  # matplotlib comes with the test extras
        assert (stem.parent / f"{stem.name}.{ext}").exists()
    saved = json.loads((stem.parent / f"{stem.name}.json").read_text())
    assert saved["gpu"] == "NVIDIA H100 80GB HBM3" and saved["vllm"] == "0.26.0" and saved["pinned_h2d_gbps"] == 50.0
    assert saved["command"] == "python3 bench/prefix_ttft.py --model m"
    rows = {(r["input_tokens"], r["concurrency"]): r for r in saved["rows"]}
    assert all(list(r) == list(ROW_KEYS) for r in saved["rows"])
    r = rows[(8000, 1)]
    assert (r["full_s"], r["hbm80_s"], r["hbm100_s"]) == (1.0, 0.1, 0.03)
    assert (r["ucm100_s"], r["ucm80_s"], r["ucm100_bytes"]) == (0.04, 0.105, int(0.46 * GB))
    assert r["ucm_disk80_s"] == 0.5 and r["native80_s"] is None and r["native_best100_s"] == 0.041
    assert rows[(4000, 1)]["ucm_disk80_s"] == 0.3 and rows[(4000, 1)]["full_s"] is None

    t = {(x["input_tokens"], x["concurrency"]): x for x in res["targets"]}[(8000, 1)]
    assert t["ucm80_vs_hbm80"]["factor"] == 1.05 and t["ucm80_vs_hbm80"]["ok"] is True  # 0.105 <= 0.105
    bound = 0.03 + 1.1 * 0.46 * GB / (50.0 * GB)
    assert t["ucm100_vs_bound"]["limit_s"] == pytest.approx(bound) and t["ucm100_vs_bound"]["ok"] is True
    assert t["ucm_vs_native_best"] == dict(ok80=False, ok100=True, ok=False)  # 0.105 > 0.061, 0.040 <= 0.041
    assert t["speedup80"]["applies"] and t["speedup80"]["ok"] is True  # 1/0.105 and 1/0.1 >= 3.3
    md = (stem.parent / f"{stem.name}.md").read_text()
    assert "| 8000 | 1 |" in md and "400/400" in md  # the disk-read proof


def test_a_decode_only_run_merges_its_decode_cell_and_keeps_the_grid(parts, tmp_path):
    """--decode-only (decode measured alone, after the grid) adds the decode table; rows stay the grid's."""
    a, b, out = parts
    d = tmp_path / "decode"
    d.mkdir()
    for mode, tok_s in (("full", [400.0, 410.0, 405.0]), ("ucm", [396.0, 401.0, 399.0])):
        _part(d, mode, [])
        path = part_path(d, mode)
        part = json.loads(open(path).read())
        part["decode"] = dict(batch=8, prompt_tokens=1024, max_tokens=256, reps=[dict(tok_s=x) for x in tok_s],
                              median_tok_s=sorted(tok_s)[1])
        if mode == "ucm":  # the same engine without storing, alternated with the above
            off = [400.0, 400.0, 400.0]
            part["decode"].update(no_store_reps=[dict(tok_s=x) for x in off], no_store_median_tok_s=400.0,
                                  store_vs_no_store_pairs=[x / y for x, y in zip(tok_s, off)],
                                  store_vs_no_store=sorted(x / y for x, y in zip(tok_s, off))[1],
                                  store_vs_no_store_step_pairs=[0.99, 0.98, 1.0])
        with open(path, "w") as f:
            json.dump(part, f)
    out.mkdir()
    res = report(str(out), [str(a), str(b), str(d)])
    assert res["decode"]["full"]["median_tok_s"] == 405.0 and res["decode"]["ucm"]["median_tok_s"] == 399.0
    rows = {(r["input_tokens"], r["concurrency"]): r for r in res["rows"]}
    assert rows[(8000, 1)]["ucm80_s"] == 0.105 and rows[(8000, 1)]["full_s"] == 1.0
    md = (out / "prefix_ttft_h100_2026-11-28.md").read_text()
    assert "| ucm | 399.0 | 396.0, 401.0, 399.0 | 0.985 |" in md
    assert "| ucm, not storing (same engine) | 400.0 | 400.0, 400.0, 400.0 | 0.988 |" in md
    assert "median of the pairs' ratios **0.998**" in md
    assert "median step time (a few long steps do not move it): median ratio **0.990** (inconclusive (3 pairs" in md


def test_the_decode_verdict_needs_the_median_interval_on_one_side_of_the_target():
    from prefix_ttft_report import decode_verdict, median_interval

    # n = 8: the 2nd smallest and 2nd largest cover the median with 1 - 2 * 9 / 256 = 93 %
    lo, hi, cov = median_interval([0.913, 0.984, 1.036, 0.955, 0.845, 0.930, 1.587, 1.348])
    assert (lo, hi) == (0.913, 1.348) and abs(cov - (1 - 18 / 256)) < 1e-12
    assert decode_verdict([0.913, 0.984, 1.036, 0.955, 0.845, 0.930, 1.587, 1.348]).startswith("inconclusive")
    assert decode_verdict([0.99, 1.0, 0.98, 1.01, 0.975, 1.02]).startswith("met")
    assert decode_verdict([0.90, 0.92, 0.91, 0.95, 0.93, 0.94]).startswith("missed")
    assert median_interval([1.0, 1.0, 1.0]) == (None, None, 0.0)  # 3 pairs: at most 75 %
    assert decode_verdict([1.0, 1.0, 1.0]).startswith("inconclusive (3 pairs")


def test_gpu_slug():
    assert gpu_slug("NVIDIA H100 80GB HBM3") == "h100"
    assert gpu_slug("NVIDIA H200") == "h200"
    assert gpu_slug("cpu") == "cpu"


def test_first_tokens_in_order_at_two_or_more_requests(tmp_path):
    """The k-th request to get its first token, median over repetitions (each repetition's latencies
    sorted first): shows an offloader serving the c requests in turn (native) or in one step (ucm)."""
    d, out = tmp_path / "d", tmp_path / "out"
    d.mkdir()
    out.mkdir()

    def cell(c, lats):  # one hit80 pass a repetition, with its per-request latencies
        return dict(L=8000, c=c, reps=[dict(hit80=dict(_pass(sum(x) / len(x), 6400), lat_s=x)) for x in lats])
    _part(d, "native_best", [cell(2, [[0.103, 0.057], [0.061, 0.109], [0.057, 0.103]]), cell(1, [[0.1]] * 3)])
    _part(d, "ucm", [cell(2, [[0.096, 0.096], [0.097, 0.097], [0.102, 0.102]])])
    res = report(str(out), [str(d)])
    by = {(c["input_tokens"], c["concurrency"]): c for c in res["cells"]}
    assert by[(8000, 2)]["modes"]["native_best"]["hit80"]["lat_ms"] == [57.0, 103.0]
    assert by[(8000, 2)]["modes"]["ucm"]["hit80"]["lat_ms"] == [97.0, 97.0]
    md = (out / "prefix_ttft_h100_2026-11-28.md").read_text()
    assert "| 8000 | 2 | native_best | hit80 | 57 / 103 |" in md and "| 8000 | 2 | ucm | hit80 | 97 / 97 |" in md
    assert "| 8000 | 1 | native_best | hit80 |" not in md  # one request: no order to show


def test_the_launch_and_output_calls_of_the_first_token_step(tmp_path):
    """Async scheduling: one call launches the step, a later one returns its token (native first polls
    its loads with short calls). A run whose first call already returns a token has no launch call."""
    assert first_output_calls([[42.0, 0], [39.6, 1], [12.6, 1]]) == (42.0, 39.6)
    assert first_output_calls([[1.8, 0], [0.2, 0], [18.9, 0], [25.9, 1], [18.4, 0], [30.4, 1]]) == (18.9, 25.9)
    assert first_output_calls([[60.0, 2]]) is None
    assert first_output_calls([[1.0, 0], [2.0, 0]]) is None
    d, out = tmp_path / "d", tmp_path / "out"
    d.mkdir()
    out.mkdir()
    reps = [dict(hit100=dict(_pass(0.03, 7984), steps=[[x, 0], [1.0, 1]])) for x in (30.0, 34.0, 50.0)]
    _part(d, "ucm", [dict(L=8000, c=1, reps=reps)])
    res = report(str(out), [str(d)])
    assert res["cells"][0]["modes"]["ucm"]["hit100"]["launch_ms"] == [34.0, 1.0]
    assert "| 8000 | 1 | ucm | hit100 | 34.0 | 1.0 |" in (out / "prefix_ttft_h100_2026-11-28.md").read_text()


def test_the_launch_and_output_calls_split_into_phases(tmp_path):
    """With per-call phases recorded, the report gives the two calls of the first token's step by phase
    (median over repetitions; a phase a call did not run counts 0)."""
    d, out = tmp_path / "d", tmp_path / "out"
    d.mkdir()
    out.mkdir()
    poll = {"other": 0.1}

    def rep(launch_sched):
        launch = {"schedule": launch_sched, "sched.connector": 2.0, "execute": 20.0, "exec.load": 5.0,
                  "sample": 3.0, "other": 1.0}
        return dict(hit100=dict(_pass(0.03, 7984), steps=[[0.1, 0], [30.0, 0], [2.0, 1]],
                                phases=[poll, launch, {"other": 1.5, "update": 0.5}]))
    _part(d, "ucm", [dict(L=8000, c=1, reps=[rep(x) for x in (4.0, 6.0, 9.0)])])
    res = report(str(out), [str(d)])
    launch, output = res["cells"][0]["modes"]["ucm"]["hit100"]["launch_phases"]
    assert launch["schedule"] == 6.0 and launch["exec.load"] == 5.0 and launch["sched.alloc"] == 0.0
    assert output["other"] == 1.5 and output["update"] == 0.5
    md = (out / "prefix_ttft_h100_2026-11-28.md").read_text()
    assert "| 8000 | 1 | ucm | hit100 | launch | 6.0 | 2.0 | 0.0 | 20.0 | 0.0 | 0.0 | 5.0 | 0.0 | 3.0 | 0.0 | 0.0 | 1.0 |" in md
    assert "| 8000 | 1 | ucm | hit100 | output | 0.0 |" in md


def test_host_clock_reports_busy_and_stolen_shares_of_the_host(monkeypatch):
    """Busy = not idle or waiting for I/O; steal = the hypervisor ran another VM on our cores."""
    from prefix_ttft import HostClock

    before = ([100, 0, 50, 800, 50, 0, 0, 0, 0, 0], 1.0)
    # +300 user, +100 system, +500 idle, +0 iowait, +100 steal: 1000 jiffies, 500 busy, 100 stolen
    monkeypatch.setattr(HostClock, "snapshot", staticmethod(lambda: ([400, 0, 150, 1300, 50, 0, 0, 100, 0, 0], 1.25)))
    assert HostClock.since(before) == dict(process_cpu_s=0.25, host_busy=0.5, host_steal=0.1)
    monkeypatch.setattr(HostClock, "snapshot", staticmethod(lambda: ([], 1.5)))  # no /proc/stat: CPU seconds only
    assert HostClock.since(([], 1.0)) == dict(process_cpu_s=0.5)


def test_the_benchmarks_ucm_flags_reach_the_connector_config():
    """--ucm-step-tokens / --ucm-step-load-blocks / --ucm-in-turn-tokens become the connector's keys, and
    the connector accepts what the benchmark builds."""
    from prefix_ttft import kv_transfer_config, parse_args

    from ucm.integration.vllm.settings import parse_extra_config

    a = parse_args(["--model", "m", "--out", "o", "--ucm-step-tokens", "1024", "--ucm-in-turn-tokens", "2048"])
    extra = kv_transfer_config(a, "ucm", 57344, "/tmp/d")["kv_connector_extra_config"]
    assert extra["ucm_layerwise_step_tokens"] == 1024 and extra["ucm_layerwise_in_turn_tokens"] == 2048
    s = parse_extra_config(extra)
    assert s.layerwise_step_tokens == 1024 and s.layerwise_in_turn_tokens == 2048 and s.layerwise_step_load_blocks == 0
    plain = kv_transfer_config(parse_args(["--model", "m", "--out", "o"]), "ucm", 57344, "/tmp/d")
    assert "ucm_layerwise_in_turn_tokens" not in plain["kv_connector_extra_config"]


def test_ucm_disk_times_hits_from_disk_unless_told_to_gate_them(tmp_path):
    """The ucm_disk column forces disk hits (disk.hits = always); --disk-hits auto gives ucm's default,
    and the store the connector would build accepts either."""
    from prefix_ttft import kv_transfer_config, parse_args

    from ucm.tiers import create_store

    for argv, want in (([], "always"), (["--disk-hits", "auto"], "auto")):
        a = parse_args(["--model", "m", "--out", "o", "--lengths", "4000", "--concurrency", "1"] + argv)
        cfg = kv_transfer_config(a, "ucm_disk", 57344, str(tmp_path / "d"))["kv_connector_extra_config"]
        assert cfg["ucm_connector_name"] == "dram_disk" and cfg["ucm_connector_config"]["disk"]["hits"] == want
        store = create_store("dram_disk", {**cfg["ucm_connector_config"], "kv_block_size": 57344 * 16})
        assert store.slow_hits.mode == want
        store.close()


def test_reps_at_parses_lengths_and_the_report_names_them():
    import prefix_ttft

    a = prefix_ttft.parse_args(["--model", "m", "--reps-at", "4000:5, 8000:4", "--modes", "full"])
    assert a.reps_at == {4000: 5, 8000: 4} and prefix_ttft.parse_args(["--model", "m", "--modes", "full"]).reps_at == {}
    with pytest.raises(SystemExit):
        prefix_ttft.parse_args(["--model", "m", "--reps-at", "4000:0", "--modes", "full"])
    from prefix_ttft_report import reps_at_note
    assert reps_at_note({"modes": {"full": {"reps_at": {"4000": 5}}, "ucm": {"reps_at": {}}}}) == " (5 at 4000 tokens)"
    assert reps_at_note({"modes": {"full": {}}}) == ""


def test_the_hits_table_shows_the_disk_hit_gate(tmp_path):
    """A ucm_disk pass whose disk hits the gate refused: no load, the decisions and the measured rates."""
    gated = [dict(hit80=dict(_pass(0.4, 0, ucm=dict(loaded_bytes=0.0, gate_allowed=0.0, gate_refused=1.0)),
                             gate=dict(read_gbps=0.55, compute_gbps=2.1)))] * 3
    _part(tmp_path, "ucm_disk", [dict(L=8000, c=1, reps=gated)])
    out = tmp_path / "out"
    out.mkdir()
    report(str(out), [str(tmp_path)])
    md = next(out.glob("*.md")).read_text()
    assert "ucm_disk:hit80=0 (disk hits allowed 0, refused 1; read 0.55 / compute 2.10 GB/s)" in md


def test_switch_pairs_compare_each_storing_block_with_the_block_after_it():
    """--decode-switch-steps: blocks of k steps alternate storing / not storing; each storing block is paired
    with the block after it (not storing over storing, median step times), its first steps left out."""
    from prefix_ttft import switch_pairs

    k, phases = 4, []
    for b, (on, sec) in enumerate([(True, 0.020), (False, 0.019), (True, 0.022), (False, 0.022), (True, 0.040)]):
        for i in range(k):
            # the first steps of a block carry the switch (a step late) and the last block's copies: left out
            phases.append((on, i, 1.0 if i < 2 else sec))
    pairs = switch_pairs(phases, k)
    assert pairs == pytest.approx([0.019 / 0.020, 0.022 / 0.022])  # the last storing block has no partner
    assert switch_pairs(phases, k, skip=0) == pytest.approx([(1.0 + 0.019) / 2 / ((1.0 + 0.020) / 2), 1.0])
    # a repetition cut inside a block: an empty block is no pair
    assert switch_pairs([(True, 0, 0.02), (True, 1, 0.02), (True, 2, 0.02), (False, 0, 0.02)], 4) == []


def test_the_decode_table_reports_the_switched_blocks_with_their_verdict(parts, tmp_path):
    a, b, out = parts
    d = tmp_path / "decode"
    d.mkdir()
    _part(d, "ucm", [])
    path = part_path(d, "ucm")
    part = json.loads(open(path).read())
    pairs = [0.99, 1.0, 0.98, 1.01, 0.975, 1.02, 0.995, 1.0]
    part["decode"] = dict(batch=8, prompt_tokens=1024, max_tokens=512, reps=[dict(tok_s=400.0)], median_tok_s=400.0,
                          switch_steps=8, store_vs_no_store_switch_pairs=pairs)
    with open(path, "w") as f:
        json.dump(part, f)
    out.mkdir()
    report(str(out), [str(a), str(b), str(d)])
    md = (out / "prefix_ttft_h100_2026-11-28.md").read_text()
    assert ("storing switched off and on every 8 steps within each repetition (`--decode-switch-steps`), each block "
            "of storing steps against the next block without: median ratio of their median step times **0.998** "
            "over 8 pairs (target >= 0.97: met (93% interval") in md


@pytest.mark.parametrize("k", ["1", "2", "-4"])
def test_decode_switch_steps_that_leave_no_step_measured_stop_at_start(k, capsys):
    from prefix_ttft import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--model", "m", "--decode-switch-steps", k])
    assert "--decode-switch-steps" in capsys.readouterr().err
    assert parse_args(["--model", "m", "--decode-switch-steps", "8"]).decode_switch_steps == 8


def test_ucm_is_judged_against_its_own_engines_hbm_hits_too(tmp_path):
    """The own-HBM passes (timed in ucm's engine right after its hits) give the HBM targets a second
    verdict free of the processes' host speed; parts without them leave it None."""
    a, out = tmp_path / "a", tmp_path / "out"
    a.mkdir()
    out.mkdir()
    L = 4000
    _part(a, "full", [dict(L=L, c=1, reps=[dict(full=_pass(0.09, 0), hbm100=_pass(0.020, 3984),
                                                 hbm80=_pass(0.025, 3200))] * 3)])
    ucm = [dict(full_connector_on=_pass(0.09, 0),
                hit100=_pass(0.034, 3984, ucm=dict(loaded_bytes=0.228 * GB)), own_hbm100=_pass(0.030, 3984),
                hit80=_pass(0.041, 3200, ucm=dict(loaded_bytes=0.18 * GB)), own_hbm80=_pass(0.038, 3200))] * 3
    _part(a, "ucm", [dict(L=L, c=1, reps=ucm)], pinned=50.0)
    part = json.loads(open(part_path(a, "ucm")).read())  # the host's speed as the mode started and ended
    part["info"].update(host_speed=dict(python_ns_per_op=120.0, torch_op_us=3.0),
                        host_speed_end=dict(python_ns_per_op=200.0, torch_op_us=5.0))
    open(part_path(a, "ucm"), "w").write(json.dumps(part))
    res = report(str(out), [str(a)])
    t = res["targets"][0]
    assert t["ucm80_vs_hbm80"]["ok"] is False  # 0.041 > 1.1 x 0.025 (the full mode's process)
    own = t["ucm_vs_own_hbm"]
    assert own["limit80_s"] == pytest.approx(1.1 * 0.038) and own["ok80"] is True
    assert own["limit100_s"] == pytest.approx(0.030 + 1.1 * 0.228 / 50.0) and own["ok100"] is True
    md = open(out / "prefix_ttft_h100_2026-11-28.md").read()
    assert "python 120.0 ns/op, torch op 3.0 us; at the end: python 200.0 ns/op, torch op 5.0 us |" in md
    assert "| 4000 | 1 | ucm | 0.041 | 0.038 | 1.08 | 0.034 | 0.030 | 4.0 | yes (1.1x: 0.042) / yes (0.035) |" in md

    b, out2 = tmp_path / "b", tmp_path / "out2"  # an older part, without the own-HBM passes
    b.mkdir()
    out2.mkdir()
    _part(b, "ucm", [dict(L=L, c=1, reps=[{k: v for k, v in ucm[0].items() if not k.startswith("own")}] * 3)])
    res = report(str(out2), [str(b)])
    assert res["targets"][0]["ucm_vs_own_hbm"]["ok80"] is None
    assert "own engine's HBM hits" not in open(out2 / "prefix_ttft_h100_2026-11-28.md").read()


def test_ucm_ab_names_a_scheduler_switch_and_a_value_of_its_type(capsys):
    """--ucm-ab NAME=VALUE: NAME must be a switch of ucm's scheduler (every one listed is, with that type),
    VALUE of its type; anything else stops at start-up with the option named."""
    import prefix_ttft

    from ucm.integration.vllm.scheduler import UcmScheduler

    sched = UcmScheduler(None, None, 16)
    for name, kind in prefix_ttft.AB_SWITCHES.items():
        assert type(getattr(sched, name)) is kind
    args = ["--model", "m", "--modes", "ucm"]
    assert prefix_ttft.parse_args(args + ["--ucm-ab", "prefetch=TRUE"]).ucm_ab == ("prefetch", True)
    assert prefix_ttft.parse_args(args + ["--ucm-ab", "step_tokens=1024"]).ucm_ab == ("step_tokens", 1024)
    assert prefix_ttft.parse_args(args).ucm_ab is None
    for bad, says in (("prefetch=yes", "true or false"), ("step_tokens=-1", "whole number"),
                      ("layerwise=true", "NAME one of"), ("prefetch", "NAME one of")):
        with pytest.raises(SystemExit):
            prefix_ttft.parse_args(args + ["--ucm-ab", bad])
        assert says in capsys.readouterr().err
    with pytest.raises(SystemExit):  # the switch is flipped on this process's scheduler
        prefix_ttft.parse_args(args + ["--ucm-ab", "prefetch=true", "--tp", "2"])


def test_the_ab_table_pairs_each_repetition_of_a_switch(tmp_path):
    """An --ucm-ab part: B / A per repetition (the order alternates inside the engine, the pairs do not)."""
    reps = [dict(full_connector_on=_pass(0.09, 0), hit100=_pass(0.040, 3984), ab_hit100=_pass(0.030, 3984),
                 hit80=_pass(0.050, 3200), ab_hit80=_pass(0.055, 3200)),
            dict(ab_hit100=_pass(0.036, 3984), hit100=_pass(0.045, 3984), ab_hit80=_pass(0.050, 3200),
                 hit80=_pass(0.050, 3200), full_connector_on=_pass(0.09, 0))]
    _part(tmp_path, "ucm", [dict(L=8000, c=2, reps=reps)])
    part = json.loads(open(part_path(tmp_path, "ucm")).read())
    part["info"]["ucm_ab"] = dict(name="prefetch", a=False, b=True)
    open(part_path(tmp_path, "ucm"), "w").write(json.dumps(part))
    out = tmp_path / "out"
    out.mkdir()
    res = report(str(out), [str(tmp_path)])
    assert res["rows"][0]["ucm100_s"] == pytest.approx(0.0425)  # the columns keep A
    md = open(out / "prefix_ttft_h100_2026-11-28.md").read()
    assert "| 8000 | 2 | ucm | prefetch = True (A: False) | hit100 | 0.042 | 0.033 | 0.775 | 0.75 / 0.80 |" in md
    assert "| 8000 | 2 | ucm | prefetch = True (A: False) | hit80 | 0.050 | 0.053 | 1.050 | 1.10 / 1.00 |" in md
