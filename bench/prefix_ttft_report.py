"""Merge the per-mode parts of bench/prefix_ttft.py into prefix_ttft_<gpu>_<date>.json / .md / .png.

Imports no vLLM and no torch, so the merge runs anywhere (e.g. back on the CPU machine):
    python3 bench/prefix_ttft.py --mode table --out DIR [--from DIR2,DIR3]
A value is the median over repetitions of a pass's mean TTFT over its c requests.
"""
from __future__ import annotations

import datetime
import glob
import json
import os
import re
import statistics

import host_speed
from prefix_ttft import MODE_COLUMNS, MODES, ROW_KEYS, write_outputs
from step_phases import PHASES

SEED_SPEEDUP = 3.3  # the seed's headline speed-up at 80 % hits


def load_parts(dirs: list[str]) -> dict:
    """mode -> {"info", "cells"}, cells merged over the folders by (L, c): a later folder's cell wins,
    so a mode split over several runs (e.g. by --lengths) comes back together."""
    parts = {}
    for d in dirs:
        for p in sorted(glob.glob(os.path.join(d, "prefix_ttft_part_*.json"))):
            mode = re.match(r"prefix_ttft_part_(\w+)\.json", os.path.basename(p)).group(1)
            with open(p) as f:
                part = json.load(f)
            merged = parts.setdefault(mode, {"info": part["info"], "cells": {}, "sources": []})
            merged["sources"].append(p)
            if part.get("decode"):
                merged["decode"] = part["decode"]
            for cell in part["cells"]:
                if (cell["L"], cell["c"]) in merged["cells"]:
                    print(f"note: {p} replaces {mode} cell L={cell['L']} c={cell['c']} read before")
                merged["cells"][(cell["L"], cell["c"])] = cell
                merged["info"] = part["info"]  # engine settings of the run that gave the last cell
    for merged in parts.values():
        merged["cells"] = list(merged["cells"].values())
        merged["info"] = dict(merged["info"], sources=merged.pop("sources"))
    return parts


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def cell_passes(cell: dict) -> dict:
    """pass -> summary over the repetitions of one cell of one mode."""
    out = {}
    for key in cell["reps"][0]:
        reps = [r[key] for r in cell["reps"] if key in r]
        s = dict(median_s=med([r["mean_s"] for r in reps]), reps_mean_s=[round(r["mean_s"], 5) for r in reps],
                 reps_max_s=[round(r["max_s"], 5) for r in reps],
                 cached_tokens=med([statistics.mean(r["cached_tokens"]) for r in reps]))
        lats = [sorted(r["lat_s"]) for r in reps if r.get("lat_s")]
        if lats and len({len(x) for x in lats}) == 1:  # the k-th request to finish, median over repetitions
            s["lat_ms"] = [round(1e3 * med(col), 1) for col in zip(*lats)]
        launch = [first_output_calls(r["steps"]) for r in reps if r.get("steps")]
        if launch and all(x is not None for x in launch):
            s["launch_ms"] = [round(med(col), 1) for col in zip(*launch)]
            phases = [first_output_phases(r["steps"], r["phases"]) for r in reps if r.get("phases")]
            if len(phases) == len(reps):  # {phase: ms} of the launch call, then of the output call
                s["launch_phases"] = [{k: round(med([p[j].get(k, 0.0) for p in phases]), 1) for k in PHASES}
                                      for j in (0, 1)]
        for src in ("ucm", "native"):
            if src in reps[0]:
                s[src] = {k: med([r[src].get(k) for r in reps]) for k in reps[0][src]}
        if reps[-1].get("gate"):  # the disk-hit gate's rates after the last repetition
            s["gate"] = reps[-1]["gate"]
        out[key] = s
    return out


def _first_output_call(steps: list):
    """Index of the engine.step() call that returned the first token, if a separate call launched its
    step (the one before it, which returned none); else None (synchronous scheduling)."""
    i = next((k for k, (_, done) in enumerate(steps) if done), None)
    return None if not i or steps[i - 1][1] else i


