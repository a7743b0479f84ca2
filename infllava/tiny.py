"""A tiny, random-weight INF-LLaVA with a real (byte-level) tokenizer: for tests and `make demo`
until a trained small model ships. Its answers are noise: the weights are random.
"""

from __future__ import annotations

from pathlib import Path

import torch

TINY_SPECIAL_TOKENS = [
    "<pad>",
    "<s>",
    "</s>",
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
]


def make_tiny_tokenizer(add_bos: bool = True, bos_token: str = "<s>", pad: bool = True):
    """A tiny `PreTrainedTokenizerFast`: byte-level BPE without merges (one token per byte, so any
    text round-trips), the LLaMA-3 special tokens, and a post-processor adding a BOS as LLaMA
    tokenizers do. Ids match `tiny_config` (pad 0, bos 1, eos 2; 263 tokens < vocab 300).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(TINY_SPECIAL_TOKENS)}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(TINY_SPECIAL_TOKENS)
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos_token} $A",
            pair=f"{bos_token} $A {bos_token} $B",
            special_tokens=[(bos_token, vocab[bos_token])],
        )
    kwargs = dict(bos_token=bos_token, eos_token="</s>")
    if pad:
        kwargs["pad_token"] = "<pad>"
    return PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs)


def build_tiny_model(dst: str | Path, seed: int = 0, **config_overrides) -> Path:
    """Write a random tiny model + processor to `dst` (loadable with `infllava.load`)."""
    from .config import tiny_config
    from .model import InfLlavaForConditionalGeneration
    from .processing import InfLlavaProcessor

    dst = Path(dst)
    torch.manual_seed(seed)
    config = tiny_config(**config_overrides)
    model = InfLlavaForConditionalGeneration(config)
    model.generation_config.eos_token_id = [2, 6]  # "</s>", "<|eot_id|>"
    model.save_pretrained(dst)
    InfLlavaProcessor.from_config(config, make_tiny_tokenizer()).save_pretrained(dst)
    return dst
