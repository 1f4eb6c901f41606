"""A tiny tokenizer + model for the CPU pipeline and the tests.

The tokenizer is a byte-level BPE trained on a corpus with the ``tokenizers``
library (digits split one per token, as Qwen and Llama 3 do; exact round trip of
any text), the control tags added through :func:`parallel_reason.tokens.add_control_tokens`
exactly as they would be added to a real model's tokenizer. The model is a small
Qwen2 (or Llama) config. Both are saved with ``save_pretrained`` so every later
stage loads them from a local directory like any hub model.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

EOS = "<|endoftext|>"
PAD = "<|pad|>"


def build_tokenizer(corpus: Iterable[str], vocab_size: int = 512, split_digits: bool = True):
    """Train a byte-level BPE tokenizer on ``corpus`` and wrap it as a
    ``PreTrainedTokenizerFast`` with eos and pad tokens (no control tags yet).

    ``split_digits``: one token per digit (Qwen/Llama 3 style). False keeps a run of
    digits together, so frequent numbers become single tokens (BPE merges them like
    words; rare ones are split into pieces)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=split_digits),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS, pad_token=PAD, clean_up_tokenization_spaces=False
    )


def build_model(
    vocab_size: int,
    arch: str = "qwen2",
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate_size: int = 128,
    max_positions: int = 4096,
    tie_word_embeddings: bool = False,
    seed: int = 0,
    attn_implementation: str = "sdpa",
):
    """A randomly initialised small causal LM (Qwen2 or Llama architecture)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    cls = {"qwen2": Qwen2Config, "llama": LlamaConfig}[arch]
    cfg = cls(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=tie_word_embeddings,
        rope_theta=10000.0,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation=attn_implementation)
    return model


def build_tiny(
    corpus: Iterable[str],
    out_dir: str | Path | None = None,
    vocab_size: int = 512,
    seed: int = 0,
    split_digits: bool = True,
    **model_kwargs,
):
    """Tokenizer (with control tokens) + tiny model; saved to ``out_dir`` if given.
    Returns ``(tokenizer, model)``."""
    from .tokens import add_control_tokens

    tokenizer = build_tokenizer(corpus, vocab_size=vocab_size, split_digits=split_digits)
    model = build_model(len(tokenizer), seed=seed, **model_kwargs)
    add_control_tokens(tokenizer, model)
    model.config.eos_token_id = tokenizer.eos_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.bos_token_id = None
    if model.generation_config is not None:
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.bos_token_id = None
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
    return tokenizer, model
