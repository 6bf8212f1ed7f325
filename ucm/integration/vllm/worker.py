"""The worker side: copies between vLLM's paged KV cache and the store.

One stored block = one vLLM block of one TP rank: every layer's K and V, layer after layer at
``layer_index * layer_bytes`` (the pieces of a layer in vLLM's own layout, K before V).

- Loads run between steps (vLLM's asynchronous load path): ``start_load_kv`` submits one load per
  request (all its blocks, all layers) and returns; ``get_finished`` reports the requests whose
  loads are done, while other requests keep computing. A failed block is reported through
  ``get_block_ids_with_load_errors`` in that same pass, before the request ever runs, so vLLM
  recomputes from the first failed block (ucm sets ``kv_load_failure_policy=recompute``).
- ``save_kv_layer`` submits the dump of that layer's new full blocks right after its attention,
  overlapping the next layers' compute; ``wait_for_save`` (end of the step, before vLLM may reuse
  the blocks) waits for the copies and commits the blocks whose every piece landed, dropping the
  others.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Optional

import torch

from ucm.integration.vllm import compat
from ucm.integration.vllm.keys import KeyMaker
from ucm.integration.vllm.metadata import UcmConnectorMetadata
from ucm.integration.vllm.stats import UcmConnectorStats

log = logging.getLogger("ucm")
# How long one get_finished may wait for loads in flight before leaving them to a later step: a
# load of a few MiB finishes within it, so its request runs one step later, not many.
WAIT_S = 0.02


def store_counters(stats: Any) -> tuple[int, int, int]:
    """(evictions, refusals, newly dumped blocks) summed over a store's tiers."""
    out = [0, 0, 0]
    if isinstance(stats, dict):
        for i, k in enumerate(("evictions", "refused", "dumped_blocks")):
            v = stats.get(k, 0)
            out[i] += int(v) if isinstance(v, (int, float)) else 0
        children = [v for v in stats.values() if isinstance(v, (dict, list))]
    elif isinstance(stats, list):
        children = stats
    else:
        children = []
    for c in children:
        sub = store_counters(c)
        out = [a + b for a, b in zip(out, sub)]
    return out[0], out[1], out[2]


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
        self._dumps: list[Any] = []
        self._reserved: Any = None  # this step's BlockWrite (batched dumps), reserved at its first layer
        self._dump_t0 = 0.0
        self._store_counters = store_counters(self._store_stats())

    # ---- registration -----------------------------------------------------------------------
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
            self.layers[name] = _Layer(name, len(self.layers), kv, offset, piece_offsets,
                                       all(v.is_contiguous() for v in views),
                                       compat.layer_planes(kv, self.num_blocks))
            offset += o
        # Batched row copies (one gather/DMA per layer for all blocks, not one copy per block and
        # layer) when every layer has a row view and the store offers them.
        batched = hasattr(self.store, "load_blocks") and all(l.planes for l in self.layers.values())
        self._planes = [p for l in self.layers.values() for p in l.planes] if batched else None
        if offset != self.block_bytes:
            raise ValueError(f"ucm: the KV cache holds {offset} bytes per block over {len(names)} layers, "
                             f"but the connector computed {self.block_bytes} from vLLM's KV cache spec")
        log.info("ucm: registered %d KV layers, %d blocks, %d bytes per stored block (rank %d), layout %s, "
                 "copies %s", len(names), self.num_blocks, offset, self.rank, tuple(first.shape),
                 "batched per layer" if self._planes is not None else "per block piece")

    # ---- loads ------------------------------------------------------------------------------
    # Loads are asynchronous, between steps (vLLM's WAITING_FOR_REMOTE_KVS): a request's blocks
    # are read while other requests compute, and it runs once get_finished reports them. A failed
    # block is reported before the request ever runs, so vLLM recomputes it from a clean state.
    # One load call per request carries every layer's pieces: each block is read once from
    # whichever tier holds it (a disk block is not re-read per layer).
    @torch.inference_mode(False)  # views handed to copy threads must not be inference tensors
    def start_load_kv(self, meta: Optional[UcmConnectorMetadata]) -> None:
        if meta is None or not meta.loads or not self.layers:
            return
        for spec in meta.loads:
            ids, offs, dsts, staging = [], [], [], []
            where: dict[bytes, list[int]] = {}
            for h, b in zip(spec.block_hashes, spec.block_ids):
                key = self.keys.rank_key(h, self.rank)
                where.setdefault(key, []).append(b)
                if self._planes is not None:
                    continue
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
                task = self.store.load_blocks([self.keys.rank_key(h, self.rank) for h in spec.block_hashes],
                                              self._planes, list(spec.block_ids))
            else:
                task = self.store.load(ids, offs, dsts)
            self._loading[spec.req_id] = (task, where, staging, time.perf_counter())
            self.stats.add(loaded_blocks=len(where), loaded_bytes=len(where) * self.block_bytes)

    def wait_for_layer_load(self, layer_name: str) -> None:
        return  # loads never feed the step that is running

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
        out, self._failed_block_ids = self._failed_block_ids, set()
        return out

    # ---- dumps ------------------------------------------------------------------------------
    @torch.inference_mode(False)
    def save_kv_layer(self, meta: Optional[UcmConnectorMetadata], layer_name: str) -> None:
        layer = self.layers.get(layer_name)
        if meta is None or not meta.dumps or layer is None:
            return
        if not self._dumps:
            self._dump_t0 = time.perf_counter()
        if self._planes is not None:
            if self._reserved is None:  # first layer of the step: decide once which blocks are written
                keys, rows = [], []
                for spec in meta.dumps:
                    keys.extend(self.keys.rank_key(h, self.rank) for h in spec.block_hashes)
                    rows.extend(spec.block_ids)
                self._reserved = self.store.reserve_blocks(keys, rows)
            self.store.write_planes(self._reserved, layer.planes, offset=layer.offset)
            self._dumps.append(self._reserved.task)
            return
        ids, offs, srcs = [], [], []
        for spec in meta.dumps:
            for h, b in zip(spec.block_hashes, spec.block_ids):
                key = self.keys.rank_key(h, self.rank)
                for view, po in zip(compat.block_views(layer.kv, self.num_blocks, b), layer.piece_offsets):
                    ids.append(key)
                    offs.append(layer.offset + po)
                    srcs.append(view if layer.contiguous else view.contiguous())
        self._dumps.append(self.store.dump(ids, offs, srcs))

    def wait_for_save(self, meta: Optional[UcmConnectorMetadata]) -> None:
        self._reserved = None
        if meta is None or not meta.dumps:
            self._dumps = []
            return
        failed: set[bytes] = set()
        for task in {id(t): t for t in self._dumps}.values():  # batched dumps share one task
            if self.store.wait(task) != 0:
                failed |= set(task.failed_ids)
        complete = len(self._dumps) == len(self.layers)
        self._dumps = []
        good, bad = [], []
        for spec in meta.dumps:
            drop = not complete
            for h in spec.block_hashes:
                key = self.keys.rank_key(h, self.rank)
                (bad if drop or key in failed else good).append(key)
        if good:
            self.store.commit(good, True)
        if bad:
            self.store.commit(bad, False)
        ev, rf, dumped = store_counters(self._store_stats())
        ev0, rf0, dumped0 = self._store_counters
        self._store_counters = (ev, rf, dumped)
        new = max(0, dumped - dumped0)  # blocks the store did not hold yet (it skips the others)
        self.stats.add(dumped_blocks=new, dumped_bytes=new * self.block_bytes,
                       dump_seconds=time.perf_counter() - self._dump_t0, dump_failed_blocks=len(bad),
                       evictions=max(0, ev - ev0), refusals=max(0, rf - rf0))

    def _store_stats(self) -> Any:
        fn = getattr(self.store, "stats", None)
        return fn() if fn is not None else {}
