"""A tier of fixed-size slots in one preallocated tensor: the shared core of DRAM and HBM tiers.

One allocation at start (``num_slots = capacity // block_size``), a free list of slot numbers,
and a map from block key to slot. Memory in use never exceeds ``capacity``. A block is first
*written* (dumped, invisible), then *committed* (hittable, known to the eviction policy). Blocks
being written or read by a copy in flight are never evicted; when nothing else is left, a dump
is refused (reported in its task, not raised).

Chain order: callers list a request's blocks first to last, and a block is useful only with every
block before it (a prefix lookup stops at its first miss). So a commit inserts its blocks into the
eviction policy last-first, and a read touches them last-first: a recency policy then evicts a
request's tail before its head, and a partial eviction shortens a cached prefix instead of
breaking it at block 0 (seen at TP = 2, 2026-11-28: four head blocks evicted lost a whole 800-block
hit). A call's new blocks take their slots in the ascending order of the caller's rows, so slots and
rows go up together even after such an eviction (the GPU moves a run of them as one DMA).

Layout: the pool is ``(planes, num_slots, block_size // planes)``. With ``planes=1`` a block is
one contiguous row; with one plane per layer's K or V, the same layer of many blocks is
contiguous, so a layer of a whole request moves in a few large DMAs.

Demotion (a tier below, ``demote_to``): a victim's bytes go down to the next tier. Evicted while a
dump plans its slots, a victim is first copied out of its slot (the new block needs the slot at
once), on the caller's thread, which inside vLLM is the model's. So after each dump the tier evicts
ahead (``demote_ahead``): it keeps about as many slots free as that dump took, handing each victim's
slot itself to the tier below, which writes it out in the background and gives the slot back
(``_drained``); the next dump finds free slots and copies nothing. The tier below bounds its queue
(``demotion_room``, the disk's ``max_write_backlog``): past it a victim is dropped, neither copied
nor waited for, since misses arriving faster than the disk writes would otherwise stall the model
(2026-11-29, H200: full compute with a disk tier 1.05-2.9 x slower than without). A write call that
must evict more victims than that room drops its *first* victims and demotes its last ones: with
chain order a request's tail is evicted before its head, so keeping the first victims kept tails whose
heads were then dropped (useless on disk: a lookup stops at the first miss; H200, 2026-11-29: a 16k
prompt's dump pushing an 8k prompt out left none of its prefix on disk). Across calls the queue is first
come, first served: a call arriving while the disk still writes an earlier call's victims drops all of its
own, however recent (H200, 2026-11-29: a push right after a store pass left the stored prompt nothing, the
prompt before it its head). Taking a queued write back for a newer victim would mean a copy per victim on
the caller's thread again.
"""
from __future__ import annotations

import contextlib
import operator
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import torch

from ucm.policies import AdmissionPolicy, EvictionPolicy
from ucm.policies.always import AlwaysAdmit
from ucm.tiers.base import (IO_ERROR, NOT_FOUND, REFUSED, BlockId, BlockRead, BlockWrite, SpareBuffers, Task, Tier, as_bytes, check_pieces,
                            log, stages, to_keys)
from ucm.tiers.copy import CopyEngine
from ucm.tiers.planes import CudaPlaneCopier, PlaneCopy, RowPlan, copy_planes_cpu, cuda_view, rows_view

#: a group of at least this many same-shaped pieces is copied as one plane copy, not piece by piece
MIN_GROUP = 8
#: the piece API plans and launches a call in chunks of about this many bytes, so the first copies
#: run while Python plans the rest (smaller chunks would spend more on launches than they overlap);
#: every plan holds the lock for at most this many bytes of blocks at a time. (The block API
#: launches in ``base.stages`` instead: small first, then growing.)
CHUNK_BYTES = 256 << 20
_SLOT = operator.attrgetter("slot")


class _Flag:
    """A completion set by hand (a fill in progress)."""

    def __init__(self):
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    def done(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float) -> bool:
        return self._event.wait(timeout)


@dataclass(slots=True)
class _Block:
    # one per stored block, so one object a block for Python's collector: slots, and the writers a tuple,
    # the shared empty one once committed (with a list each, a 1,000-block dump alone filled the young
    # generation ~3 times; a young collection at 16k took 3-7.6 ms on the H200 hosts, 2026-11-29)
    slot: int
    committed: bool = False
    writers: tuple = ()  # dump tasks copying into it


