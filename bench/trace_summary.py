"""Summaries of a torch.profiler chrome trace, shared by the profiling benches."""
from __future__ import annotations

import collections
import gzip
import json
import os


def save_trace(prof, stem: str) -> dict:
    """A finished torch.profiler run as ``<stem>.trace.json.gz`` (chrome://tracing, Perfetto); returns the trace."""
    prof.export_chrome_trace(stem + ".trace.json")
    with open(stem + ".trace.json") as f:
        trace = json.load(f)
    with open(stem + ".trace.json", "rb") as f, gzip.open(stem + ".trace.json.gz", "wb") as g:
        g.write(f.read())
    os.unlink(stem + ".trace.json")
    return trace


def interval_union(iv) -> list[list[float]]:
    """Overlapping (start, end) intervals merged, in order."""
    out: list[list[float]] = []
    for a, b in sorted(iv):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return out


def stream_summary(trace: dict) -> dict:
    """Per CUDA stream: busy ms (union of its kernel/memcpy intervals), first and last ms after the
    first GPU event, ms per kind (kernel, memcpy), and the overlap of every other stream with the
    busiest one (the model's, in a forward pass)."""
    by_stream = collections.defaultdict(list)
    for ev in trace.get("traceEvents", []):
        if ev.get("ph") != "X" or ev.get("cat") not in ("kernel", "gpu_memcpy", "gpu_memset"):
            continue
        stream = ev.get("args", {}).get("stream", ev.get("tid"))
        by_stream[stream].append((ev["ts"], ev["ts"] + ev.get("dur", 0), ev.get("cat")))

    unions = {s: interval_union([(a, b) for a, b, _ in iv]) for s, iv in by_stream.items()}
    busy = {s: sum(b - a for a, b in u) for s, u in unions.items()}
    if not busy:
        return {}
    main = max(busy, key=busy.get)
    t0 = min(a for u in unions.values() for a, _ in u)
    out = {}
    for s, u in unions.items():
        overlap = 0.0
        for a, b in u:
            for c, d in unions[main]:
                overlap += max(0.0, min(b, d) - max(a, c))
        cats = collections.Counter(c for _, _, c in by_stream[s])
        cat_ms = collections.Counter()
        for a, b, c in by_stream[s]:
            cat_ms[c] += (b - a) / 1e3
        out[str(s)] = dict(busy_ms=round(busy[s] / 1e3, 3), first_ms=round((u[0][0] - t0) / 1e3, 3),
                           last_ms=round((u[-1][1] - t0) / 1e3, 3), events=dict(cats),
                           ms_by_kind={c: round(v, 3) for c, v in cat_ms.items()},
                           overlap_with_main_ms=None if s == main else round(overlap / 1e3, 3),
                           main=s == main)
    return out


def blocking_calls(trace: dict, min_ms: float = 2.0, top: int = 12) -> dict:
    """CUDA runtime/driver calls on the CPU side: totals per name, and the longest ones (>= ``min_ms``)
    with the CPU ops around them (outermost first) and their start after the trace's first event: a
    hook or copy that waits for the GPU (a synchronize, an allocation that frees cached memory)
    shows here with what called it."""
    evs = [e for e in trace.get("traceEvents", []) if e.get("ph") == "X"]
    if not evs:
        return {}
    t0 = min(e["ts"] for e in evs)
    calls = [e for e in evs if e.get("cat") in ("cuda_runtime", "cuda_driver")]
    ops = sorted((e for e in evs if e.get("cat") in ("cpu_op", "user_annotation", "python_function")),
                 key=lambda e: e["ts"])
    totals = collections.defaultdict(lambda: [0, 0.0, 0.0])
    for e in calls:
        t = totals[e["name"]]
        t[0] += 1
        t[1] += e.get("dur", 0) / 1e3
        t[2] = max(t[2], e.get("dur", 0) / 1e3)
    long = sorted((e for e in calls if e.get("dur", 0) / 1e3 >= min_ms), key=lambda e: -e.get("dur", 0))[:top]
    out_long = []
    for e in long:
        a, b = e["ts"], e["ts"] + e.get("dur", 0)
        around = [o["name"] for o in ops if o["ts"] <= a and o["ts"] + o.get("dur", 0) >= b and o.get("tid") == e.get("tid")]
        out_long.append(dict(name=e["name"], start_ms=round((a - t0) / 1e3, 3), ms=round(e.get("dur", 0) / 1e3, 3),
                             inside=around[:6]))
    return dict(totals={k: dict(calls=v[0], ms=round(v[1], 3), max_ms=round(v[2], 3))
                        for k, v in sorted(totals.items(), key=lambda kv: -kv[1][1])[:top]},
                longest=out_long)
