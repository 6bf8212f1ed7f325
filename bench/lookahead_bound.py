"""What knowing the next Q requests would be worth (issue 3's gap to Belady): prefix mode, one tier, an
eviction policy that never evicts a block the next Q requests use (``evict(protected)``), Q = 0
being the plain policy. vLLM asks the connector only about the requests it is scheduling now (a few a
step), so small Q is what a connector could see; large Q needs the serving layer's queue.

    python bench/lookahead_bound.py ../shared/traces/conversation_trace.jsonl --policies lru,prefixlfu --q 0,8,32,128

Prints block hit ratios (hits / accesses, prefix mode) per capacity fraction, policy and Q.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ucm.policies import make_eviction  # noqa: E402
from ucm.sim.trace import Trace, load_jsonl  # noqa: E402


def block_hit_ratio(trace: Trace, policy: str, capacity: int, q: int) -> float:
    """Prefix-mode block hit ratio with the blocks of requests r+1..r+q protected while request r runs."""
    ev = make_eviction(policy, capacity)
    keys, starts = trace.keys, trace.starts
    n = len(starts) - 1
    queued: collections.Counter = collections.Counter()  # key -> queued requests using it
    for r in range(1, min(q, n - 1) + 1):
        queued.update(set(keys[starts[r]:starts[r + 1]]))
    begin = getattr(ev, "begin_sequence", None)
    hits = 0
    for r in range(n):
        s, e = starts[r], starts[r + 1]
        if q and r >= 1:  # request r leaves the queue, request r + q joins it
            if r + q < n:
                queued.update(set(keys[starts[r + q]:starts[r + q + 1]]))
            for k in set(keys[s:e]):
                queued[k] -= 1
                if queued[k] <= 0:
                    del queued[k]
        if begin is not None:
            begin()
        i = s
        while i < e and keys[i] in ev:  # the cached prefix
            ev.touch(keys[i])
            i += 1
        hits += i - s
        for k in keys[i:e]:  # the rest is recomputed and stored
            if k in ev:
                ev.touch(k)
                continue
            while len(ev) >= ev.capacity:
                if (ev.evict(queued, incoming=k) if q else ev.evict(incoming=k)) is None:
                    break
            else:
                ev.insert(k)
    return hits / len(keys)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("trace")
    ap.add_argument("--policies", default="lru,prefixlfu")
    ap.add_argument("--q", default="0,8,32,128")
    ap.add_argument("--fractions", default="0.05,0.10", help="capacity, fractions of the distinct blocks")
    ap.add_argument("--out")
    a = ap.parse_args()
    t = load_jsonl(a.trace)
    rows = []
    for frac in map(float, a.fractions.split(",")):
        cap = int(round(frac * t.distinct()))
        for pol in a.policies.split(","):
            for q in map(int, a.q.split(",")):
                rows.append(dict(trace=os.path.basename(a.trace), fraction=frac, capacity=cap, policy=pol, q=q,
                                 block_hit_ratio=round(block_hit_ratio(t, pol, cap, q), 4)))
                print(json.dumps(rows[-1]), flush=True)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
