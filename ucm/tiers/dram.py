"""The DRAM tier: one pinned host pool of fixed slots (``UcmDramStore``, the seed's store).

Pinned (page-locked) memory lets host<->device copies run at PCIe speed, asynchronously on
dedicated CUDA streams. Without CUDA the pool is plain host memory and the same code runs.
"""
from __future__ import annotations

from typing import Any, Optional

import torch

from ucm.tiers.base import log
from ucm.tiers.pool import SlotPoolTier
from ucm.tiers.settings import StoreSettings, build_policies, parse, validate

_said_no_cuda = False


def _say_no_cuda_once() -> None:
    global _said_no_cuda
    if not _said_no_cuda:
        _said_no_cuda = True
        log.info("ucm: no CUDA device; the DRAM pool is plain (unpinned) host memory and copies run on a thread")


class UcmDramStore(SlotPoolTier):
    """DRAM tier. ``config``: ``max_cache_size`` (bytes, default 5 GiB), ``kv_block_size`` (bytes),
    optional ``eviction`` / ``admission`` (a name or ``{name, params}``) and ``timeout_s``."""

    def __init__(self, config: Optional[dict[str, Any]] = None, *, settings: Optional[StoreSettings] = None):
        s = settings or validate(parse(StoreSettings, config or {}))
        pin = torch.cuda.is_available()
        if not pin:
            _say_no_cuda_once()
        num_slots = s.max_cache_size // s.kv_block_size
        eviction, admission = build_policies(s, num_slots)
        super().__init__(name="dram", capacity=s.max_cache_size, block_size=s.kv_block_size,
                         eviction=eviction, admission=admission, device=torch.device("cpu"),
                         pin=pin, timeout_s=s.timeout_s, planes=s.planes, demote_ahead=s.demote_ahead)
        self.settings = s
