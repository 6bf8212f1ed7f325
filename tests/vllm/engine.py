"""Helpers shared by the tests in tests/vllm: engines, prompts, connector configs, comparisons."""
from __future__ import annotations

import contextlib
import gc
import math
from typing import Any, Optional

from ucm.integration.vllm.tiny_model import random_text

BLOCK = 32  # vLLM block size (tokens) used everywhere here
MODULE = "ucm.integration.vllm.uc_connector"

# name -> list of prompts. Words are one token each with the tiny tokenizer.
PROMPT_SETS = {
    # 4 prompts sharing a 200-token prefix, 300 tokens each (9 full blocks + 12 tokens)
    "shared": lambda: [random_text(200, 99) + " " + random_text(100, i) for i in range(4)],
    # 3 unrelated prompts of 290 tokens
    "distinct": lambda: [random_text(290, 1000 + i) for i in range(3)],
}


def prompts(name: str) -> list[str]:
    return PROMPT_SETS[name]()


def ktc(store: str = "UcmDramStore", config: Optional[dict] = None, **extra: Any) -> dict:
    """The seed's kv_transfer_config for the ucm connector."""
    ec: dict[str, Any] = {"ucm_connector_name": store, "ucm_connector_config": dict(config or {})}
    ec.update(extra)
    return {"kv_connector": "UnifiedCacheConnectorV1", "kv_connector_module_path": MODULE,
            "kv_role": "kv_both", "kv_connector_extra_config": ec}


def ktc_hydra(choice: str, overrides: list[str]) -> dict:
    return {"kv_connector": "UnifiedCacheConnectorV1", "kv_connector_module_path": MODULE,
            "kv_role": "kv_both",
            "kv_connector_extra_config": {"ucm_config": choice, "ucm_overrides": overrides}}


@contextlib.contextmanager
def llm(model: str, kv_transfer_config: Optional[dict], **kw: Any):
    """An offline vLLM engine with prefix caching off (so hits can only come from ucm)."""
    from vllm import LLM

    args = dict(enforce_eager=True, block_size=BLOCK, max_model_len=2048, enable_prefix_caching=False,
                dtype="float32", seed=0, max_num_seqs=64)
    args.update(kw)
    engine = LLM(model, kv_transfer_config=kv_transfer_config, **args)
    try:
        yield engine
    finally:
        core = engine.llm_engine.engine_core
        if hasattr(core, "shutdown"):
            core.shutdown()
        del engine
        gc.collect()


def generate(engine: Any, texts: list[str], max_tokens: int = 8) -> list[dict]:
    from vllm import SamplingParams

    sp = SamplingParams(temperature=0.0, max_tokens=max_tokens, logprobs=1, ignore_eos=True)
    outs = engine.generate(texts, sp, use_tqdm=False)
    res = []
    for o in outs:
        c = o.outputs[0]
        lps = [lp[t].logprob for t, lp in zip(c.token_ids, c.logprobs)]
        res.append(dict(tokens=list(c.token_ids), logprobs=lps, cached=o.num_cached_tokens or 0,
                        prompt_len=len(o.prompt_token_ids), text=c.text))
    return res


def assert_same_outputs(got: list[dict], want: list[dict], atol: float = 1e-3) -> None:
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        assert g["tokens"] == w["tokens"], f"prompt {i}: tokens differ: {g['tokens']} vs {w['tokens']}"
        for j, (a, b) in enumerate(zip(g["logprobs"], w["logprobs"])):
            assert math.isclose(a, b, abs_tol=atol), f"prompt {i} token {j}: logprob {a} vs {b}"


def full_blocks(prompt_len: int) -> int:
    """Blocks a prompt can hit: full blocks, keeping >= 1 token to compute."""
    return (prompt_len - 1) // BLOCK


def live_store():
    from ucm.integration.vllm import stores

    (store,) = stores.live_stores()
    return store
