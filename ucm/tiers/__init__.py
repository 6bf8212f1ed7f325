"""Storage tiers and the chain, all behind the store contract of ``ucm.tiers.base``.

``create_store(name, config)`` builds a store by name: ``"UcmDramStore"`` (the DRAM tier alone),
or a chain described by ``conf/store/<name>.yaml`` (``dram``, ``dram_disk``, ``hbm_dram_disk``),
whose keys the given dict overrides.
"""
from __future__ import annotations

from importlib import resources
from typing import Any, Optional

from ucm.tiers.base import IO_ERROR, NOT_FOUND, OK, REFUSED, TIMEOUT, Store, Task, Tier
from ucm.tiers.chain import TierChain
from ucm.tiers.disk import DiskTier
from ucm.tiers.dram import UcmDramStore
from ucm.tiers.hbm import HbmTier
from ucm.tiers.hit_gate import SlowHitGate
from ucm.tiers.settings import StoreSettings, parse, validate

TIER_CLASSES = {"hbm": HbmTier, "dram": UcmDramStore, "disk": DiskTier}


def store_names() -> list[str]:
    return ["UcmDramStore"] + sorted(f.name[:-5] for f in resources.files("ucm.conf").joinpath("store").iterdir()
                                     if f.name.endswith(".yaml"))


def chain_config(name: str) -> dict:
    """The plain dict of ``conf/store/<name>.yaml``."""
    from omegaconf import OmegaConf

    f = resources.files("ucm.conf").joinpath("store", f"{name}.yaml")
    if not f.is_file():
        raise ValueError(f"unknown store {name!r}: choose one of {store_names()}")
    return OmegaConf.to_container(OmegaConf.create(f.read_text()), resolve=True)


def build_store(settings: StoreSettings) -> Store:
    """One tier alone, or a chain of the listed tiers (fastest first)."""
    settings = validate(settings)
    tiers = [TIER_CLASSES[name](settings=settings) for name in settings.tiers]
    if len(tiers) == 1:
        return tiers[0]
    return TierChain(tiers, slow_hits=SlowHitGate(settings.disk.hits) if "disk" in settings.tiers else None)


def create_store(name: str, config: Optional[dict[str, Any]] = None) -> Store:
    if name == "UcmDramStore":
        return UcmDramStore(config)
    from omegaconf import OmegaConf

    merged = OmegaConf.to_container(OmegaConf.merge(chain_config(name), config or {}))  # deep: disk.path alone keeps disk.max_size
    return build_store(parse(StoreSettings, merged))


__all__ = ["create_store", "build_store", "chain_config", "store_names", "Store", "Task", "Tier", "TierChain",
           "UcmDramStore", "HbmTier", "DiskTier", "StoreSettings", "OK", "NOT_FOUND", "REFUSED", "IO_ERROR",
           "TIMEOUT"]
