"""ucm: a multi-tier KV-cache manager for vLLM (HBM -> pinned DRAM -> disk).

Layers (imports point down only): ``ucm.policies`` (pure Python) <- ``ucm.tiers`` <-
``ucm.config`` (Hydra) <- {``ucm.integration.vllm``, ``ucm.sim``}.
"""
__version__ = "0.1.0"
