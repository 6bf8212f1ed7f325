"""The connector's ``kv_connector_extra_config``, parsed and checked at start.

Two forms:

- the seed's: ``{"ucm_connector_name": "UcmDramStore", "ucm_connector_config":
  {"max_cache_size": 5368709120, "kv_block_size": 262144}}``; ``ucm_connector_name`` may also
  name a chain (``dram_disk``, ``hbm_dram_disk``) with its keys (e.g. ``disk: {path, max_size}``);
- a Hydra config: ``{"ucm_config": "hbm_dram_disk", "ucm_overrides": ["eviction=arc", ...]}``,
  composed by ``ucm.config.load_config`` exactly as the experiment configs are.

``kv_block_size`` may be omitted (derived from the model). When given it must be either the
seed's unit, one layer's K or V of one block (block_size x head_size x num_kv_heads x
element_size), or the whole block ucm stores (all layers, K and V, one rank); anything else
fails at start, naming both right values. The store is always built with the whole-block size.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Optional

KNOWN_KEYS = ("ucm_connector_name", "ucm_connector_config", "ucm_config", "ucm_overrides",
              "ucm_load_failure_policy", "ucm_load_mode", "ucm_cross_layer", "ucm_layerwise_step_tokens",
              "ucm_layerwise_step_load_blocks", "ucm_layerwise_in_turn_tokens", "ucm_layerwise_prefetch",
              "ucm_layerwise_upfront_blocks")
#: "layerwise": hits pinned in the store's memory tier load during the request's own step, layer
#: by layer ahead of its attention; other hits (disk) load between steps. "async": every hit
#: loads between steps (the request waits, others compute).
LOAD_MODES = ("layerwise", "async")


@dataclass
class ConnectorSettings:
    store_name: str = "UcmDramStore"
    store_config: dict = field(default_factory=dict)
    hydra_config: Optional[str] = None  # conf/store/<name>.yaml choice
    hydra_overrides: list = field(default_factory=list)
    load_failure_policy: str = "recompute"
    load_mode: str = "layerwise"
    #: ask vLLM for its cross-layer KV layout (V1 model runner only): a block's layers are one
    #: contiguous row, stored and moved whole; loads then run between steps (no layer-wise loads)
    cross_layer: bool = False
    #: layer-wise mode: a step takes one more request with a DRAM hit only while the hit requests it
    #: already took compute fewer new tokens than this (0: no limit, vLLM's own batching). A step
    #: that long keeps the GPU busy, so a second hit in it only delays the first one's first token,
    #: and the second finishes no sooner in the next step: the hits are served in turn, which lowers
    #: the mean TTFT (vLLM's native offload serves them in turn too). Short steps split this way need
    #: ``layerwise_in_turn_tokens``: with vLLM's async scheduling a step's output is read only once the
    #: next step is launched. Measured on an H200 (7B, thirteenth session of 2026-11-28, one session):
    #: 512 with the wait against 3072 without it, 4k x 2 at 80 % 41 against 52 ms, 8k x 4 139 against
    #: 161; c = 1 unchanged.
    layerwise_step_tokens: int = 512
    #: layer-wise mode: once the layer-wise hits a step took load this many blocks, a further hit
    #: waits for the next step, so a step of c large 100 % hits does not hold every first token until
    #: all c have loaded: each gets a step of its own, its copies queued behind the last one's (vLLM's
    #: native offload serves such requests in turn too, and wins on the mean TTFT of c = 2 cells by it,
    #: 2026-11-28). 0: off. Measured once on an H200 (twelfth session, 16k x 2, 100 %, budget 800):
    #: worse, both first tokens at 107 ms against 76 without (vLLM's async scheduling launched the
    #: second step before reading the first's token). Since 2026-11-29 (twenty-second session) a step
    #: that fills this budget is waited for as ``layerwise_in_turn_tokens`` says, as one that fills the
    #: token budget; not yet measured on a GPU (``--ucm-ab step_load_blocks=500``: one 16k hit a step).
    layerwise_step_load_blocks: int = 0
    #: layer-wise mode: a hit that ``layerwise_step_tokens`` (or ``layerwise_step_load_blocks``) leaves for
    #: a later step also waits until the tokens of the step that filled the budget are back, if that step
    #: computes at most this many new tokens (0: off). With vLLM's async scheduling the next step is
    #: otherwise launched before those tokens are read, and a launch taking the CPU longer than the step's
    #: rest on the GPU delays them (8k x 2, 80 %, budget 1024 without the wait, on an H200: the first
    #: token at 87 ms, alone ~51; with it, budget 512: 59 ms). A longer step hides the next launch behind its GPU time, and
    #: waiting for it would only add that launch (16k: ~3,200 new tokens a request at 80 %).
    layerwise_in_turn_tokens: int = 2048
    #: layer-wise mode: a load-bound hit (it loads at least ``scheduler.UPFRONT_RATIO`` tokens per token
    #: it computes, e.g. a 100 % hit) starts its copies when vLLM allocates its blocks, where the
    #: scheduler shares the worker's thread (TP = 1), instead of in ``start_load_kv`` after vLLM has
    #: prepared the step's inputs (10 ms at 16k x 4 on an H200, 2026-11-28, with the link idle). Off by
    #: default until measured on a GPU.
    layerwise_prefetch: bool = False
    #: layer-wise mode: a step whose layer-wise hits load at most this many blocks in all launches them
    #: before the forward, as a load-bound step does (one staged call: 2 DMA commands and 2 events for
    #: a 4k-token 80 % hit instead of 11 and 11, one a group of layers; ``bench/hook_cpu.py``). Where
    #: the forward's launch is CPU-bound (4k tokens on an H200 host) the copies finish before the GPU
    #: reaches layer 0 and the CPU launches less. 0: off, until measured on a GPU (``--ucm-ab``).
    layerwise_upfront_blocks: int = 0


def _count(extra: dict, key: str, default: int, zero: str = "off") -> int:
    """``extra[key]``, an integer >= 0 (``zero`` says what 0 means), or ``default`` if absent."""
    value = extra.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"ucm: {key} must be an integer >= 0 (0: {zero}), got {value!r}")
    return value


def parse_extra_config(extra: Optional[dict]) -> ConnectorSettings:
    extra = dict(extra or {})
    ucm_keys = {k: v for k, v in extra.items() if k.startswith("ucm_")}
    unknown = [k for k in ucm_keys if k not in KNOWN_KEYS]
    if unknown:
        raise ValueError(f"ucm: unknown kv_connector_extra_config keys {unknown}; allowed: {list(KNOWN_KEYS)}")
    s = ConnectorSettings()
    if "ucm_config" in extra:
        if "ucm_connector_name" in extra or "ucm_connector_config" in extra:
            raise ValueError("ucm: give either ucm_config (+ ucm_overrides) or ucm_connector_name "
                             "(+ ucm_connector_config), not both")
        s.hydra_config = str(extra["ucm_config"])
        overrides = extra.get("ucm_overrides", [])
        if isinstance(overrides, str) or not isinstance(overrides, (list, tuple)):
            raise ValueError(f"ucm: ucm_overrides must be a list of Hydra overrides, got {overrides!r}")
        s.hydra_overrides = [str(o) for o in overrides]
    else:
        if "ucm_overrides" in extra:
            raise ValueError("ucm: ucm_overrides needs ucm_config (the Hydra store choice)")
        s.store_name = str(extra.get("ucm_connector_name", "UcmDramStore"))
        cfg = extra.get("ucm_connector_config", {})
        if not isinstance(cfg, dict):
            raise ValueError(f"ucm: ucm_connector_config must be a mapping, got {cfg!r}")
        s.store_config = copy.deepcopy(cfg)
    policy = extra.get("ucm_load_failure_policy", "recompute")
    if policy not in ("recompute", "fail"):
        raise ValueError(f"ucm: ucm_load_failure_policy must be 'recompute' or 'fail', got {policy!r}")
    s.load_failure_policy = policy
    mode = extra.get("ucm_load_mode", "layerwise")
    if mode not in LOAD_MODES:
        raise ValueError(f"ucm: ucm_load_mode must be one of {list(LOAD_MODES)}, got {mode!r}")
    s.load_mode = mode
    cross = extra.get("ucm_cross_layer", False)
    if not isinstance(cross, bool):
        raise ValueError(f"ucm: ucm_cross_layer must be true or false, got {cross!r}")
    s.cross_layer = cross
    s.layerwise_step_tokens = _count(extra, "ucm_layerwise_step_tokens", s.layerwise_step_tokens, "no limit")
    s.layerwise_step_load_blocks = _count(extra, "ucm_layerwise_step_load_blocks", s.layerwise_step_load_blocks)
    s.layerwise_in_turn_tokens = _count(extra, "ucm_layerwise_in_turn_tokens", s.layerwise_in_turn_tokens)
    s.layerwise_upfront_blocks = _count(extra, "ucm_layerwise_upfront_blocks", s.layerwise_upfront_blocks)
    prefetch = extra.get("ucm_layerwise_prefetch", False)
    if not isinstance(prefetch, bool):
        raise ValueError(f"ucm: ucm_layerwise_prefetch must be true or false, got {prefetch!r}")
    s.layerwise_prefetch = prefetch
    return s


def resolve_block_size(given: Any, piece_bytes: int, whole_bytes: int) -> int:
    """The whole-block size the store is built with; ``given`` is the user's kv_block_size or None."""
    if given is None or given == 0:
        return whole_bytes
    if isinstance(given, bool) or not isinstance(given, int):
        raise ValueError(f"ucm: kv_block_size must be an integer number of bytes, got {given!r}")
    if given in (piece_bytes, whole_bytes):
        return whole_bytes
    raise ValueError(
        f"ucm: kv_block_size={given} does not match this model: use {piece_bytes} (one layer's K or V "
        f"of one block: block_size x head_size x num_kv_heads x element_size) or {whole_bytes} (the "
        f"whole block: all layers, K and V, one rank), or omit it")


