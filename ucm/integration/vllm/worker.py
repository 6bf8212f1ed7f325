"""The worker side: copies between vLLM's paged KV cache and the store.

One stored block = one vLLM block of one TP rank: every layer's K and V, layer after layer at
``layer_index * layer_bytes`` (the pieces of a layer in vLLM's own layout, K before V).

- Layer-wise loads (hits the scheduler pinned in the store's memory tier): ``start_load_kv``
  opens one read for all such requests of the step (``open_blocks``: blocks found and protected
  once) and launches layer 0's copies (of every request, on the store's load streams); the
  requests compute their new tokens in this same step. ``wait_for_layer_load`` keeps the
  launched layers up to LOOKAHEAD ahead of the model's, launching several layers in one store
  call (its CPU cost is mostly per call, and on the model's thread), and makes the model wait for
  that layer only (on CUDA the compute stream waits for the layer's copy event: no CPU stall), so
  later layers copy while layer l computes, and the forward's first kernel does not wait for the
  CPU to launch every layer's copies. A load-bound step (``meta.upfront``: e.g. a 100 % hit, one block to
  compute) launches every layer's copies up front instead (``load_blocks``, in stages of blocks, so
  the first copies start after a few blocks are planned): there the link, not the compute, sets
  the pace. Pinned blocks cannot miss; should a copy fail anyway, its blocks are reported through
  ``get_block_ids_with_load_errors`` and vLLM recomputes them. vLLM 0.32 does so correctly (CPU
  tests; vLLM's CPU platform always runs without async scheduling); vLLM 0.26 only on its V1
  runner with async scheduling off: its V2 runner (the default) keeps the failed blocks as
  computed, async scheduling on or off (wrong tokens,
  vllm-project/vllm#49250), and its V1 runner with async scheduling crashes (vllm-project/vllm#34484);
  all seen on an H200 with failures injected below the pins (``tests/vllm/gpu_check.py``, 2026-11-28).
  Loads between steps (``ucm_load_mode=async``) recover on both.
- Other loads run between steps (vLLM's asynchronous load path): ``start_load_kv`` submits them
  and returns; ``get_finished`` reports the requests whose loads are done, while other requests
  keep computing. A failed block is reported through ``get_block_ids_with_load_errors`` in that
  same pass, before the request ever runs, so vLLM recomputes from the first failed block (ucm
  sets ``kv_load_failure_policy=recompute``).
- Dumps are asynchronous. With row views (every layout vLLM 0.26/0.32 gives), a step's new full
  blocks are dumped at the step's end in one store call for all layers (``dump_rows``: reserve and
  write in stages of blocks; ``save_kv_layer`` only counts the layers: 28 calls a step, each ~0.15 ms of
  the model's CPU, made small-compute steps CPU-bound on an H200); on CUDA the copies run on the
  store's copy stream, which first waits for the compute stream, on the CPU on a copy thread.
  Layouts without row views copy each layer's pieces right after its attention. ``wait_for_save``
  does not wait: the step's dump stays pending, and every later hook (``handle_preemptions``,
  ``start_load_kv``, ``wait_for_save``, ``get_finished``) checks the pending dumps without
  blocking and commits those that are done (blocks whose every piece landed, the rest dropped);
  ``close`` (connector shutdown) waits for the rest. Lookups see only committed blocks, so a
  prefix hit again before its dump committed simply misses.
- Blocks must not be reused while a dump reads them. Each step, ``worker_meta`` tells the
  scheduler up to which step this rank's dumps are all done; a finished request whose dumps may
  still run is delayed by the scheduler (``request_finished`` -> ``delay_free``, listed in the
  next ``meta.delayed``) and reported here in ``finished_sending`` once all of its dumps are
  done; vLLM frees its blocks then. A preempted
  request's blocks are freed by vLLM at once, so ``handle_preemptions`` waits for its dumps
  before the step that may reuse them runs. Running requests keep their blocks.
- A block already being written by an earlier pending dump (same content hash) is not written
  again: one writer per stored block, so commits never wait for a later step's copies.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Optional

import torch

from ucm.integration.vllm import compat
from ucm.integration.vllm.keys import KeyMaker
from ucm.integration.vllm.metadata import UcmConnectorMetadata, UcmWorkerMetadata
from ucm.integration.vllm.stats import UcmConnectorStats

log = logging.getLogger("ucm")
# How long one get_finished may wait for loads in flight before leaving them to a later step: a
# load of a few MiB finishes within it, so its request runs one step later, not many.
WAIT_S = 0.02
# Layer-wise loads: layers whose copies are launched ahead of the layer the model waits for (the
# copy stream stays busy even when the CPU falls behind the GPU for a few layers); once fewer than
# REFILL are ahead, the next ones up to LOOKAHEAD ahead are launched in one store call.
LOOKAHEAD = 8
REFILL = 4


#: a store's counters the worker reports each step (summed over tiers): evictions, refusals to store,
#: newly dumped blocks, and lookups whose disk-only blocks the hit gate turned down (recomputed)
STORE_COUNTERS = ("evictions", "refused", "dumped_blocks", "refused_lookups")


def store_counters(stats: Any) -> tuple[int, ...]:
    """``STORE_COUNTERS`` summed over a store's tiers (nested stats dicts and lists)."""
    out = [0] * len(STORE_COUNTERS)
    if isinstance(stats, dict):
        for i, k in enumerate(STORE_COUNTERS):
            v = stats.get(k, 0)
            out[i] += int(v) if isinstance(v, (int, float)) else 0
        children = [v for v in stats.values() if isinstance(v, (dict, list))]
    elif isinstance(stats, list):
        children = stats
    else:
        children = []
    for c in children:
        out = [a + b for a, b in zip(out, store_counters(c))]
    return tuple(out)


