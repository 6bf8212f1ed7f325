"""The HBM tier: fixed slots in device memory, the head of a chain used standalone and in tests.

Inside vLLM the HBM tier is vLLM's own KV cache; this tier is for using ucm on its own. Where no
GPU is present (``device: auto``) its slots live in host memory, so the same code is tested.
"""
from __future__ import annotations

from typing import Any, Optional

import torch

from ucm.tiers.pool import SlotPoolTier
from ucm.tiers.settings import StoreSettings, build_policies, parse, validate


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"config key 'device' must be auto, cpu, cuda or cuda:N, got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"config key 'device' is {name!r} but no CUDA device is present: use device: auto or cpu")
    return device


class HbmTier(SlotPoolTier):
    def __init__(self, config: Optional[dict[str, Any]] = None, *, settings: Optional[StoreSettings] = None):
        s = settings or validate(parse(StoreSettings, {"tiers": ["hbm"], **(config or {})}))
        num_slots = s.hbm_size // s.kv_block_size
        eviction, admission = build_policies(s, num_slots)
        super().__init__(name="hbm", capacity=s.hbm_size, block_size=s.kv_block_size, eviction=eviction,
                         admission=admission, device=resolve_device(s.device), pin=False, timeout_s=s.timeout_s,
                         planes=s.planes, demote_ahead=s.demote_ahead)
        self.settings = s
