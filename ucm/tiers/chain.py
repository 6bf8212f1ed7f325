"""An ordered chain of tiers, fastest first (e.g. HBM -> DRAM -> disk).

- lookup: a block is present if any tier holds it (from the disk tier down: while reading it is
  measured faster than recomputing it, ``hit_gate``).
- dump/commit: into the head tier; a block committed in any tier already is skipped (ids are
  content hashes), and a block the head refuses (full of blocks in flight, or its admission says
  no) falls through to the next tier. All pieces of one block go to the tier that took its first
  piece, until commit. What a tier evicts is demoted into the next one. A layer-by-layer dump
  (``reserve_blocks`` / ``write_planes``, vLLM's) reserves its blocks in the head once and writes
  each layer through the head's block API; only what the head refuses goes piece by piece.
- load: each block is read from the fastest tier holding it. A block found below the head is read
  once, promoted into the head (subject to the head's admission) and copied into the caller's
  tensors, on a worker thread, so load() stays asynchronous.
"""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Optional

import torch

from ucm.tiers.base import (IO_ERROR, NOT_FOUND, REFUSED, BlockId, BlockWrite, Store, Task, Tier, as_bytes,
                            check_pieces, log, pieces_of_blocks, to_keys)
from ucm.tiers.copy import CopyEngine
from ucm.tiers.hit_gate import SlowHitGate


@dataclass
class _ChainWrite(BlockWrite):
    """A chain's layer-by-layer dump: the blocks the head reserved (its own ``BlockWrite``) and the
    rest (refused by the head, or being written below already), dumped piece by piece."""

    head_write: Optional[BlockWrite] = None
    rest_ids: list = field(default_factory=list)
    rest_rows: list = field(default_factory=list)


