"""Typed settings of a store, checked strictly: a wrong key, type or size fails at construction
with a message that names the key and what is allowed.

These dataclasses are also the Hydra structured-config schema (``ucm.config`` registers them),
so a store built from a plain dict and one built from ``conf/`` are validated the same way.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Optional

from ucm.policies import make_admission, make_eviction
from ucm.tiers.hit_gate import MODES as HIT_MODES

GiB = 1 << 30
MiB = 1 << 20
TIER_NAMES = ("hbm", "dram", "disk")


@dataclass
class PolicySettings:
    name: str = "lru"
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class DiskSettings:
    path: str = ""  # required when the chain has a disk tier
    max_size: int = 20 * GiB
    fsync: bool = False  # checksums + rename already make torn writes a miss, never wrong bytes
    # bytes of demoted blocks waiting for their files at most: past it a victim of the tier above is
    # dropped (a later miss) instead of copied and queued, so a disk slower than the misses arrive
    # never makes a dump (the model's thread) wait or memory grow; 0: nothing is demoted
    max_write_backlog: int = 256 * MiB
    # load hits found only on disk: auto (while reading them is measured faster than recomputing
    # them, ucm/tiers/hit_gate.py), always, never
    hits: str = "auto"


@dataclass
class StoreSettings:
    tiers: list[str] = field(default_factory=lambda: ["dram"])
    kv_block_size: int = 0  # bytes of one stored block; required
    max_cache_size: int = 5 * GiB  # bytes of the pinned DRAM pool
    planes: int = 1  # pool layout: each block split into this many planes (e.g. one per layer's K/V)
    hbm_size: int = 1 * GiB  # bytes of the device-memory tier, when the chain has one
    device: str = "auto"  # device of the HBM tier: auto (cuda if present, else cpu), cuda, cuda:N, cpu
    disk: Optional[DiskSettings] = None
    eviction: PolicySettings = field(default_factory=PolicySettings)
    admission: PolicySettings = field(default_factory=lambda: PolicySettings("always"))
    timeout_s: float = 60.0  # the longest wait() blocks
    # with a tier below: up to this fraction of a memory tier's slots is kept free ahead of dumps (as
    # many as the last dump took), its blocks moved down in the background, so a dump into a full
    # tier does not copy its victims out on the caller's (the model's) thread; 0 turns it off
    demote_ahead: float = 0.25


def parse(cls, data: Any, path: str = ""):
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types."""
    if dataclasses.is_dataclass(data) and isinstance(data, cls):
        data = dataclasses.asdict(data)
    if hasattr(data, "items") and not isinstance(data, dict):  # OmegaConf DictConfig and friends
        data = dict(data.items())
    if not isinstance(data, dict):
        raise ValueError(f"{path or 'config'} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        where = f"{path}.{key}" if path else str(key)
        if key not in hints:
            raise ValueError(f"unknown config key '{where}': allowed keys are {names}")
        kwargs[key] = _coerce(hints[key], value, where)
    return cls(**kwargs)


def _coerce(hint, value, where):
    origin = typing.get_origin(hint)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        (inner,) = [a for a in typing.get_args(hint) if a is not type(None)]
        return _coerce(inner, value, where)
    if dataclasses.is_dataclass(hint):
        if hint is PolicySettings and isinstance(value, str):
            return PolicySettings(value)  # shorthand: eviction: arc
        return parse(hint, value, where)
    if origin is list:
        if isinstance(value, str) or not hasattr(value, "__iter__"):
            raise ValueError(f"config key '{where}' must be a list, got {value!r}")
        (inner,) = typing.get_args(hint)
        return [_coerce(inner, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not hasattr(value, "items"):
            raise ValueError(f"config key '{where}' must be a mapping, got {value!r}")
        return dict(value.items())
    if hint is Any:
        return value
    if hint is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(f"config key '{where}' must be an integer (bytes), got {value!r}")
    if hint is float and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise ValueError(f"config key '{where}' must be a number, got {value!r}")
    if hint is bool and not isinstance(value, bool):
        raise ValueError(f"config key '{where}' must be true or false, got {value!r}")
    if hint is str and not isinstance(value, str):
        raise ValueError(f"config key '{where}' must be a string, got {value!r}")
    return float(value) if hint is float else value


def validate(s: StoreSettings) -> StoreSettings:
    """Cross-field checks that a single key's type cannot express."""
    if not s.tiers or any(t not in TIER_NAMES for t in s.tiers) or len(set(s.tiers)) != len(s.tiers):
        raise ValueError(f"config key 'tiers' must list distinct tiers from {list(TIER_NAMES)} "
                         f"(fastest first), got {s.tiers}")
    if list(s.tiers) != sorted(s.tiers, key=TIER_NAMES.index):
        raise ValueError(f"config key 'tiers' must be ordered fastest first {list(TIER_NAMES)}, got {s.tiers}")
    if s.kv_block_size <= 0:
        raise ValueError("config key 'kv_block_size' is required: the bytes of one stored block (> 0)")
    sizes = {"dram": ("max_cache_size", s.max_cache_size), "hbm": ("hbm_size", s.hbm_size)}
    for tier in s.tiers:
        if tier in sizes and sizes[tier][1] < s.kv_block_size:
            key, value = sizes[tier]
            raise ValueError(f"config key '{key}' = {value} is below one block (kv_block_size = "
                             f"{s.kv_block_size}): give at least {s.kv_block_size} bytes")
    if "disk" in s.tiers:
        if s.disk is None or not s.disk.path:
            raise ValueError("config key 'disk.path' is required for a chain with a disk tier: a directory for the spill files")
        if s.disk.max_size < s.kv_block_size:
            raise ValueError(f"config key 'disk.max_size' = {s.disk.max_size} is below one block "
                             f"(kv_block_size = {s.kv_block_size}): give at least {s.kv_block_size} bytes")
        if s.disk.hits not in HIT_MODES:
            raise ValueError(f"config key 'disk.hits' must be one of {list(HIT_MODES)}, got {s.disk.hits!r}")
        if s.disk.max_write_backlog != 0 and s.disk.max_write_backlog < s.kv_block_size:
            raise ValueError(f"config key 'disk.max_write_backlog' = {s.disk.max_write_backlog} is below one block "
                             f"(kv_block_size = {s.kv_block_size}): give at least {s.kv_block_size} bytes, or 0 to "
                             f"demote nothing (default {DiskSettings.max_write_backlog})")
    if s.planes < 1 or s.kv_block_size % s.planes:
        raise ValueError(f"config key 'planes' = {s.planes} must be >= 1 and divide kv_block_size = {s.kv_block_size}")
    if s.timeout_s <= 0:
        raise ValueError(f"config key 'timeout_s' must be > 0, got {s.timeout_s}")
    if not 0 <= s.demote_ahead < 1:
        raise ValueError(f"config key 'demote_ahead' must be a fraction of the tier's slots in [0, 1), "
                         f"got {s.demote_ahead}: 0 turns it off")
    return s


def build_policies(s: StoreSettings, num_slots: int):
    """The eviction and admission policies a tier of ``num_slots`` blocks uses."""
    try:
        eviction = make_eviction(s.eviction.name, num_slots, **s.eviction.params)
    except ValueError as exc:
        raise ValueError(f"config key 'eviction': {exc}") from None
    try:
        admission = make_admission(s.admission.name, **s.admission.params)
    except ValueError as exc:
        raise ValueError(f"config key 'admission': {exc}") from None
    return eviction, admission
