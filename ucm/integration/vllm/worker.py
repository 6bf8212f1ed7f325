"""The worker side: copies between vLLM's paged KV cache and the store.

One stored block = one vLLM block of one TP rank: every layer's K and V, layer after layer at
``layer_index * layer_bytes`` (the pieces of a layer in vLLM's own layout, K before V).

- ``start_load_kv`` submits one asynchronous load per layer (in layer order) before the forward;
  ``wait_for_layer_load`` waits only for that layer, so later layers copy while earlier ones compute.
- ``save_kv_layer`` submits the dump of that layer's new full blocks right after its attention;
  ``wait_for_save`` (end of the step, before vLLM may reuse the blocks) waits for the copies and
  commits the blocks whose every piece landed, dropping the others.
- A failed load is reported through ``get_block_ids_with_load_errors``: vLLM recomputes from the
  first failed block (ucm sets ``kv_load_failure_policy=recompute``). Dumps of a request whose load
  failed in this step are dropped (their KV was computed on top of the failed blocks).
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
    __slots__ = ("name", "index", "kv", "offset", "piece_offsets", "contiguous")

    def __init__(self, name: str, index: int, kv: torch.Tensor, offset: int, piece_offsets: list[int],
                 contiguous: bool):
        self.name, self.index, self.kv, self.offset = name, index, kv, offset
        self.piece_offsets, self.contiguous = piece_offsets, contiguous


class UcmWorker:
    def __init__(self, store: Any, keys: KeyMaker, rank: int, num_blocks: Optional[int], block_bytes: int):
        self.store = store
        self.keys = keys
        self.rank = rank
        self.num_blocks = num_blocks
        self.block_bytes = block_bytes
        self.layers: dict[str, _Layer] = {}
        self.stats = UcmConnectorStats()
        # loads of this step: submitted layer -> (task, staging copies); layers not yet submitted
        self._loads: dict[str, tuple[Any, list]] = {}
        self._pending: list = []
        self._where: dict[bytes, list[int]] = {}  # key -> vLLM block ids it loads into
        self._load_failed_keys: set[bytes] = set()
        self._load_t0 = 0.0
        self._load_failed_reqs: set[str] = set()
        self._key_reqs: dict[bytes, set[str]] = {}
        self._failed_block_ids: set[int] = set()
        self._dumps: list[Any] = []
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
                                       all(v.is_contiguous() for v in views))
            offset += o
        if offset != self.block_bytes:
            raise ValueError(f"ucm: the KV cache holds {offset} bytes per block over {len(names)} layers, "
                             f"but the connector computed {self.block_bytes} from vLLM's KV cache spec")
        log.info("ucm: registered %d KV layers, %d blocks, %d bytes per stored block (rank %d), layout %s",
                 len(names), self.num_blocks, offset, self.rank, tuple(first.shape))

    # ---- loads ------------------------------------------------------------------------------
    # One load call per layer, submitted one layer ahead: layer i+1 copies while layer i computes.
    # Submitting lazily (not all layers at once) also lets the first layer's read promote blocks
    # from a lower tier (disk) into DRAM, so later layers read them from DRAM, not disk again.
    @torch.inference_mode(False)  # views handed to copy threads must not be inference tensors
    def start_load_kv(self, meta: Optional[UcmConnectorMetadata]) -> None:
        if meta is None or not meta.loads or not self.layers:
            return
        self._load_t0 = time.perf_counter()
        self._key_reqs = {}
        self._where = {}
        for spec in meta.loads:
            for h, b in zip(spec.block_hashes, spec.block_ids):
                key = self.keys.rank_key(h, self.rank)
                self._key_reqs.setdefault(key, set()).add(spec.req_id)
                self._where.setdefault(key, []).append(b)
        self._load_failed_keys = set()
        self._pending = [(layer, meta) for layer in self.layers.values()]
        self._submit_next()
        self.stats.add(loaded_blocks=len(self._where), loaded_bytes=len(self._where) * self.block_bytes)

    def _submit_next(self) -> None:
        if not self._pending:
            return
        layer, meta = self._pending.pop(0)
        ids, offs, dsts, staging = [], [], [], []
        for spec in meta.loads:
            for h, b in zip(spec.block_hashes, spec.block_ids):
                key = self.keys.rank_key(h, self.rank)
                for view, po in zip(compat.block_views(layer.kv, self.num_blocks, b), layer.piece_offsets):
                    dst = view if layer.contiguous else torch.empty_like(view, memory_format=torch.contiguous_format)
                    if not layer.contiguous:
                        staging.append((view, dst))
                    ids.append(key)
                    offs.append(layer.offset + po)
                    dsts.append(dst)
        self._loads[layer.name] = (self.store.load(ids, offs, dsts), staging)

    @torch.inference_mode(False)
    def wait_for_layer_load(self, layer_name: str) -> None:
        while layer_name not in self._loads and any(l.name == layer_name for l, _ in self._pending):
            self._submit_next()  # a layer asked for out of order: submit up to it
        entry = self._loads.pop(layer_name, None)
        if entry is None:
            return
        task, staging = entry
        code = self.store.wait(task)
        self._submit_next()
        if code != 0:
            failed = set(task.failed_ids) or set(self._where)  # a failure without ids fails them all
            for key in failed - self._load_failed_keys:
                self._failed_block_ids.update(self._where.get(key, ()))
                self._load_failed_reqs.update(self._key_reqs.get(key, ()))
            self.stats.add(load_failed_blocks=len(failed - self._load_failed_keys))
            self._load_failed_keys |= failed
        for view, dst in staging:
            view.copy_(dst)
        if not self._loads and not self._pending:
            self.stats.add(load_seconds=time.perf_counter() - self._load_t0)

    def _finish_loads(self) -> None:
        while self._loads or self._pending:
            name = next(iter(self._loads)) if self._loads else self._pending[0][0].name
            self.wait_for_layer_load(name)

    def get_block_ids_with_load_errors(self) -> set[int]:
        self._finish_loads()
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
        self._finish_loads()
        if meta is None or not meta.dumps:
            self._dumps = []
            self._load_failed_reqs = set()
            return
        failed: set[bytes] = set()
        for task in self._dumps:
            if self.store.wait(task) != 0:
                failed |= set(task.failed_ids)
        complete = len(self._dumps) == len(self.layers)
        self._dumps = []
        good, bad = [], []
        for spec in meta.dumps:
            drop = spec.req_id in self._load_failed_reqs or not complete
            for h in spec.block_hashes:
                key = self.keys.rank_key(h, self.rank)
                (bad if drop or key in failed else good).append(key)
        if good:
            self.store.commit(good, True)
        if bad:
            self.store.commit(bad, False)
        self._load_failed_reqs = set()
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