def first_output_calls(steps: list):
    """(ms of the engine.step() call that launched the step giving the first token, ms of the call that
    returned that token), from a pass's [ms, requests finished] per call; None without a separate launch
    call (synchronous scheduling). With vLLM's async scheduling a step's output comes back only from a
    later call, once the next step is launched (if any is ready): a slow launch delays every first token."""
    i = _first_output_call(steps)
    return None if i is None else (steps[i - 1][0], steps[i][0])


def first_output_phases(steps: list, phases: list):
    """The {phase: ms} of the two calls ``first_output_calls`` names (bench/step_phases.py), or None."""
    i = _first_output_call(steps)
    return None if i is None else (phases[i - 1], phases[i])


def merge(parts: dict) -> tuple[list, list]:
    """The rows of the issue's JSON and the per-cell details behind them."""
    grid = {}
    for mode in MODES:
        for cell in (parts.get(mode) or {}).get("cells", []):
            grid.setdefault((cell["L"], cell["c"]), {})[mode] = cell_passes(cell)
    rows, details = [], []
    for (L, c), modes in sorted(grid.items()):
        row = dict.fromkeys(ROW_KEYS)
        row.update(input_tokens=L, concurrency=c)
        for mode, passes in modes.items():
            for key, col in MODE_COLUMNS[mode].items():
                if key in passes:
                    row[col] = round(passes[key]["median_s"], 5)
        ucm100 = modes.get("ucm", {}).get("hit100", {}).get("ucm")
        if ucm100:
            row["ucm100_bytes"] = int(ucm100["loaded_bytes"])
        rows.append(row)
        details.append(dict(input_tokens=L, concurrency=c, modes=modes))
    return rows, details


def targets(row: dict, pinned_gbps) -> dict:
    """The issue's targets for one row: True / False, or None where a needed column is missing."""
    L, g = row["input_tokens"], row.get
    t = {}
    factor = 1.05 if L >= 8000 else 1.10
    t["ucm80_vs_hbm80"] = dict(limit_s=g("hbm80_s") and factor * g("hbm80_s"), factor=factor)
    t["ucm80_vs_hbm80"]["ok"] = le(g("ucm80_s"), t["ucm80_vs_hbm80"]["limit_s"])
    bound = None
    if g("hbm100_s") is not None and g("ucm100_bytes") is not None and pinned_gbps:
        bound = g("hbm100_s") + 1.1 * g("ucm100_bytes") / (pinned_gbps * 1e9)
    t["ucm100_vs_bound"] = dict(limit_s=bound, ok=le(g("ucm100_s"), bound))
    ok80, ok100 = le(g("ucm80_s"), g("native_best80_s")), le(g("ucm100_s"), g("native_best100_s"))
    t["ucm_vs_native_best"] = dict(ok80=ok80, ok100=ok100, ok=None if None in (ok80, ok100) else ok80 and ok100)
    s_ucm, s_hbm = ratio(g("full_s"), g("ucm80_s")), ratio(g("full_s"), g("hbm80_s"))
    applies = s_hbm is not None and s_hbm >= SEED_SPEEDUP
    t["speedup80"] = dict(ucm=s_ucm, hbm=s_hbm, applies=applies,
                          ok=(s_ucm >= SEED_SPEEDUP if (applies and s_ucm is not None) else None))
    return t


def own_hbm_targets(passes: dict, L: int, pinned_gbps) -> dict:
    """ucm's hits against the HBM hits of its own engine, timed next to them (``own_hbm80`` /
    ``own_hbm100``, bench/prefix_ttft.py): the issue's two HBM targets with the host's speed the same on
    both sides. None where the passes are missing (parts from before 2026-11-29's twenty-first session)."""
    g = lambda key: passes.get(key, {}).get("median_s")  # noqa: E731
    factor = 1.05 if L >= 8000 else 1.10
    limit80 = g("own_hbm80") and factor * g("own_hbm80")
    loaded = passes.get("hit100", {}).get("ucm", {}).get("loaded_bytes")
    limit100 = None
    if g("own_hbm100") is not None and loaded is not None and pinned_gbps:
        limit100 = g("own_hbm100") + 1.1 * loaded / (pinned_gbps * 1e9)
    return dict(factor=factor, limit80_s=limit80, ok80=le(g("hit80"), limit80),
                limit100_s=limit100, ok100=le(g("hit100"), limit100))


