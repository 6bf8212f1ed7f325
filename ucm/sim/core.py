"""``simulate``: one replay from plain arguments (what the Hydra app and the benchmarks call)."""
from __future__ import annotations

import os
import time
from typing import Optional

from ucm.sim import synth
from ucm.sim.metrics import summarize
from ucm.sim.replay import Chain, replay_belady, replay_prefix, replay_raw
from ucm.sim.trace import Trace, load_jsonl

MODES = ("raw", "prefix")
BELADY = "belady"

_TRACE_CACHE: dict = {}


def load_trace(trace: str, *, block_tokens: int = 512, limit_requests: Optional[int] = None,
               synthetic: Optional[dict] = None) -> Trace:
    """A path to a Mooncake-format ``.jsonl``, or a generator name (``zipf``, ``scan``,
    ``conversation``) with ``synthetic`` as its parameters."""
    if trace in synth.GENERATORS:
        params = dict(synthetic or {})
        params.setdefault("block_tokens", block_tokens)
        key = (trace, tuple(sorted(params.items())))
        t = _TRACE_CACHE.get(key)
        if t is None:
            t = _TRACE_CACHE[key] = synth.generate(trace, **params)
    else:
        key = (os.path.abspath(trace), block_tokens)
        t = _TRACE_CACHE.get(key)
        if t is None:
            t = _TRACE_CACHE[key] = load_jsonl(trace, block_tokens)
    if limit_requests:
        t = t.head(limit_requests)
    return t


def resolve_capacity(trace: Trace, capacity_blocks=None, capacity_bytes=None, capacity_fraction=None,
                     block_bytes: int = 0) -> int:
    given = [x is not None for x in (capacity_blocks, capacity_bytes, capacity_fraction)]
    if sum(given) != 1:
        raise ValueError("give exactly one of capacity_blocks=<N>, capacity_bytes=<B> or "
                         "capacity_fraction=<f of the distinct blocks>")
    if capacity_blocks is not None:
        cap = int(capacity_blocks)
    elif capacity_bytes is not None:
        if block_bytes <= 0:
            raise ValueError("capacity_bytes needs block_bytes > 0")
        cap = int(capacity_bytes) // int(block_bytes)
    else:
        cap = int(round(float(capacity_fraction) * trace.distinct()))
    if cap < 1:
        raise ValueError(f"capacity must be at least one block, got {cap}")
    return cap


def simulate(trace: Trace, *, mode: str = "raw", eviction: str = "lru", admission: str = "always",
             capacity_blocks: int, eviction_params: Optional[dict] = None,
             admission_params: Optional[dict] = None, lower_tiers: Optional[list] = None,
             tier_name: str = "dram", block_tokens: int = 512, block_bytes: int = 2 << 20,
             prefill_tokens_per_s: float = 8000.0, tier_gb_per_s: Optional[list] = None,
             progress: bool = False, with_belady: bool = False, skip_partial: bool = False) -> dict:
    skip_partial = bool(skip_partial) and mode == "prefix"  # raw mode replays every id
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    lower_tiers = list(lower_tiers or [])
    names = [tier_name] + [str(t.get("name", f"tier{i + 1}")) for i, t in enumerate(lower_tiers)]
    caps = [int(capacity_blocks)] + [int(t["capacity_blocks"]) for t in lower_tiers]
    speeds = list(tier_gb_per_s or [25.0])
    speeds += [float(t.get("gb_per_s", speeds[-1])) for t in lower_tiers][len(speeds) - 1:]
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=trace.n_accesses, unit="acc", unit_scale=True, mininterval=0.5,
                   desc=f"{eviction}/{admission} {mode} c={capacity_blocks}", leave=False)
    tick = bar.update if bar is not None else None
    t0 = time.perf_counter()
    if eviction == BELADY:
        if lower_tiers or admission != "always":
            raise ValueError("eviction=belady is the offline optimum of one tier: no lower_tiers, admission=always")
        res = replay_belady(trace, caps[0], mode, tick, skip_partial, block_tokens)
    else:
        chain = Chain.build(eviction, admission, caps, eviction_params, admission_params)
        if mode == "raw":
            res = replay_raw(trace, chain, tick)
        else:
            res = replay_prefix(trace, chain, tick, skip_partial, block_tokens)
    elapsed = time.perf_counter() - t0
    if bar is not None:
        bar.close()
    out = {"trace": trace.name, "mode": mode, "eviction": eviction, "admission": admission,
           "capacity_blocks": caps[0]}
    out.update(summarize(trace, res, block_tokens=block_tokens, block_bytes=block_bytes, tier_names=names,
                         tier_gb_per_s=speeds, prefill_tokens_per_s=prefill_tokens_per_s))
    out["distinct_blocks"] = trace.distinct()
    out["capacity_fraction"] = caps[0] / out["distinct_blocks"] if out["distinct_blocks"] else 0.0
    out["lower_tiers"] = [{"name": n, "capacity_blocks": c} for n, c in zip(names[1:], caps[1:])]
    out["skip_partial"] = bool(skip_partial) and mode == "prefix"
    out["elapsed_s"] = round(elapsed, 4)
    out["accesses_per_s"] = round(trace.n_accesses / elapsed) if elapsed > 0 else None
    if with_belady and eviction != BELADY:
        b = replay_belady(trace, caps[0], mode, None, skip_partial, block_tokens)
        bs = summarize(trace, b, block_tokens=block_tokens, block_bytes=block_bytes, tier_names=names[:1],
                       tier_gb_per_s=speeds, prefill_tokens_per_s=prefill_tokens_per_s)
        out["belady_hit_ratio"] = bs["hit_ratio"]
        out["belady_prefix_hit_ratio"] = bs["prefix_hit_ratio"]
    return out