class TierChain(Store):
    def __init__(self, tiers: list[Tier], slow_hits: Optional[SlowHitGate] = None):
        if not tiers:
            raise ValueError("a chain needs at least one tier")
        sizes = {t.block_size for t in tiers}
        if len(sizes) != 1:
            raise ValueError(f"all tiers of a chain must use one kv_block_size, got {sorted(sizes)}")
        self.tiers = tiers
        self.block_size = tiers[0].block_size
        self.timeout_s = max(t.timeout_s for t in tiers)
        for upper, lower in zip(tiers, tiers[1:]):
            upper.demote_to = lower
        self._promoter = CopyEngine("chain-promote")
        # parallel reads of lower tiers, one a core (8 threads on 2 cores: 1.5 x slower than 2, CPU)
        self._readers = ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1)),
                                           thread_name_prefix="ucm-chain-read")
        self._writing: dict[bytes, Tier] = {}  # dumped, uncommitted block -> the tier holding its pieces
        self._lock = threading.Lock()
        self.counters = dict(promoted=0, lower_hits=0)
        # hits held only by the disk tier load only while reading beats recomputing (hit_gate.py)
        self.slow_hits = slow_hits or SlowHitGate("always")
        self._slow = next((i for i, t in enumerate(tiers) if t.name == "disk"), len(tiers))

    @property
    def head(self) -> Tier:
        return self.tiers[0]

    def tier(self, name: str) -> Tier:
        return next(t for t in self.tiers if t.name == name)

    def lookup(self, block_ids: Sequence[BlockId], record: bool = True) -> list[bool]:
        """Held by any tier; a block held only from the disk tier down counts while ``slow_hits``
        allows (asked once a lookup, at its first such block)."""
        keys = to_keys(block_ids)
        if record:
            for t in self.tiers:
                t.begin_lookup()
        held = [t.has if record else t.holds for t in self.tiers]
        fast, slow = held[:self._slow], held[self._slow:]
        out, slow_ok = [], None
        for k in keys:
            if any(h(k) for h in fast):
                out.append(True)
            elif any(h(k) for h in slow):
                if slow_ok is None:
                    slow_ok = self.slow_hits.allow(count=record)
                out.append(slow_ok)
            else:
                out.append(False)
        return out

    def dump(self, block_ids, offset, src_tensor) -> Task:
        keys = check_pieces(block_ids, offset, src_tensor, self.block_size, "src_tensor")
        task = Task("dump")
        with self._lock:
            routed = [self._writing.get(k, self.head) for k in keys]
        # committed below the head already: skipped, as a tier skips its own (ids are content hashes)
        below = {k for k, t in zip(keys, routed) if t is self.head and any(t2.holds(k) for t2 in self.tiers[1:])}
        routed = [None if k in below else t for k, t in zip(keys, routed)]
        for level, tier in enumerate(self.tiers):
            idx = [i for i, t in enumerate(routed) if t is tier]
            if not idx:
                continue
            child = tier.dump([keys[i] for i in idx], [offset[i] for i in idx], [src_tensor[i] for i in idx])
            refused = {k for k, c in child.failed.items() if c == REFUSED}  # decided synchronously
            lower = self.tiers[level + 1] if level + 1 < len(self.tiers) else None
            with self._lock:
                for i in idx:
                    if keys[i] in refused and lower is not None:
                        routed[i] = lower
                    else:
                        self._writing.setdefault(keys[i], tier)
            moved = refused if lower is not None else set()
            task.add(child)
            task.on_done(lambda c=child, m=moved: [task.fail(k, v) for k, v in c.failed.items() if k not in m])
        return task

    def reserve_blocks(self, block_ids, rows) -> BlockWrite:
        """The head reserves the blocks new to the chain once (one plan; each layer then moves with
        a few copies). The generic way, each layer a piece-by-piece ``dump``, cost the model's thread
        ~2 ms a block with a disk tier on the CPU (full compute was 2-3 x slower with a disk tier on an H200, 2026-11-28)."""
        keys, rows = to_keys(block_ids), list(rows)
        if len(rows) != len(keys):
            raise ValueError(f"block_ids and rows must have the same length, got {len(keys)} and {len(rows)}")
        with self._lock:
            routed = [self._writing.get(k, self.head) for k in keys]
        head_idx, rest_idx = [], []
        for i, (key, tier) in enumerate(zip(keys, routed)):
            if tier is not self.head:
                rest_idx.append(i)  # being written below already: its pieces follow it there
            elif not any(t.holds(key) for t in self.tiers[1:]):  # committed below: skipped, as in dump
                head_idx.append(i)
        task = Task("dump")
        hw = self.head.reserve_blocks([keys[i] for i in head_idx], [rows[i] for i in head_idx])
        refused = {k for k, c in hw.task.failed.items() if c == REFUSED} if len(self.tiers) > 1 else set()
        with self._lock:
            for i in head_idx:
                if keys[i] not in refused:
                    self._writing.setdefault(keys[i], self.head)
        task.add(hw.task)
        task.on_done(lambda: [task.fail(k, c) for k, c in hw.task.failed.items() if k not in refused])
        rest_idx += [i for i in head_idx if keys[i] in refused]  # a dump routes them below
        return _ChainWrite(self, keys, rows, task, head_write=hw, rest_ids=[keys[i] for i in rest_idx],
                           rest_rows=[rows[i] for i in rest_idx])

    def write_planes(self, bw: BlockWrite, planes, offset: int = 0) -> None:
        if not isinstance(bw, _ChainWrite) or bw.store is not self:
            raise ValueError("write_planes needs a BlockWrite from this chain's reserve_blocks")
        self.head.write_planes(bw.head_write, planes, offset)
        if bw.rest_ids:
            bw.task.add_task(self.dump_blocks(bw.rest_ids, planes, bw.rest_rows, offset))

    def load_blocks(self, block_ids, planes, rows, offset: int = 0) -> Task:
        """Blocks in the head load plane by plane (layer-wise waits); the rest come up from below."""
        keys = to_keys(block_ids)
        in_head = [i for i, k in enumerate(keys) if self.head.holds(k)]
        if len(in_head) == len(keys):
            return self.head.load_blocks(block_ids, planes, rows, offset)
        task = Task("load")
        task.planes = [[] for _ in planes]
        if in_head:
            head = self.head.load_blocks([keys[i] for i in in_head], planes, [rows[i] for i in in_head], offset)
            task.add_task(head)
            for j, parts in enumerate(head.planes):
                task.planes[j].extend(parts)
        held = set(in_head)
        rest = [i for i in range(len(keys)) if i not in held]
        lower = self._promoter.run(self._load_lower_blocks, task, [keys[i] for i in rest], planes,
                                   [rows[i] for i in rest], offset,
                                   on_error=lambda exc: [task.fail(keys[i], IO_ERROR) for i in rest])
        task.add(lower)
        for parts in task.planes:
            parts.append(lower)
        return task

    def _read_any(self, key: bytes):
        """(tier, bytes) from the fastest tier holding ``key`` now, or (None, None)."""
        return next(((t, d) for t in self.tiers if (d := t.read_block(key)) is not None), (None, None))

    def _promote(self, key: bytes):
        """Bring ``key`` into the head: True if the head holds it afterwards (read from below straight
        into a head slot where both tiers can, else through a copy), else (tier, bytes) read from
        wherever it is now (to be copied to the caller directly), or (None, None) if none has it.
        Runs on the reader threads."""
        if self.head.holds(key):
            return True
        fill = getattr(self.head, "fill_block", None)
        for tier in self.tiers[1:]:
            read_into = getattr(tier, "read_into", None)
            if fill is not None and read_into is not None and tier.holds(key) and \
                    fill(key, lambda views, r=read_into: r(key, views)):
                self._count(promoted=1, lower_hits=1)
                return True
        tier, data = self._read_any(key)
        if data is None or tier is self.head:
            return (tier, data) if data is None else True
        promoted = self.head.write_block(key, data)
        self._count(promoted=int(promoted), lower_hits=1)
        return True if promoted else (tier, data)

    def _count(self, **deltas) -> None:
        with self._lock:  # several reader threads
            for k, v in deltas.items():
                self.counters[k] += v

    def _load_lower_blocks(self, task: Task, keys: list[bytes], planes, rows, offset: int) -> None:
        """Blocks below the head: promoted into the head in parallel (file reads and checksums
        release the GIL; a disk block is read straight into its head slot), then copied from there
        in one batched load; a block the head would not take (admission, or evicted again by a
        later promotion) is copied from its bytes."""
        unique = list(dict.fromkeys(keys))
        # how fast the disk delivers, for the hit gate (only one that decides by it)
        fast = self.tiers[:self._slow] if self.slow_hits.mode == "auto" else None
        slow = sum(1 for k in unique if not any(t.holds(k) for t in fast)) if fast else 0
        t0 = time.perf_counter()
        got = dict(zip(unique, self._readers.map(self._promote, unique)))
        if slow:
            self.slow_hits.note_read(slow * self.block_size, time.perf_counter() - t0)
        up, direct = [], []
        for key, row in zip(keys, rows):
            r = got[key]
            if r is True:
                up.append((key, row))
            elif r[1] is None:
                task.fail(key, NOT_FOUND)
            else:
                direct.append((key, row, r[1]))
        if up:
            sub = self.head.load_blocks([k for k, _ in up], planes, [r for _, r in up], offset)
            if not sub.wait(self.timeout_s):
                for key, _ in up:
                    task.fail(key, IO_ERROR)
            for key, row in up:
                if key in sub.failed:  # evicted again between its promotion and this load
                    tier, data = self._read_any(key)
                    if data is None:
                        task.fail(key, NOT_FOUND)
                    else:
                        direct.append((key, row, data))
        for key, row, data in direct:
            try:
                _, offs, dsts = pieces_of_blocks([key], planes, [row], offset)
                for off, dst in zip(offs, dsts):
                    dst = as_bytes(dst)
                    dst.copy_(data[off:off + dst.numel()])
            except Exception as exc:
                log.error("ucm: copy of block %s failed: %s", key[:16].hex(), exc)
                task.fail(key, IO_ERROR)

    def open_blocks(self, block_ids, rows):
        """Read layer by layer from the head when it holds every block (pinned hits); else the
        default (each layer a whole ``load_blocks``). ``read_planes`` goes to ``br.store``."""
        if all(self.head.holds(k) for k in to_keys(block_ids)):
            return self.head.open_blocks(block_ids, rows)
        return super().open_blocks(block_ids, rows)

    def pin(self, block_ids, owner: str) -> list[bool]:
        """Pins in the head only: blocks below it load through a promotion, which can fail."""
        return self.head.pin(block_ids, owner)

    def unpin(self, owner: str) -> None:
        self.head.unpin(owner)

    def commit(self, block_ids, is_success: bool = True) -> None:
        keys = to_keys(block_ids)
        with self._lock:
            by_tier = {}
            for k in keys:
                by_tier.setdefault(self._writing.pop(k, self.head), []).append(k)
        for tier, ks in by_tier.items():
            tier.commit(ks, is_success)

    def load(self, block_ids: Sequence[BlockId], offset: Sequence[int], dst_tensor: Sequence[torch.Tensor]) -> Task:
        keys = check_pieces(block_ids, offset, dst_tensor, self.block_size, "dst_tensor")
        head_idx, lower = [], {}
        for i, key in enumerate(keys):
            if key in lower:
                lower[key][1].append(i)
            elif self.head.holds(key):
                head_idx.append(i)
            else:
                src = next((t for t in self.tiers[1:] if t.holds(key)), None)
                lower[key] = (src, [i])
        task = Task("load")
        if head_idx:
            task.add_task(self.head.load([keys[i] for i in head_idx], [offset[i] for i in head_idx],
                                         [dst_tensor[i] for i in head_idx]))
        if lower:
            task.add(self._promoter.run(self._load_lower, task, lower, offset, dst_tensor,
                                        on_error=lambda exc: [task.fail(k, IO_ERROR) for k in lower]))
        return task

    def _load_lower(self, task: Task, lower: dict, offset, dst_tensor) -> None:
        for key, (_, idx) in lower.items():
            # read from whichever tier holds it now: promotions of earlier keys may have pushed it down
            tier, data = next(((t, d) for t in self.tiers if (d := t.read_block(key)) is not None), (None, None))
            if data is None:
                task.fail(key, NOT_FOUND)
                continue
            promoted = tier is not self.head and self.head.write_block(key, data)  # subject to admission
            self._count(lower_hits=int(tier is not self.head), promoted=int(promoted))
            try:
                for i in idx:
                    dst = as_bytes(dst_tensor[i])
                    dst.copy_(data[offset[i]:offset[i] + dst.numel()])
            except Exception as exc:
                log.error("ucm: copy of block %s from %s failed: %s", key[:16].hex(), tier.name, exc)
                task.fail(key, IO_ERROR)

    def flush(self) -> None:
        """Wait for background writes of every tier (demotions to disk)."""
        for t in self.tiers:
            getattr(t, "flush", lambda: None)()

    def note_compute(self, nbytes: int, seconds: float) -> None:
        self.slow_hits.note_compute(nbytes, seconds)

    def stats(self) -> dict:
        return dict(self.counters, tiers=[t.stats() for t in self.tiers], slow_hits=self.slow_hits.stats())

    def close(self) -> None:
        self._promoter.close()
        self._readers.shutdown(wait=True)
        for t in self.tiers:
            t.close()
