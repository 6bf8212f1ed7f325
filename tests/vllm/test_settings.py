"""The connector's extra config: both forms, kv_block_size rules, errors that name the fix."""
from __future__ import annotations

import pytest

from ucm.integration.vllm import settings

PIECE, WHOLE = 8192, 32768


def test_seed_form_defaults():
    s = settings.parse_extra_config({"ucm_connector_name": "UcmDramStore",
                                     "ucm_connector_config": {"max_cache_size": 5368709120, "kv_block_size": 262144}})
    assert s.store_name == "UcmDramStore" and s.store_config["max_cache_size"] == 5368709120
    assert s.hydra_config is None and s.load_failure_policy == "recompute" and s.load_mode == "layerwise"
    assert s.cross_layer is False and settings.parse_extra_config({"ucm_cross_layer": True}).cross_layer
    assert s.layerwise_step_tokens == 512 and s.layerwise_in_turn_tokens == 2048
    assert settings.parse_extra_config({"ucm_layerwise_step_tokens": 0}).layerwise_step_tokens == 0
    assert s.layerwise_step_load_blocks == 0
    assert settings.parse_extra_config({"ucm_layerwise_step_load_blocks": 1000}).layerwise_step_load_blocks == 1000
    assert settings.given_block_size(s) == 262144
    assert s.layerwise_prefetch is False
    assert settings.parse_extra_config({"ucm_layerwise_prefetch": True}).layerwise_prefetch is True
    assert s.layerwise_upfront_blocks == 0
    assert settings.parse_extra_config({"ucm_layerwise_upfront_blocks": 256}).layerwise_upfront_blocks == 256


def test_hydra_form():
    s = settings.parse_extra_config({"ucm_config": "hbm_dram_disk", "ucm_overrides": ["eviction=arc",
                                                                                       "store.kv_block_size=8192"]})
    assert s.hydra_config == "hbm_dram_disk" and s.hydra_overrides[0] == "eviction=arc"
    assert settings.given_block_size(s) == 8192


@pytest.mark.parametrize("extra, words", [
    ({"ucm_bogus": 1}, "ucm_bogus"),
    ({"ucm_config": "dram", "ucm_connector_name": "UcmDramStore"}, "not both"),
    ({"ucm_overrides": ["eviction=arc"]}, "needs ucm_config"),
    ({"ucm_config": "dram", "ucm_overrides": "eviction=arc"}, "list"),
    ({"ucm_connector_config": 5}, "mapping"),
    ({"ucm_load_failure_policy": "retry"}, "recompute"),
    ({"ucm_load_mode": "sync"}, "ucm_load_mode must be one of"),
    ({"ucm_cross_layer": "yes"}, "ucm_cross_layer must be true or false"),
    ({"ucm_layerwise_step_tokens": -1}, "ucm_layerwise_step_tokens must be an integer >= 0"),
    ({"ucm_layerwise_step_tokens": "1k"}, "ucm_layerwise_step_tokens must be an integer >= 0"),
    ({"ucm_layerwise_step_load_blocks": -5}, "ucm_layerwise_step_load_blocks must be an integer >= 0"),
    ({"ucm_layerwise_step_load_blocks": True}, "ucm_layerwise_step_load_blocks must be an integer >= 0"),
    ({"ucm_layerwise_upfront_blocks": -1}, "ucm_layerwise_upfront_blocks must be an integer >= 0 \\(0: off\\)"),
    ({"ucm_layerwise_upfront_blocks": 1.5}, "ucm_layerwise_upfront_blocks must be an integer >= 0"),
    ({"ucm_layerwise_prefetch": "on"}, "ucm_layerwise_prefetch must be true or false"),
])
def test_bad_extra_config_names_the_key(extra, words):
    with pytest.raises(ValueError, match=words):
        settings.parse_extra_config(extra)


def test_block_size_accepts_piece_whole_or_none():
    assert settings.resolve_block_size(None, PIECE, WHOLE) == WHOLE
    assert settings.resolve_block_size(PIECE, PIECE, WHOLE) == WHOLE
    assert settings.resolve_block_size(WHOLE, PIECE, WHOLE) == WHOLE


@pytest.mark.parametrize("given", [262144, PIECE * 2 + 1, "8192", True])
def test_block_size_other_values_name_both_right_values(given):
    with pytest.raises(ValueError) as info:
        settings.resolve_block_size(given, PIECE, WHOLE)
    if not isinstance(given, (str, bool)):
        assert str(PIECE) in str(info.value) and str(WHOLE) in str(info.value)


