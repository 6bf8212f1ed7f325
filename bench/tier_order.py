"""Prefix-mode replay, one tier, admission ``always``: the trace's order against the tiers' order.

The DRAM/HBM tiers insert a commit's blocks and touch a read's blocks last-first (a request's tail
is evicted before its head); the simulator's classic policies use the trace's first-to-last order.
This replays both orders for LRU, ARC and S3-FIFO at 5 % and 10 % of a trace's distinct blocks and
prints the block hit ratios side by side (the first equals ``ucm.sim``'s prefix mode).

    python bench/tier_order.py ../shared/traces/conversation_trace.jsonl ../shared/traces/synthetic_trace.jsonl
"""
from __future__ import annotations

import sys

from ucm.policies import make_eviction
from ucm.sim.trace import load_jsonl


def replay(trace, eviction: str, capacity: int, tail_first: bool) -> float:
    ev = make_eviction(eviction, capacity)
    keys, starts = trace.keys, trace.starts
    hits = 0
    for r in range(len(starts) - 1):
        s, e = starts[r], starts[r + 1]
        i = s
        while i < e and keys[i] in ev:  # the longest cached prefix
            i += 1
        hits += i - s
        for j in (range(i - 1, s - 1, -1) if tail_first else range(s, i)):
            ev.touch(keys[j])
        for j in (range(e - 1, i - 1, -1) if tail_first else range(i, e)):  # recomputed, stored
            k = keys[j]
            if k in ev:
                ev.touch(k)
                continue
            while len(ev) >= ev.capacity:
                ev.evict(incoming=k)
            ev.insert(k)
    return hits / trace.n_accesses


def main() -> None:
    print("trace, capacity, policy: block hit ratio in the trace's order -> in the tiers' order")
    for path in sys.argv[1:]:
        t = load_jsonl(path)
        for frac in (0.05, 0.10):
            cap = int(frac * t.distinct())
            cells = [f"{name} {replay(t, name, cap, False):.4f} -> {replay(t, name, cap, True):.4f}"
                     for name in ("lru", "arc", "s3fifo")]
            print(f"{path.rsplit('/', 1)[-1]}, {frac:.0%} ({cap}): " + "; ".join(cells), flush=True)


if __name__ == "__main__":
    main()