class _ForwardTimer:
    """How fast the model computes KV, for a store that weighs slow-tier hits against recomputing
    them (``ucm.tiers.hit_gate``): a step's new blocks over the time from its first layer's save
    hook to its end (``wait_for_save``), by CUDA events on the GPU (read a step later, never waited
    for), wall time on the CPU. The layer hooks bracket the forward in every vLLM version, where
    ``start_load_kv`` does not (0.32 calls it after the forward when no load must precede it). Only
    steps that load nothing (a load would stretch the forward) and write at least MIN_BLOCKS new
    blocks (a prefill) count."""

    MIN_BLOCKS = 16
    MIN_SECONDS = 1e-3  # shorter: the events did not bracket the forward's kernels (another stream)

    def __init__(self, store: Any):
        gate = getattr(store, "slow_hits", None)
        self.on = gate is not None and gate.mode == "auto"
        self.store = store
        self.cuda = torch.cuda.is_available()
        self.loads = False  # the step loads something (its start_load_kv said so)
        self._start: Any = None
        self._pending: list[tuple[Any, Any, int]] = []

    def _mark(self) -> Any:
        if not self.cuda:
            return time.perf_counter()
        ev = torch.cuda.Event(enable_timing=True)
        ev.record()
        return ev

    def first_layer(self) -> None:
        """The step's first layer hook: the forward is under way (not timed while a CUDA graph is
        captured: an event may not be recorded then)."""
        if self.on and not (self.cuda and torch.cuda.is_current_stream_capturing()):
            self._report()
            self._start = self._mark()

    def end(self, new_blocks: int, block_bytes: int) -> None:
        """The step's end (every step, so its ``loads`` flag is reset)."""
        if self._start is not None and not self.loads and new_blocks >= self.MIN_BLOCKS:
            self._pending.append((self._start, self._mark(), new_blocks * block_bytes))
        self._start, self.loads = None, False
        if not self.cuda:
            self._report()

    def _report(self) -> None:
        while self._pending:
            start, end, nbytes = self._pending[0]
            if self.cuda and not end.query():
                return
            self._pending.pop(0)
            seconds = start.elapsed_time(end) / 1e3 if self.cuda else end - start
            if seconds >= self.MIN_SECONDS:
                self.store.note_compute(nbytes, seconds)


class _Dump:
    """One step's dump: its store task(s), the blocks it writes and the requests it reads from."""
    __slots__ = ("seq", "keys", "rows", "req_ids", "tasks", "layers", "final", "t0")

    def __init__(self, seq: int, keys: list[bytes], rows: list[int], req_ids: set[str]):
        self.seq, self.keys, self.rows, self.req_ids = seq, keys, rows, req_ids
        self.tasks: list[Any] = []  # one per layer (piece path) or the step-end write's task (batched)
        self.layers = 0  # layers whose attention ran (save_kv_layer calls)
        self.final = False  # the step ended (wait_for_save): no more layers come
        self.t0 = time.perf_counter()