def le(x, limit):
    return None if x is None or limit is None else x <= limit


def ratio(a, b):
    return None if a is None or not b else round(a / b, 3)


def gpu_slug(name: str) -> str:
    m = re.search(r"\b([A-Z]\d{2,4}[A-Z]?)\b", name or "")
    return m.group(1).lower() if m else re.sub(r"[^a-z0-9]+", "-", (name or "unknown").lower()).strip("-")


# ---- Markdown ---------------------------------------------------------------------------------------
def f(x, nd=3):
    return "n/a" if x is None else f"{x:.{nd}f}"


def mark(ok):
    return "n/a" if ok is None else ("yes" if ok else "NO")


def reps_at_note(res: dict) -> str:
    """The lengths whose cells ran other repetitions (``--reps-at``), as the modes recorded them."""
    at = {}
    for m in res.get("modes", {}).values():
        at.update(m.get("reps_at") or {})
    return (" (" + ", ".join(f"{n} at {L} tokens" for L, n in sorted(at.items(), key=lambda kv: int(kv[0])))
            + ")") if at else ""


def markdown(res: dict) -> str:
    pct = int(round(100 * res["hit"]))
    L = [f"# Prefix-hit TTFT: {res['gpu']}, vLLM {res['vllm']}, {res['date']}", "",
         f"- torch {res['torch']}; pinned host->device copy (1 GiB, same process): "
         f"{f(res['pinned_h2d_gbps'], 1)} GB/s (device->host {f(res.get('pinned_d2h_gbps'), 1)} GB/s)",
         f"- model: {json.dumps(res['model'])}",
         f"- {res['reps']} repetitions per cell{reps_at_note(res)}, median of the per-pass mean TTFT over the c requests; "
         f"max_tokens 1; hit fraction {res['hit']}",
         "- all c prompts queued before the first engine step (engine core in this process, stepped by hand)"
         if all(m.get("engine_in_process") for m in res["modes"].values())
         else "- WARNING: some engines ran their engine core in its own process (prompts may be split over steps)",
         f"- command: `{res['command']}`", ""]
    L += ["| mode | V2 model runner | block size | max batched tokens | cross-layer KV | connector config | in-process "
          "| host speed (bench/host_speed.py) |",
          "|---|---|---:|---:|---|---|---|---|"]
    for mode, m in res["modes"].items():
        ktc = m.get("kv_transfer_config")
        L.append(f"| {mode} | {m.get('use_v2_model_runner')} | {m.get('block_size')} | "
                 f"{m.get('max_num_batched_tokens')} | {m.get('cross_layer_kv_cache')} | "
                 f"{'-' if not ktc else '`' + json.dumps(ktc['kv_connector_extra_config']) + '`'} | "
                 f"{m.get('engine_in_process')} | {host_speed.summary(m.get('host_speed'))}"
                 + (f"; at the end: {host_speed.summary(m['host_speed_end'])}" if m.get("host_speed_end") else "")
                 + " |")
    cols = [k for k in ROW_KEYS if k.endswith("_s")]
    L += ["", "## TTFT (s)", "", "| input | c | " + " | ".join(c[:-2] for c in cols)
          + f" | ucm{pct} speed-up | ucm100 KV (GB) |", "|---:|---:|" + "---:|" * (len(cols) + 2)]
    for r, t in zip(res["rows"], res["targets"]):
        sp = t["speedup80"]["ucm"]
        L.append(f"| {r['input_tokens']} | {r['concurrency']} | " + " | ".join(f(r[c]) for c in cols)
                 + f" | {'n/a' if sp is None else f'{sp:.2f}x'} | {f(r['ucm100_bytes'] and r['ucm100_bytes'] / 1e9)} |")
    L += ["", "## Targets of issue 5", "",
          f"| input | c | ucm{pct} <= k x hbm{pct} (limit s) | ucm100 <= hbm100 + 1.1 x bytes / pinned (limit s) "
          f"| ucm <= native_best ({pct} / 100) | full / ucm{pct} (full / hbm{pct}) >= {SEED_SPEEDUP} where the HBM hit reaches it |",
          "|---:|---:|---|---|---|---|"]
    for r, t in zip(res["rows"], res["targets"]):
        a, b, n, s = t["ucm80_vs_hbm80"], t["ucm100_vs_bound"], t["ucm_vs_native_best"], t["speedup80"]
        L.append(f"| {r['input_tokens']} | {r['concurrency']} | {mark(a['ok'])} ({a['factor']}x: {f(a['limit_s'])}) "
                 f"| {mark(b['ok'])} ({f(b['limit_s'])}) | {mark(n['ok80'])} / {mark(n['ok100'])} "
                 f"| {mark(s['ok'])} ({f(s['ucm'], 2)} ({f(s['hbm'], 2)})) |")
    L += own_hbm_table(res)
    L += ab_table(res)
    L += connector_on_table(res)
    L += order_table(res)
    L += launch_table(res)
    L += phase_table(res)
    L += decode_table(res)
    L += hits_table(res)
    return "\n".join(L) + "\n"


