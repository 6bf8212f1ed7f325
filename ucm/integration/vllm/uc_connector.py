"""``UnifiedCacheConnectorV1``: the class vLLM loads (``kv_connector_module_path`` =
``ucm.integration.vllm.uc_connector``). Thin: builds the store and the keys, then hands each
hook to the scheduler side (``scheduler.py``) or the worker side (``worker.py``).
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Optional

import torch

from ucm.integration.vllm import compat, keys, lookup_rpc, settings, stores
from ucm.integration.vllm.compat import KVConnectorBase_V1, KVConnectorMetadata, KVConnectorRole
from ucm.integration.vllm.metadata import UcmWorkerMetadata
from ucm.integration.vllm.scheduler import UcmScheduler
from ucm.integration.vllm.stats import UcmConnectorStats, UcmPromMetrics
from ucm.integration.vllm.worker import UcmWorker

if TYPE_CHECKING:
    from vllm.config import VllmConfig

log = logging.getLogger("ucm")


class UnifiedCacheConnectorV1(KVConnectorBase_V1):
    if compat.HOST_HIT_SOURCE is not None:
        _cache_hit_source = compat.HOST_HIT_SOURCE

    def __init__(self, vllm_config: "VllmConfig", role: KVConnectorRole, kv_cache_config: Any = None):
        super().__init__(vllm_config=vllm_config, role=role, kv_cache_config=kv_cache_config)
        extra = self._kv_transfer_config.kv_connector_extra_config or {}
        cfg = settings.parse_extra_config(extra)
        compat.make_recompute_on_load_failure(self._kv_transfer_config, cfg.load_failure_policy)

        spec = compat.kv_cache_spec_summary(kv_cache_config, vllm_config)
        piece = spec["page_bytes"] // 2  # one layer's K or V of one block (the seed's kv_block_size)
        whole = spec["page_bytes"] * spec["num_layers"]
        settings.resolve_block_size(settings.given_block_size(cfg), piece, whole)  # fail early

        rank, tp_size = compat.tp_rank_and_size(vllm_config)
        self._cross_layer = cfg.cross_layer
        ns = keys.namespace(vllm_config, spec, tp_size, cross_layer=cfg.cross_layer)
        self._keys = keys.KeyMaker(keys.root_hash(ns), spec["block_size"], tp_size)
        engine_id = str(self._kv_transfer_config.engine_id)
        self._store_key: Optional[str] = None
        self._server: Optional[lookup_rpc.LookupServer] = None
        self._lookup: Optional[lookup_rpc.RankedLookup] = None
        self._scheduler: Optional[UcmScheduler] = None
        self._worker: Optional[UcmWorker] = None
        if role == KVConnectorRole.SCHEDULER:
            self._lookup = lookup_rpc.RankedLookup(engine_id, tp_size)
            self._scheduler = UcmScheduler(self._lookup, self._keys, spec["block_size"],
                                           layerwise=cfg.load_mode == "layerwise" and not cfg.cross_layer,
                                           step_tokens=cfg.layerwise_step_tokens,
                                           step_load_blocks=cfg.layerwise_step_load_blocks,
                                           in_turn_tokens=cfg.layerwise_in_turn_tokens,
                                           prefetch=cfg.layerwise_prefetch,
                                           upfront_blocks=cfg.layerwise_upfront_blocks)
        else:
            self._store_key = lookup_rpc.store_key(engine_id, rank)
            planes = 1 if cfg.cross_layer else spec["num_layers"]  # cross-layer: a block is one row
            store = stores.acquire(self._store_key, lambda: settings.build_store(cfg, whole, planes)[0])
            self._server = lookup_rpc.LookupServer(store, lookup_rpc.socket_path(engine_id, rank))
            num_blocks = getattr(kv_cache_config, "num_blocks", None) if kv_cache_config is not None else None
            self._worker = UcmWorker(store, self._keys, rank, num_blocks, whole)
            stores.register_worker(self._store_key, self._worker)  # ucm_layerwise_prefetch's scheduler reaches it
        log.info("ucm: %s side up: store %s, %d-byte blocks (%d layers), vLLM %s",
                 role.name.lower(), cfg.hydra_config or cfg.store_name, whole, spec["num_layers"],
                 compat.VLLM_VERSION)

    # ---- vLLM 0.32 hints ----------------------------------------------------------------------
    @property
    def requires_kv_delivery(self) -> bool:
        return False  # a cache: a dropped dump is a later miss, never lost output

    @property
    def prefer_cross_layer_blocks(self) -> bool:
        """``ucm_cross_layer``: ask vLLM (0.26's V1 model runner) for one KV tensor in which a
        block's layers are contiguous; it then calls ``register_cross_layers_kv_cache``."""
        return self._cross_layer

    # ---- worker side --------------------------------------------------------------------------
    def register_kv_caches(self, kv_caches: dict[str, torch.Tensor]):
        assert self._worker is not None
        self._worker.register_kv_caches(kv_caches)

    def register_cross_layers_kv_cache(self, kv_cache: torch.Tensor, attn_backend: Any = None):
        assert self._worker is not None
        self._worker.register_cross_layers(kv_cache)

    def handle_preemptions(self, kv_connector_metadata: Any) -> None:
        # Called before the step runs (both versions), with the step's plan: waits for the dumps of
        # requests preempted in it, whose blocks vLLM freed already and may reuse in this step.
        if self._worker is not None:
            self._worker.handle_preemptions(kv_connector_metadata)

    def start_load_kv(self, forward_context: Any, **kwargs: Any) -> None:
        assert self._worker is not None
        self._worker.note_meta(self._connector_metadata)
        self._worker.poll_dumps()
        self._worker.start_load_kv(self._connector_metadata)

    def wait_for_layer_load(self, layer_name: str) -> None:
        assert self._worker is not None
        self._worker.wait_for_layer_load(layer_name)

    def save_kv_layer(self, layer_name: str, kv_layer: torch.Tensor, attn_metadata: Any, **kwargs: Any) -> None:
        assert self._worker is not None
        self._worker.save_kv_layer(self._connector_metadata, layer_name)

    def wait_for_save(self):
        assert self._worker is not None
        self._worker.wait_for_save(self._connector_metadata)

    def get_finished(self, finished_req_ids: set[str]) -> tuple[Optional[set[str]], Optional[set[str]]]:
        if self._worker is None:
            return None, None
        self._worker.note_meta(self._connector_metadata)
        done = self._worker.finished_loads()
        sent = self._worker.finished_dumps()  # delayed requests whose blocks may be freed now
        return (sent or None), (done or None)

    def build_connector_worker_meta(self) -> Optional[UcmWorkerMetadata]:
        return self._worker.worker_meta() if self._worker is not None else None

    def get_block_ids_with_load_errors(self) -> set[int]:
        return self._worker.get_block_ids_with_load_errors() if self._worker is not None else set()

    def get_kv_connector_stats(self) -> Optional[UcmConnectorStats]:
        side = self._worker or self._scheduler
        return side.stats.take() if side is not None else None

    def shutdown(self):
        if self._worker is not None:
            try:
                self._worker.close()  # commit the dumps still in flight
            except Exception:  # never let shutdown fail on a dump
                log.exception("ucm: committing the pending dumps at shutdown failed")
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._lookup is not None:
            self._lookup.close()
        if self._store_key is not None:
            stores.register_worker(self._store_key, None)
            stores.release(self._store_key)
            self._store_key = None

    # ---- scheduler side -----------------------------------------------------------------------
    def get_num_new_matched_tokens(self, request: Any, num_computed_tokens: int) -> tuple[Optional[int], bool]:
        assert self._scheduler is not None
        return self._scheduler.get_num_new_matched_tokens(request, num_computed_tokens)

    def update_state_after_alloc(self, request: Any, blocks: Any, num_external_tokens: int):
        assert self._scheduler is not None
        self._scheduler.update_state_after_alloc(request, blocks, num_external_tokens)

    def build_connector_meta(self, scheduler_output: Any) -> KVConnectorMetadata:
        assert self._scheduler is not None
        return self._scheduler.build_connector_meta(scheduler_output)

    def request_finished(self, request: Any, block_ids: list[int]) -> tuple[bool, Optional[dict[str, Any]]]:
        assert self._scheduler is not None
        return self._scheduler.request_finished(request, block_ids)

    def update_connector_output(self, connector_output: Any) -> None:
        if self._scheduler is not None:
            self._scheduler.update_connector_output(connector_output)

    # ---- metrics ------------------------------------------------------------------------------
    @classmethod
    def build_kv_connector_stats(cls, data: Optional[dict[str, Any]] = None) -> Optional[UcmConnectorStats]:
        return UcmConnectorStats(data=dict(data)) if data is not None else UcmConnectorStats()

    @classmethod
    def build_prom_metrics(cls, vllm_config, metric_types, labelnames, per_engine_labelvalues):
        return UcmPromMetrics(vllm_config, metric_types, labelnames, per_engine_labelvalues)