def _decrement(counts: dict, key) -> None:
    """Count one fewer of ``key``, forgetting it at zero."""
    n = counts.get(key, 0) - 1
    if n > 0:
        counts[key] = n
    else:
        counts.pop(key, None)


class _LayerLoad:
    """A load feeding the running step (one or more requests: ``req_id`` names them all), waited
    for layer by layer. ``planes[j]``: the completions of plane j (None: wait for the whole task);
    ``read``: the store's BlockRead when layers are launched as the model reaches them; ``where``:
    the load's (keys, vLLM block ids) lists, made a map by ``_block_map`` only if a block fails."""
    __slots__ = ("req_id", "task", "where", "staging", "t0", "planes", "read", "issued", "waited")

    def __init__(self, req_id: str, task: Any, where: tuple[list, list], staging: list, t0: float,
                 planes: Optional[list] = None, read: Any = None):
        self.req_id, self.task, self.where, self.staging, self.t0 = req_id, task, where, staging, t0
        self.planes, self.read = planes, read
        self.issued = 0  # layers whose copies are launched (``read`` only)
        # completions the model's stream already waits for: neighbouring planes share one (the task
        # keeps them alive, so their ids stay theirs until the load ends)
        self.waited: set[int] = set()


def _block_map(keys: list, rows: list) -> dict:
    """{key: the vLLM block ids it loads into} (a layer-wise load makes it on a failure only: 1,000
    entries a 16k-token hit, on the model's thread)."""
    out: dict = {}
    for key, b in zip(keys, rows):
        out.setdefault(key, []).append(b)
    return out


def _lookahead(index: int, issued: int) -> int:
    """Layers of a layer-wise load to have launched once the model waits for layer ``index``, of
    which ``issued`` are: unchanged while at least REFILL are ahead of it, else LOOKAHEAD ahead.
    Layer 0 alone is launched before the forward (its first kernel waits for that CPU); then
    batches of layers, one store call each."""
    return issued if issued - (index + 1) >= REFILL else index + 1 + LOOKAHEAD


def _wait_part(part: Any, timeout: float, streams: Optional[list] = None) -> bool:
    """Let the model's next work wait for one completion: on the GPU stream when it is a CUDA
    event (the CPU runs on), else on the CPU. ``streams`` caches the current stream across the
    parts of one hook call (looking it up costs the model's thread a few µs each time)."""
    stream_wait = getattr(part, "stream_wait", None)
    if stream_wait is not None:
        if streams is None:
            stream_wait()
        else:
            if not streams:
                streams.append(torch.cuda.current_stream())
            stream_wait(streams[0])
        return True
    return part.wait(timeout)


class _Layer:
    __slots__ = ("name", "index", "kv", "offset", "piece_offsets", "contiguous", "planes")

    def __init__(self, name: str, index: int, kv: torch.Tensor, offset: int, piece_offsets: list[int],
                 contiguous: bool, planes: Optional[list[torch.Tensor]]):
        self.name, self.index, self.kv, self.offset = name, index, kv, offset
        self.piece_offsets, self.contiguous = piece_offsets, contiguous
        self.planes = planes  # the layer as (num_blocks, bytes) rows for batched copies, or None