def build_store(s: ConnectorSettings, whole_block_bytes: int, num_layers: int = 1):
    """Build the configured store with ``kv_block_size`` = the whole-block size and, unless the user
    chose otherwise, one pool plane per layer (a layer of many blocks is then contiguous in DRAM)."""
    if s.hydra_config is not None:
        from ucm.config import build_store as build_from_cfg, load_config

        given = _hydra_block_size(s)
        overrides = [o for o in s.hydra_overrides if not o.lstrip("+~").startswith("store.kv_block_size=")]
        overrides.append(f"store.kv_block_size={whole_block_bytes}")
        if not any(o.lstrip("+~").startswith("store.planes=") for o in overrides):
            overrides.append(f"store.planes={num_layers}")
        cfg = load_config(overrides, store=s.hydra_config)
        return build_from_cfg(cfg), given
    from ucm.tiers import create_store

    cfg = copy.deepcopy(s.store_config)
    given = cfg.pop("kv_block_size", None)
    cfg["kv_block_size"] = whole_block_bytes
    cfg.setdefault("planes", num_layers)
    return create_store(s.store_name, cfg), given


def _hydra_block_size(s: ConnectorSettings) -> Optional[int]:
    for o in s.hydra_overrides:
        key, _, value = o.lstrip("+~").partition("=")
        if key in ("store.kv_block_size", "kv_block_size"):
            try:
                return int(value)
            except ValueError:
                raise ValueError(f"ucm: kv_block_size override must be an integer, got {value!r}") from None
    return None


def given_block_size(s: ConnectorSettings) -> Optional[int]:
    """The user's kv_block_size, if any (to validate before building anything)."""
    if s.hydra_config is not None:
        return _hydra_block_size(s)
    return s.store_config.get("kv_block_size")
