"""A tier of fixed-size slots in one preallocated tensor: the shared core of DRAM and HBM tiers.

One allocation at start (``num_slots = capacity // block_size``), a free list of slot numbers,
and a map from block key to slot. Memory in use never exceeds ``capacity``. A block is first
*written* (dumped, invisible), then *committed* (hittable, known to the eviction policy). Blocks
being written or read by a copy in flight are never evicted; when nothing else is left, a dump
is refused (reported in its task, not raised).
"""
from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Optional

import torch

from ucm.policies import AdmissionPolicy, EvictionPolicy
from ucm.tiers.base import (IO_ERROR, NOT_FOUND, REFUSED, BlockId, Task, Tier, as_bytes, check_pieces,
                            log, to_keys)
from ucm.tiers.copy import CopyEngine


@dataclass
class _Block:
    slot: int
    committed: bool = False
    writers: list[Task] = field(default_factory=list)  # dump tasks copying into it


class SlotPoolTier(Tier):
    """Fixed slots in one tensor on ``device`` (pinned host memory when ``pin``)."""

    def __init__(self, *, name: str, capacity: int, block_size: int, eviction: EvictionPolicy,
                 admission: AdmissionPolicy, device: torch.device, pin: bool, timeout_s: float = 60.0):
        if block_size < 1:
            raise ValueError(f"kv_block_size must be a positive number of bytes, got {block_size}")
        self.num_slots = capacity // block_size
        if self.num_slots < 1:
            raise ValueError(f"{name} capacity {capacity} bytes is below one block (kv_block_size "
                             f"{block_size}): raise the capacity or lower kv_block_size")
        self.name = name
        self.block_size = block_size
        self.timeout_s = timeout_s
        self.device = device
        self.pool = torch.empty((self.num_slots, block_size), dtype=torch.uint8, device=device, pin_memory=pin)
        self.eviction = eviction
        self.admission = admission
        self._free = deque(range(self.num_slots))  # in order, so fresh slots are contiguous
        self._blocks: dict[bytes, _Block] = {}
        self._reading: dict[bytes, int] = {}  # key -> loads in flight (protected from eviction)
        self._inflight: list[Task] = []
        self._lock = threading.RLock()
        self._dumps = CopyEngine(f"{name}-dump", device)
        self._loads = CopyEngine(f"{name}-load", device)
        self.counters = dict(dumped_blocks=0, loaded_blocks=0, evictions=0, refused=0, demoted=0, skipped=0)

    # ---- contract -------------------------------------------------------------------------
    def has(self, key: bytes) -> bool:
        with self._lock:
            self.admission.record(key)
            blk = self._blocks.get(key)
            return blk is not None and blk.committed

    def dump(self, block_ids: Sequence[BlockId], offset: Sequence[int], src_tensor: Sequence[torch.Tensor]) -> Task:
        keys = check_pieces(block_ids, offset, src_tensor, self.block_size, "src_tensor")
        task = Task("dump")
        pairs, demoted = [], []
        with self._lock:
            self._reap()
            for key, off, src in zip(keys, offset, src_tensor):
                if key in task.failed:
                    continue  # refused earlier in this call
                blk = self._blocks.get(key)
                if blk is not None and blk.committed:
                    self.counters["skipped"] += 1
                    continue  # already stored: ids are content hashes
                if blk is None:
                    blk = self._new_block(key, demoted)
                    if blk is None:
                        task.fail(key, REFUSED)
                        self.counters["refused"] += 1
                        continue
                    self.counters["dumped_blocks"] += 1
                if not blk.writers or blk.writers[-1] is not task:
                    blk.writers.append(task)
                src = as_bytes(src)
                pairs.append((self.pool[blk.slot, off:off + src.numel()], src))
            task.add(self._dumps.submit(pairs, on_error=lambda exc: self._fail_all(task, keys)))
        self._demote(demoted)
        return task

    def load(self, block_ids: Sequence[BlockId], offset: Sequence[int], dst_tensor: Sequence[torch.Tensor]) -> Task:
        keys = check_pieces(block_ids, offset, dst_tensor, self.block_size, "dst_tensor")
        task = Task("load")
        pairs, pinned = [], {}
        with self._lock:
            self._reap()
            for key, off, dst in zip(keys, offset, dst_tensor):
                blk = self._blocks.get(key)
                if blk is None or not blk.committed:
                    task.fail(key, NOT_FOUND)
                    continue
                if key not in pinned:  # protect it from eviction until the copy is done
                    pinned[key] = None
                    self._reading[key] = self._reading.get(key, 0) + 1
                    self.eviction.touch(key)
                    self.counters["loaded_blocks"] += 1
                dst = as_bytes(dst)
                pairs.append((dst, self.pool[blk.slot, off:off + dst.numel()]))
            task.add(self._loads.submit(pairs, on_error=lambda exc: self._fail_all(task, keys)))
            task.on_done(lambda: self._release(list(pinned)))
            self._inflight.append(task)
        return task

    def commit(self, block_ids: Sequence[BlockId], is_success: bool = True) -> None:
        keys = to_keys(block_ids)
        with self._lock:
            writers = {id(t): t for k in keys if (b := self._blocks.get(k)) and not b.committed for t in b.writers}
        for t in writers.values():  # commit means "these bytes are final": let their copies finish
            if not t.wait(self.timeout_s):
                log.warning("ucm: %s: dump still running at commit; dropping its blocks", self.name)
        with self._lock:
            for key in keys:
                blk = self._blocks.get(key)
                if blk is None or blk.committed:
                    continue
                bad = any(key in t.failed or not t.done() for t in blk.writers)
                if is_success and not bad:
                    blk.committed, blk.writers = True, []
                    self.eviction.insert(key)
                else:
                    self._drop(key)

    # ---- whole blocks (chain) ---------------------------------------------------------------
    def read_block(self, key: bytes) -> Optional[torch.Tensor]:
        with self._lock:
            blk = self._blocks.get(key)
            if blk is None or not blk.committed:
                return None
            self.eviction.touch(key)
            data = self.pool[blk.slot].to("cpu", copy=True)
        return data

    def write_block(self, key: bytes, data: torch.Tensor) -> bool:
        demoted = []
        with self._lock:
            blk = self._blocks.get(key)
            if blk is not None:
                if blk.committed:
                    self.eviction.touch(key)
                return blk.committed
            blk = self._new_block(key, demoted)
            if blk is None:
                return False
            self.pool[blk.slot].copy_(as_bytes(data))
            blk.committed = True
            self.eviction.insert(key)
        self._demote(demoted)
        return True

    def stats(self) -> dict:
        with self._lock:
            return dict(self.counters, tier=self.name, slots=self.num_slots, used_slots=len(self._blocks),
                        committed=len(self.eviction), pool_bytes=self.pool.numel())

    def close(self) -> None:
        self._dumps.close()
        self._loads.close()

    # ---- internals --------------------------------------------------------------------------
    def _new_block(self, key: bytes, demoted: list) -> Optional[_Block]:
        """Admit ``key`` and give it a slot, evicting if full. Caller holds the lock."""
        if not self.admission.admit(key):
            return None
        if not self._free:
            self._reap()
            victim = self.eviction.evict(self._reading, incoming=key)
            if victim is None:
                return None
            vblk = self._blocks.pop(victim)
            self.counters["evictions"] += 1
            if self.demote_to is not None:  # copy out before the slot is reused
                demoted.append((victim, self.pool[vblk.slot].to("cpu", copy=True)))
            self._free.append(vblk.slot)
        blk = self._blocks[key] = _Block(self._free.popleft())
        return blk

    def _drop(self, key: bytes) -> None:
        blk = self._blocks.pop(key)
        if blk.committed:
            self.eviction.remove(key)
        self._free.append(blk.slot)

    def _demote(self, demoted: list) -> None:
        for key, data in demoted:  # outside the lock: the next tier may write a file
            if self.demote_to.write_block(key, data):
                self.counters["demoted"] += 1

    def _release(self, keys: list[bytes]) -> None:
        with self._lock:
            for key in keys:
                n = self._reading[key] - 1
                if n:
                    self._reading[key] = n
                else:
                    del self._reading[key]

    def _reap(self) -> None:
        """Release the blocks of loads that finished without anyone calling wait/check."""
        if self._inflight:
            self._inflight = [t for t in self._inflight if not t.done()]

    def _fail_all(self, task: Task, keys: list[bytes]) -> None:
        for key in keys:
            task.fail(key, IO_ERROR)