class SlotPoolTier(Tier):
    """Fixed slots in one tensor on ``device`` (pinned host memory when ``pin``)."""

    def __init__(self, *, name: str, capacity: int, block_size: int, eviction: EvictionPolicy,
                 admission: AdmissionPolicy, device: torch.device, pin: bool, timeout_s: float = 60.0,
                 planes: int = 1, demote_ahead: float = 0.0):
        if block_size < 1:
            raise ValueError(f"kv_block_size must be a positive number of bytes, got {block_size}")
        if planes < 1 or block_size % planes:
            raise ValueError(f"planes = {planes} must divide kv_block_size = {block_size}")
        self.num_slots = capacity // block_size
        if self.num_slots < 1:
            raise ValueError(f"{name} capacity {capacity} bytes is below one block (kv_block_size "
                             f"{block_size}): raise the capacity or lower kv_block_size")
        self.name = name
        self.block_size = block_size
        self.planes = planes
        self.plane_bytes = block_size // planes
        self.timeout_s = timeout_s
        self.device = device
        self.pool = torch.empty((planes, self.num_slots, self.plane_bytes), dtype=torch.uint8, device=device,
                                pin_memory=pin)
        self.pool_uva = cuda_view(self.pool) if pin else None
        self.eviction = eviction
        self.admission = admission
        self._free = deque(range(self.num_slots))  # in order, so fresh slots are contiguous
        self._blocks: dict[bytes, _Block] = {}
        self._reading: dict[bytes, int] = {}  # key -> loads in flight + pins (protected from eviction)
        self._pins: dict[str, list[bytes]] = {}  # owner -> keys it pinned (each counted in _reading)
        self._inflight: list[Task] = []
        self._views: dict[tuple, list[PlaneCopy]] = {}  # see _plane_views
        # demoted blocks' copies, given back by the tier below once written (at most ~256 MiB kept)
        self._spares = SpareBuffers(block_size, keep=max(4, min(256, (256 << 20) // block_size)))
        self._lock = threading.RLock()
        self._dumps = CopyEngine(f"{name}-dump", device)
        self._loads = CopyEngine(f"{name}-load", device)
        # dumps and loads on streams of their own: a load on a request's critical path never
        # queues behind an earlier step's dump (H2D and D2H use separate copy engines)
        cuda = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else None
        self._cuda_dump = CudaPlaneCopier(cuda) if cuda is not None else None
        self._cuda_load = CudaPlaneCopier(cuda, priority=-1) if cuda is not None else None
        self.counters = dict(dumped_blocks=0, loaded_blocks=0, evictions=0, refused=0, demoted=0, skipped=0,
                             demoted_ahead=0, filled=0, dropped=0)
        self._ahead_max = int(self.num_slots * demote_ahead)  # slots kept free at most (module docstring)
        self._ahead = 0  # slots to keep free now: what the last dump took, capped
        self._draining = 0  # victims' slots the tier below still writes out
        self._drop_first: dict[Task, int] = {}  # write call -> victims it drops before demoting (module docstring)

    # ---- contract -------------------------------------------------------------------------
    def has(self, key: bytes) -> bool:
        with self._lock:
            return super().has(key)

    def lookup(self, block_ids: Sequence[BlockId], record: bool = True) -> list[bool]:
        """``has`` (``holds`` without ``record``) for every id under one lock (a 16k-token prompt asks for
        1,000 blocks)."""
        keys = to_keys(block_ids)
        with self._lock:
            if record:
                self.begin_lookup()
                sighted = self.admission.record
                for key in keys:
                    sighted(key)
            blocks = self._blocks
            return [blk is not None and blk.committed for blk in map(blocks.get, keys)]

    def holds(self, key: bytes) -> bool:
        blk = self._blocks.get(key)
        return blk is not None and blk.committed

    def dump(self, block_ids: Sequence[BlockId], offset: Sequence[int], src_tensor: Sequence[torch.Tensor]) -> Task:
        keys = check_pieces(block_ids, offset, src_tensor, self.block_size, "src_tensor")
        task = Task("dump")
        with self._victims_kept_last(keys, task):
            for idx, demoted in self._chunks(len(keys), self._chunk(src_tensor)):
                pieces = [(blk.slot, offset[i], src_tensor[i]) for i in idx
                          if (blk := self._writable(keys[i], task, demoted)) is not None]
                self._submit_pieces(task, pieces, to_pool=True, keys=keys)
        return task

    def load(self, block_ids: Sequence[BlockId], offset: Sequence[int], dst_tensor: Sequence[torch.Tensor]) -> Task:
        keys = check_pieces(block_ids, offset, dst_tensor, self.block_size, "dst_tensor")
        task, pinned, last = Task("load"), {}, len(keys) - 1
        for idx, _ in self._chunks(len(keys), self._chunk(dst_tensor)):
            # last-first (chain order, module docstring)
            pieces = [(blk.slot, offset[i], dst_tensor[i])
                      for i, blk in zip(*self._readable(keys, [last - j for j in idx], task, pinned))]
            self._submit_pieces(task, pieces, to_pool=False, keys=keys)
        self._track_read(task, pinned)
        return task

    def commit(self, block_ids: Sequence[BlockId], is_success: bool = True) -> None:
        keys = to_keys(block_ids)
        with self._lock:
            writers = {id(t): t for k in keys if (b := self._blocks.get(k)) and not b.committed for t in b.writers}
        for t in writers.values():  # commit means "these bytes are final": let their copies finish
            if not t.wait(self.timeout_s):
                log.warning("ucm: %s: dump still running at commit; dropping its blocks", self.name)
        with self._lock:
            for key in reversed(keys):  # last-first: see the module docstring (chain order)
                blk = self._blocks.get(key)
                if blk is None or blk.committed:
                    continue
                bad = any(key in t.failed or not t.done() for t in blk.writers)
                if is_success and not bad:
                    blk.committed, blk.writers = True, ()
                    self.eviction.insert(key)
                else:
                    self._drop(key)

    def pin(self, block_ids: Sequence[BlockId], owner: str) -> list[bool]:
        keys = to_keys(block_ids)
        with self._lock:
            blocks, reading, held = self._blocks, self._reading, []
            mine = self._pins.setdefault(owner, [])
            for key in keys:  # ``holds`` inlined: 1,000 keys a 16k-token hit, on the scheduler's thread
                blk = blocks.get(key)
                ok = blk is not None and blk.committed
                held.append(ok)
                if ok:
                    mine.append(key)
                    reading[key] = reading.get(key, 0) + 1
            if not mine:
                del self._pins[owner]
        return held

    def unpin(self, owner: str) -> None:
        with self._lock:
            keys = self._pins.pop(owner, None)
        if keys:
            self._release(keys)

    # ---- whole rows of many blocks at once ---------------------------------------------------
    def dump_blocks(self, block_ids: Sequence[BlockId], planes: Sequence[torch.Tensor], rows: Sequence,
                    offset: int = 0) -> Task:
        """Bytes ``offset…`` of block ``block_ids[i]`` = ``planes[0][rows[i]]`` + ``planes[1][rows[i]]`` + ….

        ``planes`` are contiguous tensors whose first dimension indexes rows (e.g. one layer's K cache
        with one row per vLLM block); ``offset`` + their row sizes fit in ``kv_block_size`` (a caller
        may write one layer's planes at a time). Asynchronous.
        """
        keys, views, k = self._check_blocks(block_ids, planes, rows, offset)
        task = Task("dump")
        with self._victims_kept_last(keys, task):
            self._submit_staged(keys, list(rows), k, views, task, to_pool=True)
        return task

    def load_blocks(self, block_ids: Sequence[BlockId], planes: Sequence[torch.Tensor], rows: Sequence,
                    offset: int = 0) -> Task:
        """The reverse of ``dump_blocks``. ``task.planes[j]`` lists the completions of plane ``j``,
        so a caller can start on one layer while the next still copies."""
        keys, views, k = self._check_blocks(block_ids, planes, rows, offset)
        task, pinned = Task("load"), {}
        task.planes = self._submit_staged(keys, list(rows), k, views, task, to_pool=False, pinned=pinned,
                                          whole=True)
        self._track_read(task, pinned)
        return task

    def open_blocks(self, block_ids: Sequence[BlockId], rows: Sequence) -> BlockRead:
        """Find the blocks once (kept from eviction until the read ends) and prepare the row plan;
        ``read_planes`` then only launches each layer's copies, so a caller can start on layer 0
        before it has paid for launching every layer."""
        keys, k, max_row = self._check_rows(block_ids, rows)
        br = BlockRead(self, keys, list(rows), Task("load"), k=k, max_row=max_row)
        br.plan = self._plan(keys, rows, k, br.task, pinned=br.pinned)
        return br

    def read_planes(self, br: BlockRead, planes: Sequence[torch.Tensor], offset: int = 0,
                    last: bool = False) -> list:
        if br.store is not self:
            raise ValueError("read_planes needs a BlockRead from this store's open_blocks")
        parts = self._submit_planes(self._plane_views(planes, offset, br.k, br.max_row), br.plan, False,
                                    br.task, br.block_ids)
        for part in parts:
            br.task.add(part)
        if last:
            self._track_read(br.task, br.pinned)
        return parts

    def reserve_blocks(self, block_ids: Sequence[BlockId], rows: Sequence) -> BlockWrite:
        """Decide once which blocks a layer-by-layer dump writes (skipped, refused, given a slot)
        and prepare the row plan; ``write_planes`` then only launches each layer's copies."""
        keys, k, max_row = self._check_rows(block_ids, rows)
        bw = BlockWrite(self, keys, list(rows), Task("dump"), k=k, max_row=max_row)
        with self._victims_kept_last(keys, bw.task):
            bw.plans.append(self._plan(keys, rows, k, bw.task, write=True))
        return bw

    def write_planes(self, bw: BlockWrite, planes: Sequence[torch.Tensor], offset: int = 0) -> None:
        if bw.store is not self:
            raise ValueError("write_planes needs a BlockWrite from this store's reserve_blocks")
        views = self._plane_views(planes, offset, bw.k, bw.max_row)
        for plan in bw.plans:
            for part in self._submit_planes(views, plan, True, bw.task, bw.block_ids):
                bw.task.add(part)

    # ---- whole blocks (chain) ---------------------------------------------------------------
    def read_block(self, key: bytes) -> Optional[torch.Tensor]:
        with self._lock:
            blk = self._blocks.get(key)
            if blk is None or not blk.committed:
                return None
            self.eviction.touch(key)
            return self.pool[:, blk.slot].to("cpu", copy=True).reshape(-1)

    def _held(self, key: bytes) -> Optional[bool]:
        """Lock held: None if ``key`` has no slot here, else whether it is committed (then touched)."""
        blk = self._blocks.get(key)
        if blk is None:
            return None
        if blk.committed:
            self.eviction.touch(key)
        return blk.committed

    def fill_block(self, key: bytes, fill) -> bool:
        """Take in a committed block from elsewhere (a promotion from the tier below) by letting
        ``fill(views)`` write its bytes straight into a fresh slot (``views``: the slot's planes, CPU
        byte tensors in order); ``fill`` returns whether the bytes are good. True once the block is
        held and committed here; False if it is refused (admission, nothing evictable), being
        written by someone else, or ``fill`` failed. While filled, the block is a write in flight
        (invisible, never evicted; a dump of the same id waits for it at commit)."""
        if self.device.type != "cpu":
            return False  # a device pool: the caller copies (write_block)
        demoted = []
        with self._lock:
            held = self._held(key)
            if held is not None:
                return held
            blk = self._new_block(key, demoted)
            if blk is not None:
                flag = _Flag()
                task = Task("fill")
                task.add(flag)
                blk.writers = (task,)
        self._demote(demoted)
        if blk is None:
            return False
        ok = False
        try:
            ok = bool(fill([self.pool[p, blk.slot] for p in range(self.planes)]))
        except Exception as exc:  # e.g. an I/O error of the tier below: a miss, never wrong bytes
            log.error("ucm: %s: filling block %s failed: %s", self.name, key[:16].hex(), exc)
        with self._lock:
            if not ok:
                task.fail(key, IO_ERROR)
            flag.set()
            if self._blocks.get(key) is not blk or blk.committed or blk.writers != (task,):
                return False  # a dump writes it too: its commit settles the block
            if not ok:
                self._drop(key)
                return False
            blk.committed, blk.writers = True, ()
            self.eviction.insert(key)
            self.counters["filled"] += 1
        return True

    def write_block(self, key: bytes, data: torch.Tensor, release=None) -> bool:
        demoted = []
        try:
            with self._lock:
                held = self._held(key)
                if held is not None:
                    return held
                blk = self._new_block(key, demoted)
                if blk is None:
                    return False
                self.pool[:, blk.slot].copy_(as_bytes(data).view(self.planes, self.plane_bytes))
                blk.committed = True
                self.eviction.insert(key)
        finally:
            if release is not None:
                release(data)  # copied (or not taken): the caller may reuse it
        self._demote(demoted)
        return True

    def stats(self) -> dict:
        with self._lock:
            return dict(self.counters, tier=self.name, slots=self.num_slots, used_slots=len(self._blocks),
                        draining_slots=self._draining, committed=len(self.eviction), pool_bytes=self.pool.numel())

    def close(self) -> None:
        for copier in (self._cuda_dump, self._cuda_load):
            if copier is not None:
                copier.close()
        self._dumps.close()
        self._loads.close()

    # ---- internals --------------------------------------------------------------------------
    def _plan(self, keys: list[bytes], rows: Sequence, k: int, task: Task, write: bool = False,
              pinned: Optional[dict] = None) -> RowPlan:
        """One row plan for a whole block-API call: the slots written (given out under the lock,
        evicting as needed) or read (pinned against eviction until the task is done)."""
        if not write:
            return self._read_plan(keys, rows, k, task, pinned)
        picked, taken = [], 0
        for idx, demoted in self._chunks(len(keys), max(16, CHUNK_BYTES // self.block_size)):
            chunk, fresh = [], []
            for i in idx:
                new = keys[i] not in self._blocks
                blk = self._writable(keys[i], task, demoted)
                if new and blk is not None:
                    fresh.append((rows[i] if k == 1 else rows[i][0], blk))
                if blk is not None:
                    chunk.append((blk, rows[i]))
            # new blocks take their slots in ascending order of their caller rows (nothing was
            # copied into them yet): slots and rows then go up together, so a run of them moves
            # as one DMA, whichever way the caller's rows run (vLLM hands a prompt descending rows
            # once its never-used blocks are gone) and in whatever order eviction freed the slots
            fresh.sort(key=lambda rb: rb[0])
            for (_, blk), slot in zip(fresh, sorted(b.slot for _, b in fresh)):
                blk.slot = slot
            picked += [(blk.slot, row) for blk, row in chunk]
            taken += len(fresh)
        if self.demote_to is not None and self._ahead_max:
            self._ahead = min(self._ahead_max, taken)
            self._demote_ahead()
        return RowPlan([s for s, _ in picked], [r for _, r in picked], k)

    def _read_plan(self, keys: list[bytes], rows: Sequence, k: int, task: Task, pinned: dict) -> RowPlan:
        """``_plan`` of a read; blocks are touched last-first (chain order, module docstring)."""
        slots, picked, last = [], [], len(keys) - 1
        for idx, _ in self._chunks(len(keys), max(16, CHUNK_BYTES // self.block_size)):
            found, blks = self._readable(keys, [last - j for j in idx], task, pinned)
            slots.extend(map(_SLOT, blks))  # C-level loops: ~1,000 blocks a 16k-token hit
            picked.extend(map(rows.__getitem__, found))
        return RowPlan(slots, picked, k)

    def _submit_staged(self, keys: list[bytes], rows: list, k: int, views: list[PlaneCopy], task: Task,
                       to_pool: bool, pinned: Optional[dict] = None, whole: bool = False) -> list[list]:
        """A whole block-API call, planned and launched in ``stages``: the link starts after a few
        blocks are planned, and each stage copies while the next is planned. A read's stages go
        last blocks first (reads touch a chain tail-first); within a stage plane 0 (a caller's
        first layer) is issued first, then plane 1, ... Returns each plane's completions (``whole``: a
        load whose reader needs every plane, ``planes.WHOLE_LOAD_PLANES_PER_EVENT``)."""
        parts: list[list] = [[] for _ in views]
        for lo, hi in stages(len(keys), self.block_size, from_end=not to_pool):
            plan = self._plan(keys[lo:hi], rows[lo:hi], k, task, write=to_pool, pinned=pinned)
            for j, part in enumerate(self._submit_planes(views, plan, to_pool, task, keys[lo:hi], whole)):
                parts[j].append(part)
                task.add(part)
        return parts

    def _demote_ahead(self) -> None:
        """Evict until ``_ahead`` slots are free or draining; each victim's slot goes to the tier
        below as it is (no copy) and comes back free once written (``_drained``)."""
        out, room = [], self.demote_to.demotion_room()
        with self._lock:
            while len(self._free) + self._draining < self._ahead and len(out) < room:
                victim = self.eviction.evict(self._reading)
                if victim is None:
                    break
                out.append((victim, self._blocks.pop(victim).slot))
                self.counters["evictions"] += 1
                self._draining += 1
        n = sum(bool(self.demote_to.write_block(key, self.pool[:, slot], release=lambda _, s=slot: self._drained(s)))
                for key, slot in out)
        self._count(demoted=n, demoted_ahead=n)

    def _drained(self, slot: int) -> None:
        with self._lock:
            self._draining -= 1
            self._free.append(slot)

    def _writable(self, key: bytes, task: Task, demoted: list) -> Optional[_Block]:
        """The block a dump writes ``key`` into, or None (skipped or refused). Caller holds the lock."""
        if key in task.failed:
            return None  # refused earlier in this call
        blk = self._blocks.get(key)
        if blk is not None and blk.committed:
            self.counters["skipped"] += 1
            return None  # already stored: ids are content hashes
        if blk is None:
            blk = self._new_block(key, demoted, task)
            if blk is None:
                task.fail(key, REFUSED)
                self.counters["refused"] += 1
                return None
            self.counters["dumped_blocks"] += 1
        if not blk.writers or blk.writers[-1] is not task:
            blk.writers += (task,)
        return blk

    def _readable(self, keys: list[bytes], order: list[int], task: Task,
                  pinned: dict) -> tuple[list[int], list[_Block]]:
        """(indices i, their blocks) for the ``keys[i]``, i in ``order``, that a load can read:
        committed, then pinned against eviction (once per load); the others fail the task. Lock held.
        One loop for many keys: a 16k-token hit finds ~1,000 blocks on the model's thread before its
        first copy, and a call per key cost half of that (CPU)."""
        idxs, blks, found = [], [], 0
        blocks, reading, touch = self._blocks, self._reading, self.eviction.touch
        for i in order:
            key = keys[i]
            blk = blocks.get(key)
            if blk is None or not blk.committed:
                task.fail(key, NOT_FOUND)
                continue
            if key not in pinned:
                pinned[key] = None
                reading[key] = reading.get(key, 0) + 1
                touch(key)
                found += 1
            idxs.append(i)
            blks.append(blk)
        self.counters["loaded_blocks"] += found
        return idxs, blks

    def _chunks(self, n: int, size: int):
        """Ranges of at most ``size`` entries, each planned under the lock; what a chunk evicts is
        demoted after the lock is released. Copies of a chunk start while the next one is planned."""
        for lo in range(0, n, size):
            demoted = []
            with self._lock:
                self._reap()
                yield range(lo, min(lo + size, n)), demoted
            self._demote(demoted)

    @staticmethod
    def _chunk(tensors: Sequence[torch.Tensor]) -> int:
        """Pieces per chunk: about CHUNK_BYTES, judged by the first piece."""
        first = tensors[0].numel() * tensors[0].element_size() if tensors else 1
        return max(256, CHUNK_BYTES // max(1, first))

    def _track_read(self, task: Task, pinned: dict) -> None:
        task.on_done(lambda: self._release(list(pinned)))
        with self._lock:
            self._inflight.append(task)

    @contextlib.contextmanager
    def _victims_kept_last(self, keys: list[bytes], task: Task):
        """Within the block: when the write ``task`` of ``keys`` must evict more victims than the tier
        below takes now, its first victims (a request's tail, chain order) are dropped and its last
        ones demoted (module docstring). Counted once at the start; admission other than ``always``
        may take fewer blocks, so there the victims keep their order."""
        with self._lock:
            if self.demote_to is not None and isinstance(self.admission, AlwaysAdmit):
                room = len(self._free) + self.demote_to.demotion_room()
                if len(keys) > room:  # else no victim can be dropped: skip counting the new keys
                    blocks = self._blocks
                    over = len({k for k in keys if k not in blocks}) - room
                    if over > 0:
                        self._drop_first[task] = over
        try:
            yield
        finally:
            with self._lock:
                self._drop_first.pop(task, None)

    def _new_block(self, key: bytes, demoted: list, task: Optional[Task] = None) -> Optional[_Block]:
        """Admit ``key`` and give it a slot, evicting if full (for the write ``task``). Caller holds the lock."""
        peek = getattr(self.eviction, "peek_victim", None) if not self._free else None
        victim = peek(self._reading) if peek is not None else None  # TinyLFU weighs the key against it
        if not self.admission.admit(key, victim):
            return None
        if not self._free:
            victim = self.eviction.evict(self._reading, incoming=key)
            if victim is None and self._inflight:
                # only now: loads finished without a wait may still protect blocks. Reaping before
                # every eviction queried each load in flight per new block (thousands of event
                # queries per step on the GPU, on the model's thread)
                self._reap()
                victim = self.eviction.evict(self._reading, incoming=key)
            if victim is None:
                return None
            vblk = self._blocks.pop(victim)
            self.counters["evictions"] += 1
            if self.demote_to is not None:
                if self._drop_first.get(task, 0) > 0:  # a later victim of this call takes the room
                    self._drop_first[task] -= 1
                    self.counters["dropped"] += 1
                elif self.demote_to.demotion_room() > len(demoted):  # copy out before the slot is reused
                    buf = self._spares.take()
                    buf.view(self.planes, self.plane_bytes).copy_(self.pool[:, vblk.slot])
                    demoted.append((victim, buf))
                else:  # the tier below is behind: waiting for it would stall the model
                    self.counters["dropped"] += 1
            self._free.append(vblk.slot)
        return self._blocks.setdefault(key, _Block(self._free.popleft()))

    def _plane_view(self, offset: int, width: int) -> Optional[tuple[torch.Tensor, Optional[torch.Tensor]]]:
        """(slots, width) views of the pool at byte ``offset`` of every block, or None if it straddles planes."""
        p, o = divmod(offset, self.plane_bytes)
        if o + width > self.plane_bytes:
            return None
        view = self.pool[p, :, o:o + width]
        return view, (self.pool_uva[p, :, o:o + width] if self.pool_uva is not None else None)

    def _check_rows(self, block_ids, rows) -> tuple[list[bytes], int, int]:
        """Keys, rows per block (k) and the largest row index of a block-API call.

        ``rows[i]`` is one row index, or a list of k row indices when a stored block holds k
        caller rows per plane (e.g. 16 vLLM blocks of 16 tokens in one 256-token stored block)."""
        keys = to_keys(block_ids)
        if len(rows) != len(keys):
            raise ValueError(f"block_ids and rows must have the same length, got {len(keys)} and {len(rows)}")
        k = len(rows[0]) if rows and isinstance(rows[0], Sequence) else 1
        flat = [r for rs in rows for r in rs] if k > 1 else list(rows)
        if len(flat) != k * len(keys):
            raise ValueError(f"every rows[i] must hold the same number of rows ({k})")
        if flat and (not all(isinstance(r, int) for r in flat) or min(flat) < 0):
            raise ValueError(f"rows must be non-negative ints, got {[r for r in flat if not isinstance(r, int) or r < 0][:3]}")
        return keys, k, max(flat, default=-1)

    def _plane_views(self, planes, offset: int, k: int, max_row: int) -> list[PlaneCopy]:
        """One PlaneCopy per caller plane, checked against the pool's layout. Made once per set of
        planes: a caller (vLLM's KV cache) passes the same tensors every step, and building the
        views cost ~40 µs a plane, on the model's thread. A cached entry keeps its tensors alive,
        so no other tensor can have the same address."""
        if not isinstance(offset, int) or offset < 0:
            raise ValueError(f"offset must be a non-negative int, got {offset!r}")
        for j, t in enumerate(planes):
            if not isinstance(t, torch.Tensor) or t.dim() < 1 or t.shape[0] == 0:
                raise ValueError(f"planes[{j}] must be a tensor whose first dimension indexes rows")
            if max_row >= t.shape[0]:
                raise ValueError(f"rows must index the planes' first dimension (< {t.shape[0]}), got {max_row}")
        key = (offset, k, *((t.device, t.data_ptr(), t.dtype, t.shape, t.stride()) for t in planes))
        views = self._views.get(key)
        if views is None:
            with torch.inference_mode(False):  # a view made under it is an inference tensor: no writes outside
                views = self._make_plane_views(planes, offset, k)
            if len(self._views) >= 256:
                self._views.clear()
            self._views[key] = views
        return views

    def _make_plane_views(self, planes, offset: int, k: int) -> list[PlaneCopy]:
        end = offset + k * sum(t.numel() * t.element_size() // t.shape[0] for t in planes)
        if end > self.block_size:
            raise ValueError(f"offset + the planes' rows = {end} bytes exceeds kv_block_size {self.block_size}")
        views = []
        for j, t in enumerate(planes):
            user = rows_view(t)
            width = user.shape[1]
            pool = self._plane_view(offset, k * width)
            if pool is None or (k > 1 and not pool[0].is_contiguous()):
                raise ValueError(f"planes[{j}] (bytes {offset}..{offset + k * width} of a block) does not fit "
                                 f"one of the pool's {self.planes} planes of {self.plane_bytes} bytes")
            if k > 1:  # the pool plane as (slots * k, width) rows
                pool = tuple(v.reshape(-1, width) if v is not None else None for v in pool)
                views.append(PlaneCopy(user, *pool))
            else:  # with where it sits in its pool plane, so neighbours can share one DMA
                p, col = divmod(offset, self.plane_bytes)
                views.append(PlaneCopy(user, *pool, row=self.pool[p],
                                       row_uva=self.pool_uva[p] if self.pool_uva is not None else None, col=col))
            offset += k * width
        return views

    def _check_blocks(self, block_ids, planes, rows, offset: int = 0):
        keys, k, max_row = self._check_rows(block_ids, rows)
        return keys, self._plane_views(planes, offset, k, max_row), k

    def _submit_planes(self, views: list[PlaneCopy], plan: RowPlan, to_pool: bool, task: Task,
                       keys: list[bytes], whole: bool = False) -> list:
        if not len(plan):
            return []
        fail = lambda exc: [task.fail(k, IO_ERROR) for k in keys]  # noqa: E731 (a copy failed: every block of the call)
        if self._cuda_dump is not None and views[0].user.is_cuda:
            return (self._cuda_dump if to_pool else self._cuda_load).submit(views, plan, to_pool, on_error=fail,
                                                                            whole=whole)
        engine = self._dumps if to_pool else self._loads  # one job per plane: each completes on its own
        return [engine.run(copy_planes_cpu, [v], plan, to_pool, on_error=fail) for v in views]

    def _submit_pieces(self, task: Task, pieces: list, to_pool: bool, keys: list[bytes]) -> None:
        """Copy (slot, offset, tensor) pieces: same-shaped pieces of one tensor storage as plane copies,
        the rest one by one (coalescing neighbours)."""
        groups: dict[tuple, list] = {}
        for slot, off, t in pieces:
            n = t.numel() * t.element_size()
            soff = t.storage_offset() * t.element_size()
            if n and soff % n == 0 and off % self.plane_bytes + n <= self.plane_bytes:
                key = (t.untyped_storage().data_ptr(), t.device, n, off)
                groups.setdefault(key, []).append((slot, soff // n, t))
            else:
                groups.setdefault(id(t), []).append((slot, off, t))
        pairs = []
        for key, items in groups.items():
            if isinstance(key, tuple) and len(items) >= MIN_GROUP:
                _, device, n, off = key
                storage = items[0][2].untyped_storage()
                user = torch.empty(0, dtype=torch.uint8, device=device).set_(storage, 0, (storage.nbytes() // n, n))
                view = PlaneCopy(user, *self._plane_view(off, n))
                plan = RowPlan([s for s, _, _ in items], [r for _, r, _ in items])
                for part in self._submit_planes([view], plan, to_pool, task, keys):
                    task.add(part)
                continue
            for slot, off_or_row, t in items:
                off = key[3] if isinstance(key, tuple) else off_or_row
                pairs.extend(self._piece_pairs(slot, off, as_bytes(t), to_pool))
        engine = self._dumps if to_pool else self._loads
        task.add(engine.submit(pairs, on_error=lambda exc: [task.fail(k, IO_ERROR) for k in keys]))

    def _piece_pairs(self, slot: int, off: int, t: torch.Tensor, to_pool: bool) -> list:
        """(dst, src) pairs of one piece, split where it crosses planes."""
        out, done = [], 0
        while done < t.numel():
            p, o = divmod(off + done, self.plane_bytes)
            n = min(self.plane_bytes - o, t.numel() - done)
            pool, user = self.pool[p, slot, o:o + n], t[done:done + n]
            out.append((pool, user) if to_pool else (user, pool))
            done += n
        return out

    def _drop(self, key: bytes) -> None:
        blk = self._blocks.pop(key)
        if blk.committed:
            self.eviction.remove(key)
        self._free.append(blk.slot)

    def _demote(self, demoted: list) -> None:
        # outside the lock: the next tier may write a file
        self._count(demoted=sum(bool(self.demote_to.write_block(key, data, release=self._spares.give))
                                for key, data in demoted))

    def _count(self, **deltas: int) -> None:
        """Counters changed outside the lock (promoter and reader threads demote too)."""
        if any(deltas.values()):
            with self._lock:
                for k, v in deltas.items():
                    self.counters[k] += v

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
