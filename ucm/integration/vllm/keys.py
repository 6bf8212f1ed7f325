"""Block keys: vLLM's own prefix block hashes, rooted in what makes KV bytes differ.

The chain root is a SHA-256 of the namespace (model, revision, KV dtype, block size, layer
count, per-layer page bytes, kv heads, head size, device type, TP size, key format version), so
two models, dtypes, block sizes or layouts never share a key; each rank's key appends its TP rank.
Keys are stable across processes and machines (no PYTHONHASHSEED needed).

A prefix seen again (the case ucm exists for) skips the hashing: the scheduler remembers which ucm
hash belongs to each of vLLM's own block hashes (already computed for its prefix cache, over the
same tokens and extra keys, so equal vLLM hashes mean equal ucm hashes). vLLM's hashes are only
good inside this process (their root is random without PYTHONHASHSEED), hence the memo, not keys.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

from ucm.integration.vllm import compat

KEY_VERSION = 2  # 2: ucm's own SHA-256 block chain (compat.block_hash_chain)


def namespace(vllm_config: Any, spec: dict, tp_size: int, cross_layer: bool = False) -> dict:
    model = vllm_config.model_config
    ns = dict(v=KEY_VERSION, model=str(model.model), revision=str(getattr(model, "revision", None)),
              dtype=spec["dtype"], block_size=spec["block_size"], layers=spec["num_layers"],
              page_bytes=spec["page_bytes"], kv_heads=spec["num_kv_heads"], head_size=spec["head_size"],
              device=compat.device_type(), tp_size=tp_size)
    if cross_layer:  # a block's bytes in vLLM's cross-layer order: never mixed with per-layer blocks
        ns["layout"] = "cross_layer"
    return ns


def root_hash(ns: dict) -> bytes:
    return hashlib.sha256(json.dumps(ns, sort_keys=True).encode()).digest()


class RequestKeys:
    """The block hashes of one request, extended lazily as its tokens grow."""

    __slots__ = ("request", "hashes")

    def __init__(self, request: Any):
        self.request = request
        self.hashes: list[bytes] = []


# vLLM block hash -> ucm block hash entries kept (oldest dropped first): ~180 B each (24 MB), 2M tokens of
# 16-token blocks; a dropped entry only costs hashing its block again.
MEMO_ENTRIES = 1 << 17


class KeyMaker:
    def __init__(self, root: bytes, block_size: int, tp_size: int, memo_entries: int = MEMO_ENTRIES):
        self.root = root
        self.block_size = block_size
        self.tp_size = tp_size
        self.memo_entries = memo_entries
        self._memo: dict[bytes, bytes] = {}  # insertion-ordered: the first key is the oldest

    def hashes(self, rk: RequestKeys, num_blocks: int) -> list[bytes]:
        """Hashes of the first ``num_blocks`` full blocks of the request (computed once each)."""
        have = len(rk.hashes)
        if num_blocks <= have:
            return rk.hashes[:num_blocks]
        theirs = compat.vllm_block_hashes(rk.request, self.block_size)
        memo = self._memo
        for vh in theirs[have:num_blocks]:  # blocks seen before: no hashing
            h = memo.get(vh)
            if h is None:
                break
            rk.hashes.append(h)
        have = len(rk.hashes)
        if num_blocks > have:
            parent = rk.hashes[-1] if have else self.root
            new = compat.block_hash_chain(rk.request, have, num_blocks, parent, self.block_size)
            rk.hashes.extend(new)
            for vh, h in zip(theirs[have:num_blocks], new):
                memo[vh] = h
            while len(memo) > self.memo_entries:
                del memo[next(iter(memo))]
        return rk.hashes[:num_blocks]

    @staticmethod
    def rank_key(block_hash: bytes, rank: int) -> bytes:
        return block_hash + b"/tp%d" % rank

    @staticmethod
    def rank_keys(block_hashes, rank: int) -> list[bytes]:
        """``rank_key`` of many hashes (one concatenation each: 1,000 per 16k-token prompt)."""
        suffix = b"/tp%d" % rank
        return [h + suffix for h in block_hashes]
