"""Scheduler -> worker plans for one step (plain dataclasses; they cross process boundaries)."""
from __future__ import annotations

from dataclasses import dataclass, field

from ucm.integration.vllm.compat import KVConnectorMetadata


@dataclass
class LoadSpec:
    """Load ``block_hashes[i]`` into vLLM block ``block_ids[i]`` before this step's forward."""
    req_id: str
    block_hashes: list[bytes]
    block_ids: list[int]


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

    def is_empty(self) -> bool:
        return not self.loads and not self.dumps
