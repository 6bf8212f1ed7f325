"""SIEVE eviction (Zhang et al., NSDI 2024).

Semantics (identical to libCacheSim's ``Sieve.c``): keys sit in one queue in insertion order;
a hit only sets the key's ``visited`` bit. A *hand* walks from the oldest key toward the
newest: a visited key has its bit cleared and is kept in place, the first unvisited key is
evicted, and the hand stays where it stopped. When it passes the newest key it wraps to the
oldest. A miss inserts at the newest end with the bit clear.

Structure: the queue is split at the hand into ``_ahead`` (keys the hand has not reached yet,
oldest first, new keys appended) and ``_passed`` (keys it already swept, in the same order).
Since keys never move, wrapping around is a swap of the two halves. Both halves are
``OrderedDict`` (O(1) pop of the oldest and O(1) removal of any key), so every operation is
O(1) amortised (each sweep step clears a bit that a hit set).
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Container
from typing import Optional

from ucm.policies.base import _NOTHING, EvictionPolicy, Key


class SievePolicy(EvictionPolicy):
    name = "sieve"

    def __init__(self, capacity: int):
        super().__init__(capacity)
        self._visited: dict[Key, bool] = {}
        self._ahead: OrderedDict[Key, None] = OrderedDict()
        self._passed: OrderedDict[Key, None] = OrderedDict()

    def insert(self, key: Key) -> None:
        if key in self._visited:
            self._visited[key] = True
            return
        self._visited[key] = False
        self._ahead[key] = None

    def touch(self, key: Key) -> None:
        if key in self._visited:
            self._visited[key] = True

    def remove(self, key: Key) -> None:
        if self._visited.pop(key, None) is None:
            return
        if key in self._ahead:
            del self._ahead[key]
            if not self._ahead:
                self._ahead, self._passed = self._passed, self._ahead
        else:
            del self._passed[key]

    def evict(self, protected: Container = _NOTHING, incoming: Optional[Key] = None) -> Optional[Key]:
        visited = self._visited
        if not visited:
            return None
        budget = 2 * len(visited) + 2  # every key is seen at most twice before one is evicted
        while budget:
            budget -= 1
            ahead = self._ahead
            if not ahead:
                self._ahead, self._passed = self._passed, ahead
                continue
            key, _ = ahead.popitem(last=False)
            if visited[key] or key in protected:
                visited[key] = False if key not in protected else visited[key]
                self._passed[key] = None
                if not ahead:
                    self._ahead, self._passed = self._passed, ahead
                continue
            del visited[key]
            if not ahead:
                self._ahead, self._passed = self._passed, ahead
            return key
        return None

    def peek_victim(self, protected: Container = _NOTHING, limit: int = 64) -> Optional[Key]:
        """The key ``evict`` would take if no bit changed: the first unvisited key from the hand
        on. Looks at ``limit`` keys at most (``None`` past that), so it stays O(1)."""
        seen = 0
        for part in (self._ahead, self._passed):
            for key in part:
                if not self._visited[key] and key not in protected:
                    return key
                seen += 1
                if seen >= limit:
                    return None
        return None

    def __contains__(self, key: object) -> bool:
        return key in self._visited

    def __len__(self) -> int:
        return len(self._visited)
