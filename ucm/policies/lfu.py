"""Least-frequently-used eviction with O(1) frequency buckets.

Semantics (identical to libCacheSim's ``LFU.c``):
- A miss inserts the key with count 1; a hit adds 1. Counts live only while the key is
  cached: an evicted or removed key comes back with count 1 (no history is kept).
- ``evict`` takes the key with the smallest count; ties are broken least-recently-used
  first, i.e. the key that reached its current count earliest leaves first.

Structure: a doubly linked list of buckets, one per count present, in increasing count; each
bucket holds its keys in an ``OrderedDict`` (oldest first; a plain ``dict`` would make
finding the oldest key O(deleted) after many removals at its front). Every operation is
O(1): a hit moves a key from bucket ``f`` to bucket ``f + 1`` (created next to it if absent),
an eviction pops the oldest key of the first bucket.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Container
from typing import Optional

from ucm.policies.base import _NOTHING, EvictionPolicy, Key


class _Bucket:
    __slots__ = ("freq", "keys", "prev", "next")

    def __init__(self, freq: int, prev: Optional["_Bucket"], nxt: Optional["_Bucket"]):
        self.freq = freq
        self.keys: OrderedDict = OrderedDict()
        self.prev = prev
        self.next = nxt


class LFUPolicy(EvictionPolicy):
    """Evicts the least frequently used key; ties least-recently-used first."""

    name = "lfu"

    def __init__(self, capacity: int):
        super().__init__(capacity)
        self._where: dict[Key, _Bucket] = {}
        self._head: Optional[_Bucket] = None  # bucket with the smallest count

    # -- bucket list helpers --------------------------------------------------------------
    def _unlink(self, b: _Bucket) -> None:
        if b.prev is None:
            self._head = b.next
        else:
            b.prev.next = b.next
        if b.next is not None:
            b.next.prev = b.prev

    def insert(self, key: Key) -> None:
        if key in self._where:
            self.touch(key)
            return
        head = self._head
        if head is None or head.freq != 1:
            head = _Bucket(1, None, head)
            if head.next is not None:
                head.next.prev = head
            self._head = head
        head.keys[key] = None
        self._where[key] = head

    def touch(self, key: Key) -> None:
        b = self._where.get(key)
        if b is None:
            return
        f = b.freq + 1
        nb = b.next
        if nb is None or nb.freq != f:
            nb = _Bucket(f, b, nb)
            if nb.next is not None:
                nb.next.prev = nb
            b.next = nb
        del b.keys[key]
        nb.keys[key] = None
        self._where[key] = nb
        if not b.keys:
            self._unlink(b)

    def remove(self, key: Key) -> None:
        b = self._where.pop(key, None)
        if b is None:
            return
        del b.keys[key]
        if not b.keys:
            self._unlink(b)

    def peek_victim(self, protected: Container = _NOTHING) -> Optional[Key]:
        b = self._head
        while b is not None:
            for key in b.keys:
                if key not in protected:
                    return key
            b = b.next
        return None

    def evict(self, protected: Container = _NOTHING, incoming: Optional[Key] = None) -> Optional[Key]:
        head = self._head
        if head is None:
            return None
        if not protected:
            key, _ = head.keys.popitem(last=False)
            del self._where[key]
            if not head.keys:
                self._unlink(head)
            return key
        key = self.peek_victim(protected)
        if key is not None:
            self.remove(key)
        return key

    def __contains__(self, key: object) -> bool:
        return key in self._where

    def __len__(self) -> int:
        return len(self._where)

    def count(self, key: Key) -> int:
        """The current count of a cached key (0 when not cached)."""
        b = self._where.get(key)
        return 0 if b is None else b.freq
