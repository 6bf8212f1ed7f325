"""Eviction and admission policies (pure Python), chosen by name.

``make_eviction(name, capacity, **params)`` and ``make_admission(name, **params)`` build a
policy; an unknown name or parameter raises ``ValueError`` naming the allowed values.
"""
from __future__ import annotations

import inspect

from ucm.policies.always import AlwaysAdmit
from ucm.policies.arc import ARCPolicy
from ucm.policies.base import AdmissionPolicy, EvictionPolicy
from ucm.policies.chainarc import ChainARCPolicy
from ucm.policies.chainlfu import ChainLFUPolicy
from ucm.policies.lfu import LFUPolicy
from ucm.policies.lru import LRUPolicy
from ucm.policies.prefixlfu import PrefixLFUPolicy
from ucm.policies.reuse import ReuseAdmission
from ucm.policies.s3fifo import S3FIFOPolicy
from ucm.policies.sieve import SievePolicy
from ucm.policies.tinylfu import TinyLFUAdmission

EVICTION_POLICIES: dict[str, type[EvictionPolicy]] = {
    "lru": LRUPolicy,
    "lfu": LFUPolicy,
    "arc": ARCPolicy,
    "s3fifo": S3FIFOPolicy,
    "sieve": SievePolicy,
    "chainarc": ChainARCPolicy,
    "chainlfu": ChainLFUPolicy,
    "prefixlfu": PrefixLFUPolicy,
}
ADMISSION_POLICIES: dict[str, type[AdmissionPolicy]] = {
    "always": AlwaysAdmit,
    "reuse": ReuseAdmission,
    "tinylfu": TinyLFUAdmission,
}


def _build(kind: str, registry: dict, name: str, args: tuple, params: dict):
    cls = registry.get(name)
    if cls is None:
        raise ValueError(f"unknown {kind} policy {name!r}: choose one of {sorted(registry)} ({kind}=<name>)")
    allowed = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "capacity")]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(f"{kind} policy {name!r} has no parameter {unknown}: allowed {allowed}")
    return cls(*args, **params)


def make_eviction(name: str, capacity: int, **params) -> EvictionPolicy:
    return _build("eviction", EVICTION_POLICIES, name, (capacity,), params)


def make_admission(name: str, **params) -> AdmissionPolicy:
    return _build("admission", ADMISSION_POLICIES, name, (), params)


__all__ = [
    "AdmissionPolicy", "EvictionPolicy", "EVICTION_POLICIES", "ADMISSION_POLICIES",
    "make_eviction", "make_admission", "LRUPolicy", "AlwaysAdmit",
    "LFUPolicy", "ARCPolicy", "S3FIFOPolicy", "SievePolicy", "ChainARCPolicy", "ChainLFUPolicy", "PrefixLFUPolicy", "ReuseAdmission", "TinyLFUAdmission",
]