def own_hbm_table(res: dict) -> list:
    """Each connector's hits beside the GPU prefix-cache hits of its own engine (same process, timed right
    after): the DRAM hit's cost over an HBM hit with the host's speed cancelled out, and ucm's two HBM
    targets judged that way."""
    pct = int(round(100 * res["hit"]))
    rows = []
    for d, t in zip(res["cells"], res["targets"]):
        for mode, p in d["modes"].items():
            if "own_hbm80" not in p and "own_hbm100" not in p:
                continue
            g = lambda key: p.get(key, {}).get("median_s")  # noqa: E731
            own = t.get("ucm_vs_own_hbm") if mode == "ucm" else None
            verdict = (f"{mark(own['ok80'])} ({own['factor']}x: {f(own['limit80_s'])}) / {mark(own['ok100'])} "
                       f"({f(own['limit100_s'])})") if own else "-"
            extra = None if None in (g("hit100"), g("own_hbm100")) else 1e3 * (g("hit100") - g("own_hbm100"))
            rows.append(f"| {d['input_tokens']} | {d['concurrency']} | {mode} | {f(g('hit80'))} | {f(g('own_hbm80'))} "
                        f"| {f(ratio(g('hit80'), g('own_hbm80')), 2)} | {f(g('hit100'))} | {f(g('own_hbm100'))} "
                        f"| {f(extra, 1)} | {verdict} |")
    if not rows:
        return []
    return ["", "## Each connector's hits against its own engine's HBM hits (s; same process, timed right after)", "",
            f"| input | c | mode | hit{pct} | own HBM{pct} | x own | hit100 | own HBM100 | + ms | ucm: hit{pct} <= k x own "
            f"HBM{pct} / hit100 <= own HBM100 + 1.1 x bytes / pinned (limit s) |",
            "|---:|---:|---|---:|---:|---:|---:|---:|---:|---|"] + rows


AB_PASSES = ("hit80", "hit100", "own_hbm80", "own_hbm100")


