"""Least-recently-used eviction: an OrderedDict, oldest first."""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Container
from typing import Optional

from ucm.policies.base import _NOTHING, EvictionPolicy, Key


class LRUPolicy(EvictionPolicy):
    """Evicts the key whose last insert or touch is oldest. A miss inserts at the MRU end."""

    name = "lru"

    def __init__(self, capacity: int):
        super().__init__(capacity)
        self._order: OrderedDict[Key, None] = OrderedDict()

    def insert(self, key: Key) -> None:
        self._order[key] = None
        self._order.move_to_end(key)

    def touch(self, key: Key) -> None:
        if key in self._order:
            self._order.move_to_end(key)

    def remove(self, key: Key) -> None:
        self._order.pop(key, None)

    def evict(self, protected: Container = _NOTHING, incoming: Optional[Key] = None) -> Optional[Key]:
        for key in self._order:  # oldest first; protected keys are rare, so this is O(1) amortised
            if key not in protected:
                del self._order[key]
                return key
        return None

    def __contains__(self, key: object) -> bool:
        return key in self._order

    def __len__(self) -> int:
        return len(self._order)
