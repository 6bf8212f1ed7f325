"""Batched copies of whole rows between a caller's 2-D tensors and the slot pool.

A *plane copy* moves rows ``user[rows[i]] <-> pool_rows[slots[i]]`` for many blocks at once, where
``user`` is a caller tensor viewed as (rows, width) bytes (e.g. one layer's K cache, one row per
vLLM block) and ``pool_rows`` is a (slots, width) view of the pool. Instead of one copy per piece:
- on the CPU: row copies on a worker thread (one job per plane, so each plane completes on its own);
- GPU <-> pinned pool, runs where the slots and the caller's rows both go up by one: one DMA per
  run straight between the two (no staging, no kernel: the least CPU per layer);
- GPU <-> pinned pool, other long slot runs: a gather into a device staging buffer and one DMA per run of
  consecutive slots (the copy engines run at the link rate, no SMs used); loads DMA runs into
  staging and scatter it with one kernel; DMAs and kernels on two streams with two staging buffers
  in turn, so one plane's DMA overlaps its neighbour's kernel; up to ``STAGE_PLANES`` planes share a
  staging buffer and one DMA command (a kernel each still);
- GPU <-> pinned pool, fragmented slots: one gather/scatter kernel that reads or writes the pinned
  pool directly through unified virtual addressing; a small call (``SMALL_CALL_BYTES``, e.g. a decode
  step's few new blocks) goes direct instead where the driver batches DMAs: one command, no kernels;
- GPU <-> device pool (HBM tier): one gather/scatter kernel.
Each plane has a completion (a load's planes share one per ``LOAD_PLANES_PER_EVENT``, or per stage for a
load of every plane at once), so a caller can wait for one layer while others copy.

Dumps are issued on the caller's thread by default. ``UCM_DEFER_DUMPS=1`` hands a dump whose caller's
work still runs to a submitter thread that issues it once that work is done: queued at once behind the
forward, a fragmented step-end dump (56 planes x ~20 runs: thousands of DMAs) once held vLLM's thread in
the submission until the forward ended (H200 grid, 2026-11-28, before batched DMAs: the first request of
16k c = 2 at 0.87 s instead of 0.43 s), so deferring was the default from then. With batched DMAs (a loop of DMAs
is one driver command) the caller's thread won on the H200 (2026-11-29, same machine and
session: the 16k / 8k full-compute passes as fast, 0.43 / 0.65 / 1.09 s at 16k; 100 % hits at c >= 2
7-17 ms faster; scattered-row dumps at 0.89-0.91 of the plain pinned copy against 0.78-0.82 deferred, in
three sessions). The trace replay could not tell them apart (one run each, +21 against +12 ms a request
at the median over no connector, within the replay's spread from run to run).

Every DMA loop (a plane's runs; a dump's planes) is one driver command where the driver has
``cuMemcpyBatchAsync`` (``batch_dma``; ``UCM_BATCH_DMA=0``: one PyTorch copy per run).
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch

from ucm.tiers import batch_dma
from ucm.tiers.base import env_count, env_switch
from ucm.tiers.copy import _EventCompletion, _FutureCompletion, guarded

#: below this many bytes per run of consecutive slots, per-run DMAs lose to one UVA kernel
MIN_RUN_BYTES = 256 << 10
#: the direct path may cost at most this many more DMAs per plane than the staged one (each DMA
#: costs the CPU a launch, on the model's thread)
MAX_DIRECT_RUNS = 8


#: a call moving at most this many bytes (all its planes together) takes the direct path wherever the driver
#: batches DMAs (``batch_dma``), however short its runs: one driver command for a dump's planes (a load's: one
#: per ``LOAD_PLANES_PER_EVENT``), where the UVA-kernel path launches two kernels and records an event per
#: plane. A stream of requests dumps a few scattered blocks in most decode steps (each request fills a
#: block every 16 tokens): 1-3 rows of 28 planes, ~2 MB of the 7B model, 56-84 kernels on the model's (or the
#: dump submitter's) thread per step. Short DMAs are slower on the link (~9 GB/s for 64 KiB ones, H100):
#: at most ~0.5 ms for this many bytes. ``UCM_SMALL_CALL_BYTES`` sets it (A/B runs; a huge value sends every
#: call direct, however scattered its rows: a dump then issues one batched command a stage for all its planes, no
#: kernels; fewer launches, for DMAs of one block row each)
SMALL_CALL_BYTES = env_count("UCM_SMALL_CALL_BYTES", 4 << 20)

#: a load's planes (one per layer in vLLM 0.26's FlashAttention layout) share one completion per this
#: many: each completion is a driver command and an event, ~50 µs of the model's thread on an H200 host
#: (``dram_bandwidth.py``'s launch times, 2026-11-28: 84 against 28 of them per GiB, 7.7 against 4.2 ms),
#: and a layer then waits for the copies of a few layers after it too, which land long before the model
#: reaches them (a layer's copy takes ~0.5 ms of link time at 16k tokens, its compute ~3 ms).
#: ``UCM_LOAD_PLANES_PER_EVENT`` sets it (A/B benchmarks; 1: a completion per plane, as before)
LOAD_PLANES_PER_EVENT = env_count("UCM_LOAD_PLANES_PER_EVENT", 4)
#: the same for a load of every plane in one call (``load_blocks``: a load-bound step's upfront load, a load
#: between steps), whose reader needs all of it: the planes of a stage share one completion (default: any
#: number of planes), one driver command and event per stage instead of one per four planes (a 16k-token
#: hit: 3 instead of 21). The model's first layer then waits for a whole stage, not its own planes: at a
#: 100 % hit its compute (one block) is short. ``UCM_WHOLE_LOAD_PLANES_PER_EVENT`` sets it (A/B runs)
WHOLE_LOAD_PLANES_PER_EVENT = env_count("UCM_WHOLE_LOAD_PLANES_PER_EVENT", 1 << 16)

#: staged copies (scattered caller rows) move this many planes of one width through one staging buffer: one
#: batched DMA command, one event and one wait between the streams for all of them (the gather / scatter
#: kernels stay one a plane). The staged path's Python is per plane (a 1,170-block load of 28 planes launched
#: for 14.6 ms against 4.7 ms for consecutive rows, 2026-11-29, H200), and the link idles while the CPU
#: launches: on the CPU with the driver stood in, a 28-plane call of 586 scattered rows launched in 2.5 ms
#: with 4 planes a buffer against 5.2 ms a plane at a time. ``UCM_STAGE_PLANES`` sets it (A/B runs; 1 = a
#: plane at a time, as measured up to 2026-11-29). A group stays within STAGE_GROUP_BYTES of staging (a
#: plane's rows alone may exceed it), so the two buffers of a ring stay as large as one plane's rows
STAGE_PLANES = env_count("UCM_STAGE_PLANES", 4)
STAGE_GROUP_BYTES = 64 << 20

#: dumps issued on the caller's thread (module docstring); ``UCM_DEFER_DUMPS=1``: by a submitter thread once
#: the caller's work before them is done
DEFER_DUMPS = env_switch("UCM_DEFER_DUMPS", False)


def cuda_view(host: torch.Tensor) -> torch.Tensor:
    """A CUDA tensor aliasing pinned host memory (UVA). The caller keeps ``host`` alive."""
    class _Iface:
        __cuda_array_interface__ = {"shape": tuple(host.shape), "typestr": "|u1", "strides": None,
                                    "data": (host.data_ptr(), False), "version": 3}
    return torch.as_tensor(_Iface(), device="cuda")


def rows_view(t: torch.Tensor, width: Optional[int] = None) -> torch.Tensor:
    """``t`` as a (rows, width) uint8 tensor: its first dim indexes rows (vLLM's block dim)."""
    if not t.is_contiguous():
        raise ValueError("planes must be contiguous tensors (their first dimension indexes blocks)")
    flat = t.reshape(-1).view(torch.uint8)
    width = width or flat.numel() // t.shape[0]
    return flat.view(-1, width)


def words(*ts: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The same byte rows as int64 words, when every tensor's layout allows it (else as given).
    PyTorch's index kernels move one element per thread: on bytes they run far below HBM speed
    (and, through UVA, read the link in tiny pieces); on 8-byte words, 8x fewer elements."""
    if all(t.dim() == 2 and t.shape[1] % 8 == 0 and t.stride(1) == 1 and t.stride(0) % 8 == 0
           and t.data_ptr() % 8 == 0 for t in ts):
        return tuple(t.view(torch.int64) for t in ts)
    return ts


def dma_worthy(plan: "RowPlan", width: int, n_runs: int) -> bool:
    """Whether ``n_runs`` DMAs a plane move ``width``-byte rows fast: runs of MIN_RUN_BYTES or more
    on average (shorter ones lose to one UVA kernel)."""
    return width * len(plan) >= MIN_RUN_BYTES * n_runs


def takes_direct(plan: "RowPlan", widths, batched: bool = False) -> bool:
    """Whether a call goes straight between the caller's rows and the pool, a DMA per run where slot
    and row both go up by one (``plan.pairs``), instead of staging: a DMA per run of slots, then a
    gather or scatter kernel. Direct when its DMAs are long enough and at most MAX_DIRECT_RUNS more
    per plane than staging's: a prompt spread over many slot runs (a full pool's scattered LRU victims:
    a 16k prompt in 20-100 runs, bench/slot_fragmentation.py) but on consecutive vLLM rows costs the
    same DMAs either way, and staging adds a kernel, an index upload and a wait between streams.
    With ``batched`` (the driver batches DMAs) also any call of at most SMALL_CALL_BYTES."""
    if batched and len(plan) * sum(widths) <= SMALL_CALL_BYTES:
        return True
    return len(plan.pairs) <= len(plan.runs) + MAX_DIRECT_RUNS and all(
        dma_worthy(plan, w, len(plan.pairs)) for w in widths)


def copier_path(plan: "RowPlan", width: int, batched: bool = False) -> str:
    """The path a GPU<->pinned call of one plane of ``width`` bytes a row takes: "direct", "staged"
    (DMAs by slot run + a kernel) or "uva-kernel" (one kernel through the link)."""
    if takes_direct(plan, [width], batched):
        return "direct"
    return "staged" if dma_worthy(plan, width, len(plan.runs)) else "uva-kernel"


def pair_runs(slots: list[int], rows: list[int]) -> list[tuple[int, int, int]]:
    """(first slot, first row, length) of each run where slot and row both go up by one."""
    n = len(slots)
    cuts = [i for i, s0, s1, r0, r1 in zip(range(1, n), slots, slots[1:], rows, rows[1:])
            if s1 - s0 != 1 or r1 - r0 != 1]
    return [(slots[a], rows[a], b - a) for a, b in zip([0] + cuts, cuts + [n])] if n else []


def runs(sorted_slots: list[int]) -> list[tuple[int, int, int]]:
    """(first slot, first index, length) of each run of consecutive slots."""
    s, n = sorted_slots, len(sorted_slots)
    cuts = [i for i, a, b in zip(range(1, n), s, s[1:]) if b - a != 1]
    return [(s[a], a, b - a) for a, b in zip([0] + cuts, cuts + [n])] if n else []


class RowPlan:
    """Which pool row each caller row moves to, prepared once and reused for every plane (layer):
    slots and rows sorted by slot, the runs of consecutive slots, and the index tensors per device."""

    def __init__(self, slots: list[int], rows: list, k: int = 1):
        if k > 1:  # slot s holds pool rows s*k .. s*k+k-1
            slots = [s * k + j for s in slots for j in range(k)]
            rows = [r for rs in rows for r in rs]
        order = sorted(range(len(slots)), key=slots.__getitem__)
        self.slots = [slots[i] for i in order]
        self.rows = [rows[i] for i in order]
        self.runs = runs(self.slots)
        # the runs as (first slots, first indices, lengths): what every plane's DMA loop takes
        self.run_cols = tuple(list(c) for c in zip(*self.runs)) if self.runs else ([], [], [])
        self.pairs = pair_runs(self.slots, self.rows)
        self._index: dict = {}

    def __len__(self) -> int:
        return len(self.slots)

    def index(self, device: torch.device, stream=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows, slots) as long tensors on ``device``, made once."""
        key = (device.type, device.index)
        if key not in self._index:
            r = torch.tensor(self.rows, dtype=torch.long)
            s = torch.tensor(self.slots, dtype=torch.long)
            if device.type != "cpu":
                # through pinned memory: a copy from pageable memory first waits for the copy
                # stream (and so the model's stream) to drain, stalling the CPU that launches the
                # model's next kernels and, with several loads in a step, serialising them
                r = r.pin_memory().to(device, non_blocking=True)
                s = s.pin_memory().to(device, non_blocking=True)
            self._index[key] = (r, s)
        return self._index[key]


@dataclass
class PlaneCopy:
    user: torch.Tensor                    # (R, w) rows of the caller's tensor
    pool: torch.Tensor                    # (S, w) rows of the pool (a view; may be strided)
    pool_uva: Optional[torch.Tensor]      # the same view through UVA, when the pool is pinned host memory
    row: Optional[torch.Tensor] = None    # the whole pool plane this sits in, (S, plane bytes), contiguous
    row_uva: Optional[torch.Tensor] = None
    col: int = 0                          # byte offset of ``pool`` inside ``row``

    def __post_init__(self):
        # the pool side can be one DMA per run of slots (pinned and contiguous): judged once
        self.dma = self.pool_uva is not None and self.pool.is_contiguous()
        # (row bytes, pool address, caller address) for batched DMAs, or None where a side's rows are not
        # back to back; made once with the views (the pool keeps them): checking 56 planes a call cost
        # ~160 us of the model's thread (batch_dma.plane_bases)
        try:
            self.dma_addrs: Optional[tuple[int, int, int]] = batch_dma.pair(self.pool, self.user)
        except ValueError:
            self.dma_addrs = None


def row_groups(planes: list[PlaneCopy]) -> list[list[PlaneCopy]]:
    """Consecutive caller planes that together tile one whole pool plane (e.g. a layer's K and V
    in that layer's pool plane): such a group moves as one DMA of whole, contiguous pool rows.
    Every other plane is a group of its own."""
    out: list[list[PlaneCopy]] = []
    i = 0
    while i < len(planes):
        pc, j, end = planes[i], i, None
        if pc.row is not None and pc.col == 0:
            end = pc.user.shape[1]
            while end < pc.row.shape[1] and j + 1 < len(planes) and planes[j + 1].row is not None \
                    and planes[j + 1].row.data_ptr() == pc.row.data_ptr() and planes[j + 1].col == end:
                j += 1
                end += planes[j].user.shape[1]
        if end is not None and end == pc.row.shape[1] and j > i:
            out.append(planes[i:j + 1])
        else:
            out.extend([p] for p in planes[i:j + 1])
        i = j + 1
    return out


class _Events:
    def __init__(self, events):
        self.events = events
        self._done = False

    def done(self) -> bool:
        if not self._done:  # remembered: callers poll many times
            self._done = all(e.query() for e in self.events)
        return self._done

    def wait(self, timeout: float) -> bool:
        if not self._done:  # remembered too: a task waits each plane's completion, often the same one
            self._done = all(_EventCompletion(e).wait(timeout) for e in self.events)
        return self._done

    def stream_wait(self, stream=None) -> None:
        """Make ``stream`` (default: the current one) wait for these copies, without blocking
        the CPU: the model's next kernels start as soon as the layer has landed."""
        stream = stream or torch.cuda.current_stream()
        for e in self.events:
            stream.wait_event(e)


class _Later(_FutureCompletion):
    """The completion of copies a submitter thread issues later (a job whose result is their
    ``_Events``): done once issued and landed. A submission that raised counts as done, with the
    job semantics of ``_FutureCompletion`` (error recorded by the caller's hook, or a failed wait).
    Once seen landed it stays so without asking again: a dump's planes share one completion, and
    re-polling every plane's events for each of them (784 event queries a stage with 28 planes)
    held the GIL that the submitter thread needs to issue the next stage (H200 profile, 2026-11-28)."""

    def __init__(self, fut, handled: bool = True):
        super().__init__(fut, handled)
        self._landed = False
        self._distinct: Optional[list] = None

    def _parts(self) -> list:
        if self._distinct is None:  # each distinct completion once, worked out once
            self._distinct = list({id(p): p for p in self.fut.result()}.values())
        return self._distinct

    def done(self) -> bool:
        if not self._landed:
            self._landed = super().done() and (self.fut.exception() is not None
                                               or all(p.done() for p in self._parts()))
        return self._landed

    def wait(self, timeout: float) -> bool:
        if self._landed:
            return True
        deadline = time.monotonic() + timeout
        if not super().wait(timeout):
            return False
        if self.fut.exception() is not None:
            return True  # recorded by the caller's hook (super() said False otherwise)
        self._landed = all(p.wait(max(0.0, deadline - time.monotonic())) for p in self._parts())
        return self._landed


def copy_planes_cpu(planes: list[PlaneCopy], plan: RowPlan, to_pool: bool) -> None:
    """Row by row: a memcpy each, no temporary (index ops would allocate and fault in a gathered copy)."""
    for pc in planes:
        pool, user = pc.pool, pc.user
        if to_pool:
            for s, r in zip(plan.slots, plan.rows):
                pool[s].copy_(user[r])
        else:
            for s, r in zip(plan.slots, plan.rows):
                user[r].copy_(pool[s])


class _Ring:
    """Two staging buffers used in turn: the producer stream fills one while the consumer stream
    still drains the other, so DMAs and gather/scatter kernels overlap in bounded memory."""

    def __init__(self, device: torch.device):
        self.device = device
        self.bufs: list[Optional[torch.Tensor]] = [None, None]
        self.free: list[Optional[torch.cuda.Event]] = [None, None]  # consumer done with buffer i
        self.i = 0

    def take(self, rows: int, width: int, producer) -> tuple[int, torch.Tensor]:
        b, self.i = self.i, self.i ^ 1
        if self.free[b] is not None:
            producer.wait_event(self.free[b])
        need = rows * width
        if self.bufs[b] is None or self.bufs[b].numel() < need:
            with torch.cuda.stream(producer):  # the old buffer's memory is reused only after the wait above
                self.bufs[b] = torch.empty(need, dtype=torch.uint8, device=self.device)
        return b, self.bufs[b][:need].view(rows, width)


def _parts(staging: torch.Tensor, n: int, rows: int) -> list[torch.Tensor]:
    """``n`` consecutive (rows, width) parts of a staging buffer, one per plane of a group."""
    return [staging[j * rows:(j + 1) * rows] for j in range(n)]


def _record(stream) -> torch.cuda.Event:
    ev = torch.cuda.Event()
    ev.record(stream)
    return ev


class CudaPlaneCopier:
    """Plane copies on two streams: DMAs between pinned host memory and staging on the copy stream
    (the copy engines, no SMs), gathers/scatters and UVA kernels on the kernel stream. A layer's
    DMA overlaps the previous layer's scatter (loads) or the next layer's gather (dumps), so the
    link does not idle while a kernel runs. Loads' DMAs wait for nothing (they touch only the
    pinned pool, whose blocks are protected, and staging); every kernel that touches the caller's
    tensors runs after the work queued on the caller's stream when the copy was submitted."""

    def __init__(self, device: torch.device, priority: int = 0, streams: Optional[tuple] = None):
        """``streams``: (copy, kernel) streams to use instead of two new ones (stand-ins in CPU tests)."""
        self.device = device
        self.copy_stream, self.kernel_stream = streams or (torch.cuda.Stream(device, priority=priority),
                                                           torch.cuda.Stream(device, priority=priority))
        self._rings = {True: _Ring(device), False: _Ring(device)}  # per direction (to_pool)
        self._lock = threading.Lock()  # the rings' turns (a chain also loads from its promoter thread)
        self._submitter: Optional[ThreadPoolExecutor] = None  # dumps (module docstring), made on first use
        self._device_index = device.index if device.type == "cuda" else -1  # -1: stand-ins on the CPU

    def submit(self, planes: list[PlaneCopy], plan: RowPlan, to_pool: bool,
               on_error: Optional[Callable[[Exception], None]] = None, whole: bool = False) -> list:
        """Copy ``planes`` by ``plan``, after the work queued on the caller's stream so far. Returns a
        completion per plane (a direct load's planes share one per ``LOAD_PLANES_PER_EVENT``, or per
        ``WHOLE_LOAD_PLANES_PER_EVENT`` for a ``whole`` load: every plane of the caller's, read at once;
        the UVA kernels of a dump or of a ``whole`` load share one).
        A dump whose caller's work still runs goes to the submitter thread (``DEFER_DUMPS``); should its
        submission fail there, ``on_error(exc)`` records it."""
        caller = torch.cuda.current_stream(self.device)
        if to_pool and DEFER_DUMPS:
            after = torch.cuda.Event(blocking=True)  # the thread sleeps on it, not polling the driver
            after.record(caller)
            if not after.query():  # the forward still runs: issue the dump after it, off this thread
                return [self._defer(planes, plan, after, on_error)] * len(planes)  # its planes land together
        # outside inference mode: staging made under it would be an inference tensor, which a
        # later copy outside it (vLLM calls some connector hooks under it, some not) may not write
        with self._lock, torch.inference_mode(False):
            return self._submit(planes, plan, to_pool, lambda s: s.wait_stream(caller), whole)

    def _defer(self, planes: list[PlaneCopy], plan: RowPlan, after: torch.cuda.Event, on_error) -> "_Later":
        if self._submitter is None:  # its thread works on this copier's device (outside inference mode,
            # unlike a CopyEngine's jobs: staging it makes must stay writable outside it)
            self._submitter = ThreadPoolExecutor(1, thread_name_prefix="ucm-dump-submit",
                                                 initializer=torch.cuda.set_device, initargs=(self.device,))
        return _Later(self._submitter.submit(guarded, self._submit_after, (planes, plan, after), on_error),
                      handled=on_error is not None)

    def _submit_after(self, planes: list[PlaneCopy], plan: RowPlan, after: torch.cuda.Event) -> list[_Events]:
        """On the submitter thread (errors reach the caller's task through ``guarded``): wait (GIL
        released) until the caller's work before the dump is done, then issue the dump; its copies
        start at once, so few commands are ever pending."""
        after.synchronize()
        with self._lock:
            return self._submit(planes, plan, True, lambda s: s.wait_event(after))

    def close(self) -> None:
        """Issue the dumps still waiting for their forward, and stop the submitter thread."""
        if self._submitter is not None:
            self._submitter.shutdown(wait=True)
            self._submitter = None

    def _submit(self, planes: list[PlaneCopy], plan: RowPlan, to_pool: bool,
                wait: Callable[[torch.cuda.Stream], None], whole: bool = False) -> list[_Events]:
        """``wait(stream)`` makes ``stream`` wait for the caller's work before the copies."""
        if all(pc.dma for pc in planes) and takes_direct(plan, [pc.user.shape[1] for pc in planes],
                                                         batch_dma.available()):
            return self._direct(planes, plan, to_pool, wait, whole)
        wait(self.kernel_stream)
        fresh = (self.device.type, self.device.index) not in plan._index
        with torch.cuda.stream(self.copy_stream):
            r, s = plan.index(self.device)
        if fresh:  # made on the copy stream, read by kernels too
            self.kernel_stream.wait_event(_record(self.copy_stream))
            r.record_stream(self.kernel_stream)
            s.record_stream(self.kernel_stream)
        ring = self._rings[bool(to_pool)]
        done = []
        # UVA kernels run in order on the kernel stream: where no reader waits plane by plane (a dump's
        # planes land together; a ``whole`` load is waited for whole) they share the completion recorded
        # after the last of them, instead of an event each (a 1 GiB scattered load ran 56 such kernels)
        shared_uva = to_pool or whole
        uva_at: list[int] = []  # their places in ``done``, filled at the end
        # the gather / scatter kernels below run on the kernel stream: one context for all planes (a
        # context per plane was ~a fifth of a dump's Python on the model's thread, replay profile)
        staged: list[PlaneCopy] = []  # DMA-staged planes of one width, moved together (STAGE_PLANES)

        def flush() -> None:
            if staged:
                ev = (self._dump_planes if to_pool else self._load_planes)(staged, r, plan.run_cols, ring)
                done.extend(ev for _ in staged)  # they land together
                staged.clear()

        with torch.cuda.stream(self.kernel_stream):
            for group in row_groups(planes):
                if len(group) > 1 and group[0].row_uva is not None \
                        and dma_worthy(plan, group[0].row.shape[1], len(plan.runs)):
                    flush()
                    ev = (self._dump_rows if to_pool else self._load_rows)(group, r, plan.run_cols, ring)
                    done.extend(ev for _ in group)  # the planes of a group land together
                    continue
                for pc in group:
                    width = pc.user.shape[1]
                    if pc.dma and dma_worthy(plan, width, len(plan.runs)):
                        if staged and (staged[0].user.shape[1] != width
                                       or (len(staged) + 1) * len(plan) * width > STAGE_GROUP_BYTES):
                            flush()
                        staged.append(pc)
                        if len(staged) >= STAGE_PLANES:
                            flush()
                        continue
                    flush()  # runs too short for DMAs: one kernel through UVA
                    (self._dump_uva if to_pool else self._load_uva)(pc, r, s)
                    if shared_uva:
                        uva_at.append(len(done))
                        done.append(None)
                    else:
                        done.append(_Events([_record(self.kernel_stream)]))
            flush()
            if uva_at:
                ev = _Events([_record(self.kernel_stream)])
                for i in uva_at:
                    done[i] = ev
        return done

    def _direct(self, planes: list[PlaneCopy], plan: RowPlan, to_pool: bool, wait, whole: bool = False) -> list[_Events]:
        """Few long runs of consecutive slots onto consecutive caller rows (e.g. a request's blocks as
        vLLM hands out fresh ones): one DMA per run between the caller's tensor and the pool, on the
        copy stream, after the work queued on the caller's stream (it may still use those rows)."""
        wait(self.copy_stream)
        slots, rows, counts = (list(x) for x in zip(*plan.pairs))
        pools, users = [pc.pool for pc in planes], [pc.user for pc in planes]
        addrs = [pc.dma_addrs for pc in planes]
        # (width, pool, caller) columns, each (planes, 1); None: descriptors checks the planes (and says why)
        cols = None if None in addrs else np.array(addrs, dtype=np.int64).T[:, :, None]
        if to_pool:  # a dump's planes land together
            return self._copy_runs(pools, users, slots, rows, counts,
                                   bases=None if cols is None else (cols[0], cols[1], cols[2]))
        group = WHOLE_LOAD_PLANES_PER_EVENT if whole else LOAD_PLANES_PER_EVENT
        return self._copy_runs(users, pools, rows, slots, counts, group=group,
                               bases=None if cols is None else (cols[0], cols[2], cols[1]))

    def _dma_in(self, ring: _Ring, rows: int, width: int, srcs: list[torch.Tensor],
                slot_runs) -> tuple[int, list[torch.Tensor]]:
        """Slot runs of each of ``srcs`` (pool rows of one width; ``slot_runs`` is ``RowPlan.run_cols``)
        into one staging buffer, ``rows`` rows apiece, in one command on the copy stream; the kernel
        stream then waits for them. Returns the buffer's number and each source's part of it."""
        b, staging = ring.take(len(srcs) * rows, width, self.copy_stream)
        parts = _parts(staging, len(srcs), rows)
        slot0, i0, n = slot_runs
        self._copy_runs(parts, srcs, i0, slot0, n)[0].stream_wait(self.kernel_stream)
        return b, parts

    def _dma_out(self, ring: _Ring, b: int, parts: list[torch.Tensor], dsts: list[torch.Tensor], slot_runs) -> _Events:
        """Gathered staging ``parts`` into slot runs of ``dsts`` (pool rows), in one command on the copy stream."""
        self.copy_stream.wait_event(_record(self.kernel_stream))
        slot0, i0, n = slot_runs
        landed = self._copy_runs(dsts, parts, slot0, i0, n)[0]
        ring.free[b] = landed.events[0]
        return landed

    def _copy_runs(self, dsts: list[torch.Tensor], srcs: list[torch.Tensor], dst_rows: list[int],
                   src_rows: list[int], counts: list[int], group: int = 0, bases: Optional[tuple] = None) -> list[_Events]:
        """Rows ``srcs[j][src_rows[i]:+counts[i]]`` to ``dsts[j][dst_rows[i]:+counts[i]]`` for every plane
        j and run i, on the copy stream: one batched driver command per completion where the driver
        has it (``batch_dma``), else a DMA per run. Returns one completion per plane, in plane order:
        with ``group`` k > 0 each k consecutive planes share one (a load's planes land a group at a
        time), else all share one. ``bases``: ``batch_dma.plane_bases(dsts, srcs)``, known already."""
        n, planes = len(counts), len(dsts)
        batched = n > 0 and batch_dma.available()
        if batched:  # every plane's descriptors at once, one range of them per completion
            d, s, size = batch_dma.descriptors(dsts, srcs, dst_rows, src_rows, counts, bases=bases)
        step = group if group > 0 else max(1, planes)
        done: list[_Events] = []
        # the batched call names its stream, so only the device is set (the driver call runs in the
        # current context: a chain's promoter thread starts on device 0); a stream context made stream
        # objects and set the stream twice, ~a fifth of the dumps' Python in the replay's profile
        with torch.cuda.device(self._device_index) if batched else torch.cuda.stream(self.copy_stream):
            for lo in range(0, planes, step):
                hi = min(lo + step, planes)
                if batched:
                    batch_dma.copy(d, s, size, self.copy_stream.cuda_stream, lo=lo * n, hi=hi * n)
                else:
                    for dst, src in zip(dsts[lo:hi], srcs[lo:hi]):
                        for i, j, c in zip(dst_rows, src_rows, counts):
                            dst[i:i + c].copy_(src[j:j + c], non_blocking=True)
                done += [_Events([_record(self.copy_stream)])] * (hi - lo)
        return done

    # _load_rows / _dump_rows / _load_planes / _dump_planes / _dump_uva / _load_uva run inside _submit's kernel-stream context:
    # their kernels go to the kernel stream, their DMAs name the copy stream

    def _load_rows(self, group: list[PlaneCopy], r, slot_runs, ring: _Ring) -> _Events:
        """Whole pool rows (e.g. a layer's K and V) DMA'd by slot run into staging, then one
        scatter kernel per caller plane."""
        b, (staging,) = self._dma_in(ring, len(r), group[0].row.shape[1], [group[0].row], slot_runs)
        for pc in group:
            user, src = words(pc.user, staging[:, pc.col:pc.col + pc.user.shape[1]])
            user.index_copy_(0, r, src)
        ev = ring.free[b] = _record(self.kernel_stream)
        return _Events([ev])

    def _dump_rows(self, group: list[PlaneCopy], r, slot_runs, ring: _Ring) -> _Events:
        row = group[0].row
        b, staging = ring.take(len(r), row.shape[1], self.kernel_stream)
        for pc in group:
            dst, user = words(staging[:, pc.col:pc.col + pc.user.shape[1]], pc.user)
            dst.copy_(user.index_select(0, r))
        return self._dma_out(ring, b, [staging], [row], slot_runs)

    def _load_planes(self, group: list[PlaneCopy], r, slot_runs, ring: _Ring) -> _Events:
        """Planes of one width DMA'd by slot run into one staging buffer in one command, then a
        scatter kernel per plane (HBM speed, a few µs each; ``STAGE_PLANES``)."""
        b, parts = self._dma_in(ring, len(r), group[0].user.shape[1], [pc.pool for pc in group], slot_runs)
        for pc, part in zip(group, parts):
            user, src = words(pc.user, part)
            user.index_copy_(0, r, src)
        ev = ring.free[b] = _record(self.kernel_stream)
        return _Events([ev])

    def _dump_planes(self, group: list[PlaneCopy], r, slot_runs, ring: _Ring) -> _Events:
        """A gather kernel per plane into one staging buffer, then one DMA command to their slot runs."""
        b, staging = ring.take(len(group) * len(r), group[0].user.shape[1], self.kernel_stream)
        parts = _parts(staging, len(group), len(r))
        for pc, part in zip(group, parts):
            user, dst = words(pc.user, part)
            torch.index_select(user, 0, r, out=dst)
        return self._dma_out(ring, b, parts, [pc.pool for pc in group], slot_runs)

    def _dump_uva(self, pc, r, s) -> None:
        """One kernel writes the pool's rows through UVA (slot runs too short for DMAs); ``_submit``
        records its completion (one for several where they land together)."""
        pool, user = words(pc.pool_uva if pc.pool_uva is not None else pc.pool, pc.user)
        pool.index_copy_(0, s, user.index_select(0, r))

    def _load_uva(self, pc, r, s) -> None:
        user, src = words(pc.user, pc.pool_uva if pc.pool_uva is not None else pc.pool)
        user.index_copy_(0, r, src.index_select(0, s))