def ab_table(res: dict) -> list:
    """``--ucm-ab``: each pass as configured (A) and with the switch (B, passes ``ab_*``) in the one engine,
    repetition by repetition: the median of B / A over the repetitions, and the repetitions' ratios."""
    L = []
    for d in res["cells"]:
        for mode, p in d["modes"].items():
            ab = res["modes"].get(mode, {}).get("ucm_ab")
            for key in AB_PASSES if ab else ():
                a, b = p.get(key), p.get(f"ab_{key}")
                if not a or not b:
                    continue
                pairs = [y / x for x, y in zip(a["reps_mean_s"], b["reps_mean_s"]) if x]
                L.append(f"| {d['input_tokens']} | {d['concurrency']} | {mode} | {ab['name']} = {ab['b']} "
                         f"(A: {ab['a']}) | {key} | {f(a['median_s'])} | {f(b['median_s'])} | "
                         f"{f(med(pairs), 3)} | {' / '.join(f'{x:.2f}' for x in pairs)} |")
    if not L:
        return []
    return ["", "## A / B in one engine (`--ucm-ab`: A as configured, B with the switch, alternating A B / B A; "
                "s, and B / A repetition by repetition)", "",
            "| input | c | mode | switch B (A) | pass | A | B | B / A (median) | B / A per repetition |",
            "|---:|---:|---|---|---|---:|---:|---:|---|"] + L


def connector_on_table(res: dict) -> list:
    """Full compute (fresh prompts) on each engine: the cost of storing to the connector while computing."""
    modes = [m for m in MODES if m != "full" and m in res["modes"]]
    if not modes:
        return []
    L = ["", "## Full compute with each connector on (s; fresh prompts, stores running)", "",
         "| input | c | no connector | " + " | ".join(modes) + " |", "|---:|---:|---:|" + "---:|" * len(modes)]
    for d in res["cells"]:
        m = d["modes"]
        vals = [m.get(x, {}).get("full_connector_on", {}).get("median_s") for x in modes]
        L.append(f"| {d['input_tokens']} | {d['concurrency']} | {f(m.get('full', {}).get('full', {}).get('median_s'))} | "
                 + " | ".join(f(v) for v in vals) + " |")
    return L


def _pass_table(res: dict, field: str, keys: tuple, cells: str, min_c: int = 1) -> list:
    """``| input | c | mode | pass | <cells(value)> |`` for every pass in ``keys`` that has ``field``."""
    return [f"| {d['input_tokens']} | {d['concurrency']} | {mode} | {key} | {cells(passes[key][field])} |"
            for d in res["cells"] if d["concurrency"] >= min_c
            for mode, passes in d["modes"].items()
            for key in keys if passes.get(key, {}).get(field)]


def order_table(res: dict) -> list:
    """At c >= 2: when each request got its first token. The mean TTFT of a cell falls when an
    offloader serves the c requests in turn (vLLM's native offload does) rather than in one step."""
    L = _pass_table(res, "lat_ms", ("hit80", "hit100"), lambda lat: " / ".join(f"{x:.0f}" for x in lat), min_c=2)
    if not L:
        return []
    return ["", "## First tokens in order at c >= 2 (ms: each repetition's request latencies sorted, median over "
                "repetitions)", "", "| input | c | mode | pass | first / ... / last |", "|---:|---:|---|---|---|"] + L


LAUNCH_PASSES = ("hbm80", "hbm100", "hit80", "hit100", "own_hbm80", "own_hbm100")


def launch_table(res: dict) -> list:
    """Per pass, the engine.step() call that launched the step giving the first token and the call that
    returned it (ms, median over repetitions): the launch is CPU (scheduling, the connector's hooks, the
    forward's kernel launches) and, with async scheduling, delays the first output."""
    L = _pass_table(res, "launch_ms", LAUNCH_PASSES, lambda ms: f"{ms[0]:.1f} | {ms[1]:.1f}")
    if not L:
        return []
    return ["", "## The step giving the first token: its launch call and its output call (ms, median over repetitions)",
            "", "| input | c | mode | pass | launch | output |", "|---:|---:|---|---|---:|---:|"] + L


def phase_table(res: dict) -> list:
    """The launch and output calls of ``launch_table`` split into phases (bench/step_phases.py): which
    part of a launch is slower with a connector hit than with an HBM hit."""
    L = [f"| {d['input_tokens']} | {d['concurrency']} | {mode} | {key} | {call} | "
         + " | ".join(f"{ph[k]:.1f}" for k in PHASES) + " |"
         for d in res["cells"] for mode, passes in d["modes"].items()
         for key in LAUNCH_PASSES if passes.get(key, {}).get("launch_phases")
         for call, ph in zip(("launch", "output"), passes[key]["launch_phases"])]
    if not L:
        return []
    return ["", "## The launch and output calls by phase (ms, median over repetitions; bench/step_phases.py: "
                "sched.* are part of schedule, exec.* of execute, sample.post of sample; other is mostly "
                "waiting for an earlier step's output; cpu: the engine thread's own CPU time in the call)", "",
            "| input | c | mode | pass | call | " + " | ".join(PHASES) + " |",
            "|---:|---:|---|---|---|" + "---:|" * len(PHASES)] + L


