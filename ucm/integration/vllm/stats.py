"""Connector metrics through vLLM's own channel: ``KVConnectorStats`` (logged by vLLM every
interval) and Prometheus counters (``vllm:ucm_*`` on the ``/metrics`` endpoint).

Also keeps process-wide totals (``totals()``) for tests and the demo.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from ucm.integration.vllm.compat import KVConnectorPromMetrics, KVConnectorStats

COUNTERS = ("lookup_tokens", "hit_tokens", "loaded_blocks", "layerwise_blocks", "loaded_bytes", "load_seconds",
            "load_failed_blocks", "dumped_blocks", "dumped_bytes", "dump_seconds", "dump_failed_blocks",
            "evictions", "refusals", "deferred", "load_overflow", "delayed_frees", "delayed_free_block_steps",
            "prefetched", "disk_hits_refused")

_totals_lock = threading.Lock()
_totals: dict[str, float] = dict.fromkeys(COUNTERS, 0)


def totals() -> dict[str, float]:
    with _totals_lock:
        return dict(_totals)


def reset_totals() -> None:
    with _totals_lock:
        for k in _totals:
            _totals[k] = 0


@dataclass
class UcmConnectorStats(KVConnectorStats):
    def __post_init__(self):
        for k in COUNTERS:
            self.data.setdefault(k, 0)

    def add(self, **kw: float) -> None:
        with _totals_lock:
            for k, v in kw.items():
                self.data[k] = self.data.get(k, 0) + v
                _totals[k] += v

    def reset(self):
        self.data = dict.fromkeys(COUNTERS, 0)

    def aggregate(self, other: KVConnectorStats) -> "UcmConnectorStats":
        for k, v in other.data.items():
            if k in COUNTERS:
                self.data[k] = self.data.get(k, 0) + v
        return self

    def reduce(self) -> dict[str, int | float]:
        d = self.data
        out: dict[str, int | float] = {k: d.get(k, 0) for k in COUNTERS if not k.endswith("seconds")}
        out["load_GBps"] = round(d["loaded_bytes"] / d["load_seconds"] / 1e9, 3) if d.get("load_seconds") else 0.0
        out["dump_GBps"] = round(d["dumped_bytes"] / d["dump_seconds"] / 1e9, 3) if d.get("dump_seconds") else 0.0
        return out

    def is_empty(self) -> bool:
        return not any(self.data.get(k) for k in COUNTERS)

    def take(self) -> "UcmConnectorStats | None":
        """This interval's stats (None when nothing happened); starts a new interval."""
        if self.is_empty():
            return None
        out = UcmConnectorStats(data=dict(self.data))
        self.reset()
        return out


_PROM = {  # counter -> (metric name, help)
    "hit_tokens": ("vllm:ucm_hit_tokens", "Prompt tokens found in ucm beyond vLLM's own prefix cache"),
    "lookup_tokens": ("vllm:ucm_lookup_tokens", "Prompt tokens looked up in ucm"),
    "loaded_blocks": ("vllm:ucm_loaded_blocks", "Blocks loaded from ucm"),
    "layerwise_blocks": ("vllm:ucm_layerwise_blocks", "Blocks loaded layer by layer within the request's step"),
    "loaded_bytes": ("vllm:ucm_loaded_bytes", "Bytes loaded from ucm"),
    "load_seconds": ("vllm:ucm_load_seconds", "Seconds spent waiting for ucm loads"),
    "load_failed_blocks": ("vllm:ucm_load_failed_blocks", "Blocks whose load failed (recomputed)"),
    "dumped_blocks": ("vllm:ucm_dumped_blocks", "Blocks dumped to ucm"),
    "dumped_bytes": ("vllm:ucm_dumped_bytes", "Bytes dumped to ucm"),
    "dump_seconds": ("vllm:ucm_dump_seconds", "Seconds from dump submission to completion"),
    "dump_failed_blocks": ("vllm:ucm_dump_failed_blocks", "Blocks whose dump failed or was refused"),
    "evictions": ("vllm:ucm_evictions", "Blocks evicted from ucm tiers"),
    "refusals": ("vllm:ucm_refusals", "Blocks ucm refused to store (admission or full)"),
    "deferred": ("vllm:ucm_deferred", "Times a request with a DRAM hit was left for the next step "
                 "(ucm_layerwise_step_tokens, ucm_layerwise_in_turn_tokens)"),
    "load_overflow": ("vllm:ucm_load_overflow", "Requests with a DRAM hit left for the next step because the "
                      "step's layer-wise loads were full (ucm_layerwise_step_load_blocks)"),
    "delayed_frees": ("vllm:ucm_delayed_frees", "Finished requests whose blocks vLLM kept until their dumps "
                      "were done"),
    "prefetched": ("vllm:ucm_prefetched", "DRAM hits whose copies started at their allocation "
                   "(ucm_layerwise_prefetch)"),
    "disk_hits_refused": ("vllm:ucm_disk_hits_refused", "Requests whose hit on disk ucm recomputed instead: "
                          "the disk read slower than the model computes (disk.hits: auto)"),
    "delayed_free_block_steps": ("vllm:ucm_delayed_free_block_steps", "Blocks of finished requests kept for "
                                 "their dumps, times the steps they were kept (HBM taken from new requests)"),
}


class UcmPromMetrics(KVConnectorPromMetrics):
    def __init__(self, vllm_config, metric_types, labelnames, per_engine_labelvalues):
        super().__init__(vllm_config, metric_types, labelnames, per_engine_labelvalues)
        self._counters: dict[str, Any] = {}
        for key, (name, doc) in _PROM.items():
            counter = self._counter_cls(name=name, documentation=doc, labelnames=labelnames)
            self._counters[key] = {idx: counter.labels(*values) for idx, values in per_engine_labelvalues.items()}

    def observe(self, transfer_stats_data: dict[str, Any], engine_idx: int = 0):
        for key, per_engine in self._counters.items():
            value = transfer_stats_data.get(key, 0)
            if value and engine_idx in per_engine:
                per_engine[engine_idx].inc(value)
