"""Scheduler -> worker plans for one step (plain dataclasses; they cross process boundaries)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ucm.integration.vllm.compat import KVConnectorMetadata, KVConnectorWorkerMetadata


@dataclass
class LoadSpec:
    """Load ``block_hashes[i]`` into vLLM block ``block_ids[i]``: between steps (``layerwise``
    False: the request waits for it), or in this step's forward, each layer before its attention
    (``layerwise`` True: the blocks are pinned in the store's memory tier, so it cannot miss)."""
    req_id: str
    block_hashes: list[bytes]
    block_ids: list[int]
    layerwise: bool = False


@dataclass
class DumpSpec:
    """After this step's forward, store vLLM block ``block_ids[i]`` under ``block_hashes[i]``."""
    req_id: str
    block_hashes: list[bytes]
    block_ids: list[int]


@dataclass
class UcmConnectorMetadata(KVConnectorMetadata):
    loads: list[LoadSpec] = field(default_factory=list)
    dumps: list[DumpSpec] = field(default_factory=list)
    # requests preempted in this step that had dumps: the worker waits for those dumps before the
    # step runs, since vLLM has freed their blocks already
    preempted: list[str] = field(default_factory=list)
    # finished requests whose blocks vLLM keeps (request_finished said delay_free): the worker
    # reports each in finished_sending once its dumps are done
    delayed: list[str] = field(default_factory=list)
    seq: int = 0  # this step's number (the scheduler counts build_connector_meta calls from 1)
    # the step's layer-wise loads outlast its compute (a full or nearly full hit): the worker launches
    # every layer's copies before the forward instead of a few layers ahead of the model
    upfront: bool = False

    def is_empty(self) -> bool:
        return not self.loads and not self.dumps and not self.preempted and not self.delayed


@dataclass
class UcmWorkerMetadata(KVConnectorWorkerMetadata):
    """Worker -> scheduler, every step: per TP rank, the step number up to which every dump is
    committed or dropped (no copy of those steps reads vLLM's blocks any more); and the last step
    each rank ran (its output is on its way to the scheduler)."""
    done_upto: dict[int, int] = field(default_factory=dict)
    ran: dict[int, int] = field(default_factory=dict)

    def aggregate(self, other: "KVConnectorWorkerMetadata") -> "UcmWorkerMetadata":
        merged = UcmWorkerMetadata(dict(self.done_upto), dict(self.ran))
        merged.merge_into(other)
        return merged

    def merge_into(self, other: Any) -> None:
        """Take the later step per rank from ``other`` (worker metadata, or None), in place."""
        for mine, field_name in ((self.done_upto, "done_upto"), (self.ran, "ran")):
            for rank, seq in (getattr(other, field_name, None) or {}).items():
                mine[rank] = max(mine.get(rank, 0), seq)