DECODE_TARGET = 0.97  # storing may cost decode at most 3 %


def median_interval(xs: list, coverage: float = 0.9) -> tuple:
    """A distribution-free interval for the median of ``xs`` (order statistics: the k-th smallest
    and k-th largest, k the largest whose binomial coverage is >= ``coverage``), and its coverage;
    (None, None, 0.0) when too few values reach it."""
    from math import comb

    n, ys = len(xs), sorted(xs)
    best = (None, None, 0.0)
    for k in range(1, n // 2 + 1):
        cov = 1 - 2 * sum(comb(n, i) for i in range(k)) / 2 ** n
        if cov < coverage:
            break
        best = (ys[k - 1], ys[n - k], cov)
    return best


def decode_verdict(pairs: list, target: float = DECODE_TARGET) -> str:
    """Met when the median pair ratio's interval lies at or above ``target``, missed when below it,
    else inconclusive (the pairs spread across it)."""
    lo, hi, cov = median_interval(pairs)
    if lo is None:
        return f"inconclusive ({len(pairs)} pairs are too few for a 90 % interval)"
    span = f"{cov:.0%} interval of the median {lo:.3f}-{hi:.3f}"
    return (f"met ({span})" if lo >= target else f"missed ({span})" if hi < target
            else f"inconclusive ({span}, across {target})")


def decode_table(res: dict) -> list:
    """Decode tokens/s without a connector and with ucm storing every block that fills (target: <= 3 % slower)."""
    dec = res.get("decode") or {}
    if not dec:
        return []
    any_d = next(iter(dec.values()))
    L = ["", f"## Decode speed (batch {any_d['batch']}, prompt {any_d['prompt_tokens']} tokens, "
             f"{any_d['max_tokens']} tokens each; tokens/s after every request's first token, median of reps)", "",
         "| mode | tokens/s | reps | vs no connector |", "|---|---:|---|---:|"]
    base = dec.get("full", {}).get("median_tok_s")
    ab = []
    for mode, d in dec.items():
        rows = [(mode, d["median_tok_s"], d["reps"])]
        if d.get("no_store_reps"):
            rows.append((f"{mode}, not storing (same engine)", d["no_store_median_tok_s"], d["no_store_reps"]))
            ab.append(f"- {mode}: storing / not storing in the same engine, repetitions alternated A B B A: median of "
                      f"the pairs' ratios **{d['store_vs_no_store']:.3f}** (pairs "
                      f"{', '.join(f'{x:.3f}' for x in d['store_vs_no_store_pairs'])}; target >= {DECODE_TARGET}: "
                      f"{decode_verdict(d['store_vs_no_store_pairs'])})")
            if d.get("store_vs_no_store_step_pairs"):
                sp = d["store_vs_no_store_step_pairs"]
                ab.append(f"- {mode}: the same pairs by each repetition's median step time (a few long steps do not "
                          f"move it): median ratio **{statistics.median(sp):.3f}** ({decode_verdict(sp)})")
        if d.get("store_vs_no_store_switch_pairs"):
            sw = d["store_vs_no_store_switch_pairs"]
            ab.append(f"- {mode}: storing switched off and on every {d['switch_steps']} steps within each repetition "
                      f"(`--decode-switch-steps`), each block of storing steps against the next block without: "
                      f"median ratio of their median step times **{statistics.median(sw):.3f}** over {len(sw)} "
                      f"pairs (target >= {DECODE_TARGET}: {decode_verdict(sw)})")
        for name, med, reps in rows:
            rel = med / base if base else None
            L.append(f"| {name} | {med:.1f} | {', '.join(f'{x:.1f}' for x in (r['tok_s'] for r in reps))} "
                     f"| {'n/a' if rel is None else f'{rel:.3f}'} |")
    return L + ([""] + ab if ab else [])


def hits_table(res: dict) -> list:
    """Cached tokens per request (mean) per pass: the proof that the hits happened, and where from."""
    L = ["", "## Cached tokens per request (vLLM's num_cached_tokens, median over reps) and connector loads (MB)", "",
         "| input | c | mode: pass = cached tokens [loaded MB; blocks read from disk / blocks loaded] |", "|---:|---:|---|"]
    for d in res["cells"]:
        parts = []
        for mode, passes in d["modes"].items():
            for key, p in passes.items():
                s = f"{mode}:{key}={f(p['cached_tokens'], 0)}"
                u, n = p.get("ucm"), p.get("native")
                if u and u.get("loaded_bytes"):
                    s += f" [{u['loaded_bytes'] / 1e6:.1f} MB"
                    if "chain_lower_hits" in u:
                        s += f"; {u['chain_lower_hits']:.0f}/{u['loaded_blocks']:.0f}"
                    s += "]"
                if u and (u.get("gate_allowed") or u.get("gate_refused")):  # ucm_disk: the disk-hit gate
                    g = p.get("gate") or {}
                    s += f" (disk hits allowed {u.get('gate_allowed', 0):.0f}, refused {u.get('gate_refused', 0):.0f}"
                    if g.get("read_gbps") or g.get("compute_gbps"):
                        s += f"; read {g.get('read_gbps') or 0:.2f} / compute {g.get('compute_gbps') or 0:.2f} GB/s"
                    s += ")"
                if n and n.get("load_bytes"):
                    s += f" [{n['load_bytes'] / 1e6:.1f} MB]"
                parts.append(s)
        L.append(f"| {d['input_tokens']} | {d['concurrency']} | {'; '.join(parts)} |")
    return L


# ---- the whole result -------------------------------------------------------------------------------
def report(out: str, from_dirs: list[str]) -> dict:
    parts = load_parts(list(from_dirs) + [out])
    if not parts:
        raise SystemExit(f"no prefix_ttft_part_*.json in {[out] + list(from_dirs)}")
    infos = {m: parts[m]["info"] for m in MODES if m in parts}
    first = next(iter(infos.values()))
    pinned = next((i.get("pinned_h2d_gbps") for m, i in sorted(infos.items(), key=lambda kv: kv[0] != "ucm")
                   if i.get("pinned_h2d_gbps")), None)
    d2h = next((i.get("pinned_d2h_gbps") for i in infos.values() if i.get("pinned_d2h_gbps")), None)
    rows, details = merge(parts)
    checks = [dict(input_tokens=r["input_tokens"], concurrency=r["concurrency"], **targets(r, pinned),
                   ucm_vs_own_hbm=own_hbm_targets(d["modes"].get("ucm", {}), r["input_tokens"], pinned))
              for r, d in zip(rows, details)]
    date = min(i["started"] for i in infos.values())[:10]
    cmds = sorted({i.get("run_command") or i["command"] for i in infos.values()})
    res = dict(gpu=first["gpu"], vllm=first["vllm"], torch=first["torch"], date=date,
               command=" && ".join(cmds),
               pinned_h2d_gbps=pinned, pinned_d2h_gbps=d2h, model=first["model"], hit=first["hit"],
               reps=first["reps"], modes=infos, rows=rows, targets=checks, cells=details,
               decode={m: parts[m]["decode"] for m in MODES if m in parts and parts[m].get("decode")},
               generated=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
    stem = os.path.join(out, f"prefix_ttft_{gpu_slug(res['gpu'])}_{date}")
    from plot_prefix_ttft import plot

    ext = write_outputs(stem, res, markdown(res), plot)
    print(markdown(res))
    print(f"wrote {stem}.{{{ext}}}", flush=True)
    return res
