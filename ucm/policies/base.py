"""The two policy roles of a cache tier, as small abstract classes.

Policies are pure Python (no torch): a tier owns the bytes, a policy owns only the order of
keys. Keys are any hashable values (the tiers use ``bytes``).

Semantics shared by every eviction policy:
- ``insert(key)``: ``key`` was a miss and is now cached. The tier calls it only when the
  policy holds fewer than ``capacity`` keys (it calls ``evict`` first to make room).
- ``touch(key)``: a hit on a cached key.
- ``remove(key)``: ``key`` left the cache for a reason other than ``evict`` (dropped,
  corrupt). Ghost (history) entries may be kept.
- ``evict(protected, incoming)``: choose a cached key that is not in ``protected``, forget it
  and return it; ``None`` when every cached key is protected (or the policy is empty).
  ``incoming`` is the key about to be inserted, for policies (ARC) whose choice depends on it.
``key in policy`` and ``len(policy)`` count cached keys only, never ghost (history) entries.
Every operation is O(1) amortised (protected keys are skipped; a tier protects only the few
blocks that a copy is reading).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Container, Hashable
from typing import Optional

Key = Hashable

_NOTHING: frozenset = frozenset()


class EvictionPolicy(ABC):
    """Decides which cached key leaves first. ``capacity`` is in keys (blocks)."""

    name: str = "?"

    def __init__(self, capacity: int):
        if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
            raise ValueError(f"capacity must be a positive number of blocks, got {capacity!r}")
        self.capacity = capacity

    @abstractmethod
    def insert(self, key: Key) -> None: ...

    @abstractmethod
    def touch(self, key: Key) -> None: ...

    @abstractmethod
    def remove(self, key: Key) -> None: ...

    @abstractmethod
    def evict(self, protected: Container = _NOTHING, incoming: Optional[Key] = None) -> Optional[Key]: ...

    @abstractmethod
    def __contains__(self, key: object) -> bool: ...

    @abstractmethod
    def __len__(self) -> int: ...

    def __repr__(self) -> str:
        return f"{type(self).__name__}(capacity={self.capacity}, size={len(self)})"


class AdmissionPolicy(ABC):
    """Decides whether a missed key may enter the cache.

    ``record(key)`` notes one sighting of ``key`` (every access, hit or miss; a tier calls it
    on lookup). ``admit(key, victim)`` answers whether ``key`` may be inserted now; ``victim``
    is the key that would be evicted for it, if the caller knows one (TinyLFU compares them).
    """

    name: str = "?"

    @abstractmethod
    def record(self, key: Key) -> None: ...

    @abstractmethod
    def admit(self, key: Key, victim: Optional[Key] = None) -> bool: ...
