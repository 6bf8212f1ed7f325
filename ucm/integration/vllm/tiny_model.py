"""Make a tiny random-weight Llama and a tokenizer trained in code, offline (no hub access).

Used by the tests in tests/vllm and by examples/demo_cpu.py. Needs transformers and tokenizers
(both come with vLLM); imports no vLLM. Deterministic for a given seed.
"""
from __future__ import annotations

import json
import os
import random

WORDS_SEED = 1234


def _word_list(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    words: set[str] = set()
    while len(words) < n:
        words.add("".join(rng.choice(letters) for _ in range(rng.randint(2, 7))))
    return sorted(words)


def corpus(num_lines: int = 2000, num_words: int = 900, seed: int = WORDS_SEED) -> list[str]:
    """Generated text the tokenizer is trained on: lines of random words."""
    rng = random.Random(seed + 1)
    words = _word_list(num_words, seed)
    return [" ".join(rng.choice(words) for _ in range(rng.randint(5, 30))) for _ in range(num_lines)]


def random_text(num_words: int, seed: int) -> str:
    """A prompt of ``num_words`` known words (one token each with the trained tokenizer)."""
    rng = random.Random(seed)
    words = _word_list(900, WORDS_SEED)
    return " ".join(rng.choice(words) for _ in range(num_words))


def make_tokenizer(out: str, seed: int = WORDS_SEED):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=["<unk>", "<s>", "</s>", "<pad>"], min_frequency=1)
    tok.train_from_iterator(corpus(seed=seed), trainer=trainer)
    from tokenizers import decoders
    tok.decoder = decoders.WordPiece(prefix="##")  # joins word tokens with spaces
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", pad_token="<pad>", model_max_length=8192)
    fast.save_pretrained(out)
    return fast


def make_tiny_model(out: str, *, num_layers: int = 2, hidden_size: int = 128, num_heads: int = 4,
                    num_kv_heads: int = 2, head_dim: int = 32, intermediate_size: int = 256,
                    dtype: str = "float32", initializer_range: float = 0.1, seed: int = 0) -> str:
    """Write a random-weight LlamaForCausalLM + trained tokenizer into ``out``; returns ``out``.

    Skips the work when ``out`` already holds a model made with the same arguments.
    """
    args = dict(num_layers=num_layers, hidden_size=hidden_size, num_heads=num_heads,
                num_kv_heads=num_kv_heads, head_dim=head_dim, intermediate_size=intermediate_size,
                dtype=dtype, initializer_range=initializer_range, seed=seed)
    stamp = os.path.join(out, "ucm_tiny_model.json")
    if os.path.exists(stamp):
        with open(stamp) as f:
            if json.load(f) == args:
                return out
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    os.makedirs(out, exist_ok=True)
    tok = make_tokenizer(out)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
        head_dim=head_dim, max_position_embeddings=8192, initializer_range=initializer_range,
        rms_norm_eps=1e-6, tie_word_embeddings=False, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).to(getattr(torch, dtype))
    model.config.architectures = ["LlamaForCausalLM"]
    model.save_pretrained(out)
    with open(stamp, "w") as f:
        json.dump(args, f)
    return out