def test_build_store_uses_the_whole_block_size(tmp_path):
    s = settings.parse_extra_config({"ucm_connector_name": "UcmDramStore",
                                     "ucm_connector_config": {"max_cache_size": 4 * WHOLE, "kv_block_size": PIECE}})
    store, given = settings.build_store(s, WHOLE)
    assert given == PIECE and store.block_size == WHOLE
    store.close()
    h = settings.parse_extra_config({"ucm_config": "dram_disk", "ucm_overrides": [
        f"store.max_cache_size={4 * WHOLE}", f"store.disk.path={tmp_path}", f"store.disk.max_size={8 * WHOLE}"]})
    chain, _ = settings.build_store(h, WHOLE)
    assert chain.block_size == WHOLE and [t.name for t in chain.tiers] == ["dram", "disk"]
    chain.close()


def test_keys_differ_by_model_layout_and_rank():
    from ucm.integration.vllm import keys

    ns = dict(v=1, model="m", revision="None", dtype="bfloat16", block_size=16, layers=2, page_bytes=8192,
              kv_heads=2, head_size=32, device="cuda", tp_size=1)
    roots = {keys.root_hash(dict(ns, **{k: v})) for k, v in
             [("model", "m"), ("model", "other"), ("dtype", "float16"), ("block_size", 32), ("tp_size", 2),
              ("device", "cpu"), ("page_bytes", 4096), ("layout", "cross_layer")]}
    assert len(roots) == 8
    assert keys.root_hash(dict(ns)) == keys.root_hash(dict(reversed(list(ns.items()))))  # stable, order-free
    h = b"\x01" * 32
    assert keys.KeyMaker.rank_key(h, 0) != keys.KeyMaker.rank_key(h, 1)


def test_block_hash_chain_is_a_prefix_chain_and_covers_extra_keys():
    """Block i's hash depends on every token before it (a chain), resumes where it stopped, and
    differs when vLLM's extra keys differ (here the cache salt, which goes into block 0)."""
    import types

    from ucm.integration.vllm import compat

    def req(tokens, salt=None):
        return types.SimpleNamespace(all_token_ids=tokens, mm_features=[], lora_request=None, cache_salt=salt,
                                     prompt_embeds=None)

    toks = list(range(100, 164))
    whole = compat.block_hash_chain(req(toks), 0, 4, b"root", 16)
    assert len(set(whole)) == 4
    assert compat.block_hash_chain(req(toks), 2, 4, whole[1], 16) == whole[2:]
    changed = compat.block_hash_chain(req(toks[:20] + [7] + toks[21:]), 0, 4, b"root", 16)
    assert changed[0] == whole[0] and all(a != b for a, b in zip(changed[1:], whole[1:]))
    salted = compat.block_hash_chain(req(toks, salt="tenant-a"), 0, 4, b"root", 16)
    assert all(a != b for a, b in zip(salted, whole))
    assert compat.block_hash_chain(req(toks), 0, 4, b"other root", 16)[3] != whole[3]


def test_a_prefix_seen_again_takes_its_keys_from_the_memo(monkeypatch):
    """Keys of blocks whose vLLM block hash was seen before come from the memo (no hashing), equal
    to hashing them; new blocks are hashed and remembered; the memo stays within its size; a
    request hashed by vLLM at another granularity is hashed in full."""
    import types

    from ucm.integration.vllm import compat, keys

    def req(tokens, vllm_hashes):
        return types.SimpleNamespace(all_token_ids=tokens, num_tokens=len(tokens), block_hashes=vllm_hashes,
                                     mm_features=[], lora_request=None, cache_salt=None, prompt_embeds=None)

    hashed = []
    real = compat.block_hash_chain
    monkeypatch.setattr(compat, "block_hash_chain", lambda r, a, b, *x: hashed.append(b - a) or real(r, a, b, *x))
    toks = list(range(100, 164))  # 4 blocks of 16
    km = keys.KeyMaker(b"root", 16, 1, memo_entries=6)
    first = km.hashes(keys.RequestKeys(req(toks, [b"v0", b"v1", b"v2", b"v3"])), 4)
    assert hashed == [4] and first == real(req(toks, []), 0, 4, b"root", 16)
    # the same first 3 blocks, a new 4th: 3 keys from the memo, one hashed
    other = toks[:48] + [7] * 16
    again = km.hashes(keys.RequestKeys(req(other, [b"v0", b"v1", b"v2", b"w3"])), 4)
    assert hashed == [4, 1] and again == real(req(other, []), 0, 4, b"root", 16)
    assert again[:3] == first[:3] and again[3] != first[3]
    assert len(km._memo) == 5
    km.hashes(keys.RequestKeys(req(toks, [b"x0", b"x1", b"x2", b"x3"])), 4)
    assert len(km._memo) == 6 and b"v0" not in km._memo, "oldest entries dropped first"
    # vLLM hashing 8-token blocks (a hybrid model): its hashes do not name our 16-token blocks
    assert compat.vllm_block_hashes(req(toks, [b"v0"] * 8), 16) == ()
    assert km.hashes(keys.RequestKeys(req(toks, [b"v0"] * 8)), 4) == first and hashed[-1] == 4
