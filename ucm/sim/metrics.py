"""Summaries of a replay: hit ratios, bytes moved and a simple prefill cost model.

- ``hit_ratio`` = hits / accesses (block hit ratio; in prefix mode only blocks of the cached
  prefix count as hits).
- ``prefix_hit_ratio`` = sum over requests of ``min(prefix_hit_blocks * block_tokens,
  input_length)`` / sum of ``input_length`` (token-weighted: the share of prompt tokens whose KV
  is reused instead of recomputed). In raw mode the prefix of a request is the leading run of
  its raw hits.
- Per tier: ``hits``/``hit_ratio`` (blocks served by the tier) and ``prefix_hit_ratio``: the
  token-weighted prefix hit ratio split over the tiers in proportion to the prefix-hit blocks
  each one served.
- Bytes: ``bytes_loaded`` (hits, per tier), ``bytes_stored`` (blocks written per tier,
  demotions included), ``bytes_promoted``.
- ``prefill_s_saved`` = hit tokens / ``prefill_tokens_per_s`` minus the time to load the hit
  blocks (``tier_gb_per_s`` per tier, GB = 1e9 bytes).
"""
from __future__ import annotations

from ucm.sim.replay import ReplayResult
from ucm.sim.trace import Trace


def summarize(trace: Trace, res: ReplayResult, *, block_tokens: int, block_bytes: int,
              tier_names: list, tier_gb_per_s: list, prefill_tokens_per_s: float) -> dict:
    accesses = trace.n_accesses
    total_tokens = sum(trace.tokens)
    hit_tokens = 0
    for pb, tok in zip(res.prefix_blocks, trace.tokens):
        if pb:
            t = pb * block_tokens
            hit_tokens += t if t < tok else tok
    prefix_blocks = sum(res.prefix_blocks)
    out = {
        "accesses": accesses,
        "requests": trace.n_requests,
        "hits": res.hits,
        "hit_ratio": res.hits / accesses if accesses else 0.0,
        "prefix_hit_blocks": prefix_blocks,
        "prefix_block_hit_ratio": prefix_blocks / accesses if accesses else 0.0,
        "prefix_hit_tokens": hit_tokens,
        "prompt_tokens": total_tokens,
        "prefix_hit_ratio": hit_tokens / total_tokens if total_tokens else 0.0,
    }
    tiers = {}
    load_s = 0.0
    for i, name in enumerate(tier_names):
        h = res.tier_hits[i] if i < len(res.tier_hits) else 0
        ins = res.inserted[i] if i < len(res.inserted) else 0
        gbps = tier_gb_per_s[i] if i < len(tier_gb_per_s) else tier_gb_per_s[-1]
        loaded = h * block_bytes
        load_s += loaded / (gbps * 1e9) if gbps else 0.0
        tpb = res.tier_prefix_blocks[i] if i < len(res.tier_prefix_blocks) else 0
        share = tpb / prefix_blocks if prefix_blocks else 0.0
        tiers[name] = {"hits": h, "hit_ratio": h / accesses if accesses else 0.0,
                       "prefix_hit_blocks": tpb, "prefix_hit_ratio": out["prefix_hit_ratio"] * share,
                       "bytes_loaded": loaded, "bytes_stored": ins * block_bytes, "blocks_stored": ins}
    out["tiers"] = tiers
    out["bytes_loaded"] = res.hits * block_bytes
    out["bytes_stored"] = sum(res.inserted) * block_bytes
    out["bytes_promoted"] = res.promoted * block_bytes
    out["demoted_blocks"] = res.demoted
    out["rejected_blocks"] = res.rejected
    out["prefill_s_total"] = total_tokens / prefill_tokens_per_s
    out["prefill_s_saved"] = hit_tokens / prefill_tokens_per_s - load_s
    return out
