"""Simulator speed: accesses per second of ``python -m ucm.sim`` replays in raw mode.

One seeded 1M-access Zipf trace (alpha 1.0 over 100k blocks), capacity 10 % of the distinct
blocks, admission ``always`` (``eviction+admission`` entries, e.g. ``lru+tinylfu``, time an
admission policy in front); the replay is timed (trace generation is not), best of ``--repeat``
runs, and checked against the targets of issue 3 (LRU >= 2 M/s, ARC >= 1 M/s, others >= 0.5 M/s).
Writes a Markdown table with ``--out``.

    python bench/sim_speed.py --out bench/results/sim_speed.md
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ucm.policies import EVICTION_POLICIES  # noqa: E402
from ucm.sim import synth  # noqa: E402
from ucm.sim.core import simulate  # noqa: E402

TARGETS = {"lru": 2.0e6, "arc": 1.0e6}
DEFAULT_TARGET = 0.5e6


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--accesses", type=int, default=1_000_000)
    ap.add_argument("--objects", type=int, default=100_000)
    ap.add_argument("--alpha", type=float, default=1.0)
    ap.add_argument("--capacity", type=float, default=0.10, help="fraction of the distinct blocks")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--policies", default=",".join(sorted(EVICTION_POLICIES)) + ",belady,lru+reuse,lru+tinylfu")
    ap.add_argument("--out", default=None, help="write the Markdown table here")
    a = ap.parse_args(argv)

    t0 = time.perf_counter()
    trace = synth.zipf(a.accesses, a.objects, a.alpha, seed=0)
    gen_s = time.perf_counter() - t0
    cap = int(a.capacity * trace.distinct())
    rows = []
    ok_all = True
    for name in a.policies.split(","):
        best = None
        for _ in range(a.repeat):
            eviction, _, admission = name.partition("+")
            r = simulate(trace, mode="raw", eviction=eviction, admission=admission or "always", capacity_blocks=cap)
            if best is None or r["elapsed_s"] < best["elapsed_s"]:
                best = r
        rate = trace.n_accesses / best["elapsed_s"]
        target = None if name == "belady" else TARGETS.get(name, DEFAULT_TARGET)
        ok = target is None or rate >= target
        ok_all &= ok
        rows.append((name, best["hit_ratio"], best["elapsed_s"], rate, target, ok))
        print(f"{name:10s} hit_ratio={best['hit_ratio']:.4f} {best['elapsed_s']:.3f}s "
              f"{rate / 1e6:.2f} M acc/s target {'-' if target is None else f'{target / 1e6:.1f} M/s'} "
              f"{'ok' if ok else 'BELOW TARGET'}", flush=True)
    lines = [
        "# Simulator speed (raw mode; admission always unless named after a +)",
        "",
        f"Trace: Zipf alpha {a.alpha}, {trace.n_accesses:,} accesses over {a.objects:,} blocks "
        f"({trace.distinct():,} distinct), seed 0 (generated in {gen_s:.2f} s, not timed). "
        f"Capacity {cap:,} blocks ({a.capacity:.0%} of distinct). Best of {a.repeat} runs.",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()} ({platform.python_implementation()}).",
        "Command: `python bench/sim_speed.py --out bench/results/sim_speed.md`",
        "",
        "| policy | hit ratio | replay s | accesses/s | target | met |",
        "|---|---:|---:|---:|---:|:---:|",
    ]
    for name, hr, s, rate, target, ok in rows:
        lines.append(f"| {name} | {hr:.4f} | {s:.3f} | {rate / 1e6:.2f} M | "
                     f"{'-' if target is None else f'{target / 1e6:.1f} M'} | {'yes' if ok else 'NO'} |")
    text = "\n".join(lines) + "\n"
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w", encoding="utf-8") as f:
            f.write(text)
    return 0 if ok_all else 1


if __name__ == "__main__":
    sys.exit(main())