class UcmWorker:
    def __init__(self, store: Any, keys: KeyMaker, rank: int, num_blocks: Optional[int], block_bytes: int):
        self.store = store
        self.keys = keys
        self.rank = rank
        self.num_blocks = num_blocks
        self.block_bytes = block_bytes
        self.layers: dict[str, _Layer] = {}
        self.stats = UcmConnectorStats()
        # loads in flight: req id -> (task, {key: vLLM block ids}, staging copies, start time)
        self._loading: dict[str, tuple[Any, dict[bytes, list[int]], list, float]] = {}
        self._failed_block_ids: set[int] = set()
        self._layer_loads: list[_LayerLoad] = []  # this step's layer-wise loads
        self._prefetched: dict[str, _LayerLoad] = {}  # req id -> a load started at its allocation (prefetch)
        self._plane_range: dict[str, range] = {}  # layer name -> its planes in self._planes
        self._layer_order: list[_Layer] = []
        self._planes: Optional[list[torch.Tensor]] = None
        self._cross = False  # vLLM's cross-layer layout: a block is one row, dumped at the step's end
        self._dump_parts = 0  # save calls a complete dump gets: one per layer, or one (cross-layer)
        # dumps: the step being written (None between steps), and every dump not yet committed
        self._step: Optional[_Dump] = None
        self._pending: list[_Dump] = []
        self._inflight: dict[bytes, int] = {}  # key -> pending dumps writing it (at most one)
        self._req_dumps: dict[str, int] = {}  # req id -> pending dumps reading its blocks
        # finished requests whose blocks vLLM keeps for us (meta.delayed): reported in
        # finished_sending once their dumps are done
        self._finishing: set[str] = set()
        self._seen_meta: Any = None
        self._seq = 0  # the step being run (meta.seq)
        self._store_counters = store_counters(self._store_stats())
        self._timer = _ForwardTimer(store)

    # ---- registration -----------------------------------------------------------------------
    @torch.inference_mode(False)  # vLLM may register under it: views made there are inference tensors
    def register_kv_caches(self, kv_caches: dict[str, torch.Tensor]) -> None:
        names = sorted(kv_caches, key=compat.layer_index)
        first = kv_caches[names[0]]
        if self.num_blocks is None:
            self.num_blocks = first.shape[0] if first.shape[0] != 2 else first.shape[1]
        offset = 0
        for name in names:
            kv = compat.writable_alias(kv_caches[name])
            views = compat.block_views(kv, self.num_blocks, 0)
            piece_offsets, o = [], 0
            for v in views:
                piece_offsets.append(o)
                o += v.numel() * v.element_size()
            planes = compat.layer_planes(kv, self.num_blocks)
            if planes and sum(p[0].numel() * p.element_size() for p in planes) != o:
                planes = None  # row views must be the layer's bytes of a block, in order (see _issue_layers)
            self.layers[name] = _Layer(name, len(self.layers), kv, offset, piece_offsets,
                                       all(v.is_contiguous() for v in views), planes)
            offset += o
        # Batched row copies (one gather/DMA per layer for all blocks, not one copy per block and
        # layer) when every layer has a row view and the store offers them.
        batched = hasattr(self.store, "load_blocks") and all(l.planes for l in self.layers.values())
        self._planes = [p for l in self.layers.values() for p in l.planes] if batched else None
        self._layer_order = list(self.layers.values())  # model order (by layer index)
        if batched:
            j = 0
            for l in self.layers.values():
                self._plane_range[l.name] = range(j, j + len(l.planes))
                j += len(l.planes)
        if offset != self.block_bytes:
            raise ValueError(f"ucm: the KV cache holds {offset} bytes per block over {len(names)} layers, "
                             f"but the connector computed {self.block_bytes} from vLLM's KV cache spec")
        self._dump_parts = len(self.layers)
        log.info("ucm: registered %d KV layers, %d blocks, %d bytes per stored block (rank %d), layout %s, "
                 "copies %s", len(names), self.num_blocks, offset, self.rank, tuple(first.shape),
                 "batched per layer" if self._planes is not None else "per block piece")

    @torch.inference_mode(False)
    def register_cross_layers(self, kv_cache: torch.Tensor) -> None:
        """vLLM's cross-layer layout (``ucm_cross_layer``, V1 model runner): every layer of a block
        is one contiguous row, so a stored block moves as one row (one DMA per run of blocks).
        Loads run between steps; a step's new blocks are dumped whole at its end (``wait_for_save``)."""
        rows = compat.cross_layer_rows(kv_cache, self.num_blocks, self.block_bytes)
        self.num_blocks = rows.shape[0]
        self._planes, self._cross, self._dump_parts = [rows], True, 1
        log.info("ucm: registered vLLM's cross-layer KV cache %s: %d blocks of %d bytes, whole-row copies (rank %d)",
                 tuple(kv_cache.shape), rows.shape[0], self.block_bytes, self.rank)

    # ---- loads ------------------------------------------------------------------------------
    # Loads are asynchronous, between steps (vLLM's WAITING_FOR_REMOTE_KVS): a request's blocks
    # are read while other requests compute, and it runs once get_finished reports them. A failed
    # block is reported before the request ever runs, so vLLM recomputes it from a clean state.
    # One load call per request carries every layer's pieces: each block is read once from
    # whichever tier holds it (a disk block is not re-read per layer).
    @torch.inference_mode(False)  # views handed to copy threads must not be inference tensors
    def start_load_kv(self, meta: Optional[UcmConnectorMetadata]) -> None:
        self.finish_layer_loads()  # a step that never reached its end (none in practice)
        self._timer.loads |= bool(meta is not None and meta.loads) or bool(self._prefetched)
        if self._prefetched:  # launched at their allocation (prefetch): this step's layers wait for them
            self._layer_loads.extend(self._prefetched.values())
        adopted, self._prefetched = self._prefetched, {}
        if meta is None or not meta.loads or not self._dump_parts:  # nothing registered yet
            return
        # layer-wise loads with row views: one store call for all of them, issued first (this step's
        # attention waits for them; the loads between steps are for later steps)
        batch, others = [], []
        for spec in meta.loads:
            if spec.req_id in adopted:
                continue
            (batch if spec.layerwise and self._planes is not None and not self._cross else others).append(spec)
        if batch:
            self._layer_loads.append(self._start_layer_loads(batch, upfront=meta.upfront))
        for spec in others:
            ids, offs, dsts, staging = [], [], [], []
            keys, rows = self.keys.rank_keys(spec.block_hashes, self.rank), list(spec.block_ids)
            where = _block_map(keys, rows)
            for key, b in zip(keys, rows) if self._planes is None else ():  # pieces: no row views
                for layer in self.layers.values():
                    for view, po in zip(compat.block_views(layer.kv, self.num_blocks, b), layer.piece_offsets):
                        dst = view if view.is_contiguous() else torch.empty_like(
                            view, memory_format=torch.contiguous_format)
                        if dst is not view:
                            staging.append((view, dst))
                        ids.append(key)
                        offs.append(layer.offset + po)
                        dsts.append(dst)
            if self._planes is not None:
                task = self.store.load_blocks(keys, self._planes, rows)
            else:
                task = self.store.load(ids, offs, dsts)
            if spec.layerwise:
                self._layer_loads.append(_LayerLoad(spec.req_id, task, (keys, rows), staging, time.perf_counter()))
                self.store.unpin(spec.req_id)  # the load itself now keeps its blocks resident
            else:
                self._loading[spec.req_id] = (task, where, staging, time.perf_counter())
            self.stats.add(loaded_blocks=len(where), loaded_bytes=len(where) * self.block_bytes,
                           layerwise_blocks=len(where) if spec.layerwise else 0)

    @torch.inference_mode(False)
    def prefetch(self, spec: Any) -> bool:
        """Start a load-bound layer-wise hit's copies now, as vLLM allocates its blocks (the scheduler
        calls this on the thread that runs the step next: ``ucm_layerwise_prefetch``), instead of in
        ``start_load_kv`` after vLLM has prepared the step's inputs; that step's ``start_load_kv``
        adopts the load. Every layer at once, in layer order, a completion per LOAD_PLANES_PER_EVENT
        planes: a step that also computes other requests waits only for the layers it reaches. The
        copies wait for all the work queued on this thread's stream (the steps already launched).
        False (nothing started) without per-layer row views. (A store without a planned per-layer read
        loads it whole, as an upfront step does.)"""
        if self._planes is None or self._cross or not self._dump_parts or spec.req_id in self._prefetched:
            return False
        self._prefetched[spec.req_id] = self._start_layer_loads([spec], launch_all=True)
        self.stats.add(prefetched=1)
        return True

    def _start_layer_loads(self, specs: list, upfront: bool = False, launch_all: bool = False) -> _LayerLoad:
        """One load for every layer-wise request of the step: its plan issues layer 0 of all of them,
        then layer 1, ... (the step's attention of layer l needs layer l of every request; one call
        per request would queue request 2's layer 0 behind all of request 1's layers). ``launch_all``:
        every layer now, in layer order (a prefetch, before the step). Returns the load; its blocks'
        pins pass to it."""
        keys, rows = [], []
        for spec in specs:
            mine = self.keys.rank_keys(spec.block_hashes, self.rank)
            keys += mine
            rows += spec.block_ids
            n = len(mine)  # a request's block keys are distinct (each hashes its parent's)
            self.stats.add(loaded_blocks=n, loaded_bytes=n * self.block_bytes, layerwise_blocks=n)
        name, t0 = ",".join(s.req_id for s in specs), time.perf_counter()
        br = None if upfront else self.store.open_blocks(keys, rows)
        if br is not None and br.plan is not None:
            # layer 0 now, the others as the model reaches them (_lookahead): launching all 28 up
            # front kept the forward's first kernel waiting for the CPU (~3 ms at 16k, ~20 ms at 4 x 16k),
            # which costs a step that has tokens to compute
            ld = _LayerLoad(name, br.task, (keys, rows), [], t0, planes=[[] for _ in self._planes], read=br)
            self._issue_layers(ld, len(self._layer_order) if launch_all else 1)
        else:
            # a load-bound step (meta.upfront: little to compute) launches every layer now, in
            # stages of blocks (load_blocks): the link starts after a few blocks are planned and
            # then runs at its rate, instead of at the pace of the forward's CPU; also a store
            # without a per-layer read
            task = self.store.load_blocks(keys, self._planes, rows)
            planes = getattr(task, "planes", None)  # copied: the waits empty ld.planes plane by plane
            ld = _LayerLoad(name, task, (keys, rows), [], t0,
                            planes=None if planes is None else [list(p) for p in planes])
        for spec in specs:
            self.store.unpin(spec.req_id)  # the load itself now keeps its blocks resident
        return ld

    @torch.inference_mode(False)  # the copier's views and staging must not be inference tensors
    def _issue_layers(self, ld: _LayerLoad, upto: int) -> None:
        """Launch the copies of layers [ld.issued, upto) of a per-layer read in one store call (their
        planes follow each other in a stored block); the last layer ends the read."""
        order = self._layer_order
        upto = min(upto, len(order))
        if ld.issued >= upto:
            return
        first = order[ld.issued]
        j0, j1 = self._plane_range[first.name].start, self._plane_range[order[upto - 1].name].stop
        ld.issued = upto
        parts = ld.read.store.read_planes(ld.read, self._planes[j0:j1], offset=first.offset,
                                          last=upto == len(order))
        for j, part in zip(range(j0, j1), parts):
            ld.planes[j].append(part)

    def wait_for_layer_load(self, layer_name: str) -> None:
        """Before ``layer_name``'s attention: its planes of this step's layer-wise loads have landed
        (a load without per-plane completions, or with staging copies, is waited for whole)."""
        if not self._layer_loads:
            return
        planes = self._plane_range.get(layer_name)
        timeout = getattr(self.store, "timeout_s", 60.0)
        layer = self.layers.get(layer_name)
        streams: list = []  # the current stream, looked up once
        for ld in self._layer_loads:
            if ld.read is not None and ld.issued < len(self._layer_order):
                upto = _lookahead(layer.index, ld.issued) if layer is not None else len(self._layer_order)
                if upto > ld.issued:
                    self._issue_layers(ld, upto)
            if planes is None or ld.planes is None or ld.staging:
                self._wait_whole(ld, timeout)
                continue
            for j in planes:
                for part in ld.planes[j]:
                    if id(part) in ld.waited:
                        continue
                    if _wait_part(part, timeout, streams):
                        ld.waited.add(id(part))
                    else:
                        log.error("ucm: layer %s of request %s not loaded after %.0f s", layer_name, ld.req_id, timeout)
                ld.planes[j] = []  # waited: finish_layer_loads need not wait for them again

    @torch.inference_mode(False)
    def _wait_whole(self, ld: _LayerLoad, timeout: float) -> None:
        if ld.staging is None:
            return  # done already
        if ld.read is not None:
            self._issue_layers(ld, len(self._layer_order))
        if not ld.task.wait(timeout):
            log.error("ucm: load of request %s not done after %.0f s", ld.req_id, timeout)
        for view, dst in ld.staging:
            view.copy_(dst)
        ld.staging = None

    @torch.inference_mode(False)
    def finish_layer_loads(self) -> None:
        """After the step's forward: wait for the planes the model did not wait for (a layer it did
        not announce; those it did were dropped from ``ld.planes``: on vLLM's V1 runner this hook
        runs before the logits, so 28 repeated stream waits delayed every first token), and report
        failed blocks (known when the copies were planned)."""
        if not self._layer_loads:
            return
        loads, self._layer_loads = self._layer_loads, []
        timeout = getattr(self.store, "timeout_s", 60.0)
        for ld in loads:
            if ld.read is not None:
                self._issue_layers(ld, len(self._layer_order))
            streams: list = []
            for parts in ld.planes or [[ld.task]]:
                for part in parts:
                    if id(part) not in ld.waited:  # a completion shared with a plane the model waited for
                        ld.waited.add(id(part))
                        _wait_part(part, timeout, streams)
            if ld.staging:
                self._wait_whole(ld, timeout)
            ld.task.done()  # releases the blocks now if the copies are done (else the store reaps it later)
            if ld.task.failed:
                where = _block_map(*ld.where)
                for key in ld.task.failed:
                    self._failed_block_ids.update(where.get(key, ()))
                self.stats.add(load_failed_blocks=len(ld.task.failed))
            self.stats.add(load_seconds=time.perf_counter() - ld.t0)

    @torch.inference_mode(False)
    def finished_loads(self) -> set[str]:
        """Requests whose loads completed (successfully or not) since the last call."""
        done: set[str] = set()
        deadline = time.perf_counter() + WAIT_S
        for req_id, (task, where, staging, t0) in list(self._loading.items()):
            if not self.store.check(task) and not task.wait(max(0.0, deadline - time.perf_counter())):
                continue
            del self._loading[req_id]
            done.add(req_id)
            if self.store.wait(task) != 0:
                failed = set(task.failed_ids) or set(where)  # a failure without ids fails them all
                for key in failed:
                    self._failed_block_ids.update(where.get(key, ()))
                self.stats.add(load_failed_blocks=len(failed))
            for view, dst in staging:
                view.copy_(dst)
            self.stats.add(load_seconds=time.perf_counter() - t0)
        return done

    def get_block_ids_with_load_errors(self) -> set[int]:
        self.finish_layer_loads()
        out, self._failed_block_ids = self._failed_block_ids, set()
        return out

    # ---- dumps ------------------------------------------------------------------------------
    def note_meta(self, meta: Optional[UcmConnectorMetadata]) -> None:
        """Take in a step's plan once (the first hook that sees it): wait for the dumps of requests
        vLLM preempted (their blocks are free already and this step may reuse them), then record
        which requests dump in this step. Every hook calls it, so none misses a step."""
        if meta is None or meta is self._seen_meta:
            return
        self._seen_meta = meta
        if self._step is not None:  # the previous step never reached wait_for_save
            self._end_step()
        self._seq = max(self._seq, meta.seq)
        for req_id in meta.preempted:
            self._flush(req_id)
        self._finishing.update(meta.delayed)

    def handle_preemptions(self, meta: Optional[UcmConnectorMetadata]) -> None:
        self.note_meta(meta)
        self.poll_dumps()

    def save_kv_layer(self, meta: Optional[UcmConnectorMetadata], layer_name: str) -> None:
        """After ``layer_name``'s attention. Row views: count the layer (the step's end writes them
        all); else copy this layer's pieces of the step's new blocks now."""
        layer = self.layers.get(layer_name)
        if meta is None or not meta.dumps or layer is None:
            return
        self.note_meta(meta)
        d = self._step
        if d is None:  # first layer of the step: decide once which blocks are written
            d = self._step = self._begin_step(meta)
            self._timer.first_layer()
        d.layers += 1
        if d.keys and self._planes is None:
            self._save_pieces(d, layer)

    @torch.inference_mode(False)  # views handed to copy threads must not be inference tensors
    def _save_pieces(self, d: _Dump, layer: _Layer) -> None:
        ids, offs, srcs = [], [], []
        for key, b in zip(d.keys, d.rows):
            for view, po in zip(compat.block_views(layer.kv, self.num_blocks, b), layer.piece_offsets):
                ids.append(key)
                offs.append(layer.offset + po)
                srcs.append(view if layer.contiguous else view.contiguous())
        d.tasks.append(self.store.dump(ids, offs, srcs))

    @torch.inference_mode(False)
    def wait_for_save(self, meta: Optional[UcmConnectorMetadata]) -> None:
        """End of the step: the step's dump stays pending (committed by a later hook once done).
        Cross-layer layout: the step's new blocks are dumped here, whole rows after the forward."""
        self.note_meta(meta)
        if self._cross and meta is not None and meta.dumps and self._step is None:
            d = self._step = self._begin_step(meta)
            if d.keys:
                d.tasks.append(self.store.dump_blocks(d.keys, self._planes, d.rows))
            d.layers = 1
        self._timer.end(len(self._step.keys) if self._step is not None else 0, self.block_bytes)
        if self._step is not None:
            self._end_step()
        self.poll_dumps()
        now = store_counters(self._store_stats())
        ev, rf, dumped, gated = (max(0, b - a) for a, b in zip(self._store_counters, now))
        self._store_counters = now
        if ev or rf or dumped or gated:  # dumped: blocks the store did not hold yet (it skips the others)
            self.stats.add(dumped_blocks=dumped, dumped_bytes=dumped * self.block_bytes, evictions=ev,
                           refusals=rf, disk_hits_refused=gated)

    def finished_dumps(self) -> set[str]:
        """Commit the dumps that are done; return the delayed requests (finished, so in vLLM's
        ``finished_req_ids`` of this step or an earlier one) with no dump in flight any more."""
        self.poll_dumps()
        done = {r for r in self._finishing if not self._req_dumps.get(r)}
        self._finishing -= done
        return done

    def worker_meta(self) -> UcmWorkerMetadata:
        """This rank's progress for the scheduler: every dump of steps <= done_upto is done, and
        step ``ran`` (built at its end) has run."""
        done = min(d.seq for d in self._pending) - 1 if self._pending else self._seq
        return UcmWorkerMetadata({self.rank: done}, {self.rank: self._seq})

    def poll_dumps(self) -> None:
        """Commit every pending dump that is done, without blocking (one older than the store's
        timeout is waited for once more and then dropped, as a synchronous wait would have)."""
        if not self._pending:
            return
        now = time.perf_counter()
        timeout = getattr(self.store, "timeout_s", 60.0)
        for d in list(self._pending):
            if not d.final:
                continue
            if all(self.store.check(t) for t in d.tasks) or now - d.t0 > timeout:
                self._retire(d)

    def close(self) -> None:
        """Shutdown: wait for the dumps in flight (bounded by the store's timeout) and commit them."""
        if self._step is not None:
            self._end_step()
        for d in list(self._pending):
            self._retire(d)
        self._finishing.clear()

    def pending_dumps(self) -> int:
        return len(self._pending)

    # ---- dump internals ---------------------------------------------------------------------
    def _begin_step(self, meta: UcmConnectorMetadata) -> _Dump:
        keys, rows, seen = [], [], set()
        for spec in meta.dumps:
            for key, b in zip(self.keys.rank_keys(spec.block_hashes, self.rank), spec.block_ids):
                if key in seen or key in self._inflight:
                    continue  # an earlier pending dump writes the same bytes already
                seen.add(key)
                keys.append(key)
                rows.append(b)
        d = _Dump(self._seq, keys, rows, {spec.req_id for spec in meta.dumps})
        for key in keys:
            self._inflight[key] = self._inflight.get(key, 0) + 1
        for req_id in d.req_ids:
            self._req_dumps[req_id] = self._req_dumps.get(req_id, 0) + 1
        self._pending.append(d)
        return d

    @torch.inference_mode(False)
    def _end_step(self) -> None:
        """The step's forward is over: with row views, write its new blocks now, every layer in one
        call (the copies first wait for the forward's kernels); a step that missed a layer is
        not written (its blocks are dropped when retired)."""
        d, self._step = self._step, None
        d.final = True
        if d.keys and self._planes is not None and not self._cross and d.layers == self._dump_parts:
            d.tasks.append(self.store.dump_rows(d.keys, self._planes, d.rows))

    def _flush(self, req_id: str) -> None:
        """Wait for (and commit) every pending dump that reads ``req_id``'s blocks."""
        if not self._req_dumps.get(req_id):
            return
        t0 = time.perf_counter()
        for d in list(self._pending):
            if req_id in d.req_ids:
                d.final = True  # its step is over: the request was preempted after it
                self._retire(d)
        log.debug("ucm: waited %.3f s for the dumps of preempted request %s", time.perf_counter() - t0, req_id)

    def _retire(self, d: _Dump) -> None:
        """Commit a finished dump (waiting for it if it is not done, bounded by the store's timeout):
        blocks whose every piece landed, of a dump that got every layer, become hittable."""
        self._pending.remove(d)
        failed: set[bytes] = set()
        all_bad = d.layers != self._dump_parts or not d.tasks  # a layer missed, or nothing written
        for task in {id(t): t for t in d.tasks}.values():
            if self.store.wait(task) != 0:
                ids = set(task.failed_ids)
                failed |= ids
                all_bad |= not ids  # a failure without ids (timeout) fails them all
        good = [k for k in d.keys if not all_bad and k not in failed]
        bad = [k for k in d.keys if all_bad or k in failed]
        try:
            if good:
                self.store.commit(good, True)
            if bad:
                self.store.commit(bad, False)
        finally:
            for key in d.keys:
                _decrement(self._inflight, key)
            for req_id in d.req_ids:
                _decrement(self._req_dumps, req_id)
        self.stats.add(dump_seconds=time.perf_counter() - d.t0, dump_failed_blocks=len(bad))

    def _store_stats(self) -> Any:
        fn = getattr(self.store, "stats", None)
        return fn() if fn is not None else {}
