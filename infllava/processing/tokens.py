"""Prompt text -> token ids, each "<image>" expanded to the run of image-token ids the model fills.

The ids are the tokenizer's own tokenization of the prompt: "<image>" is a special token of the tokenizer
with id `image_token_id` (`ensure_image_token` adds it), so tokenizing the prompt and repeating each image
id `num_image_tokens` times equals tokenizing the text with every "<image>" written out that many times,
which is what engines that tokenize whole prompts (vLLM, transformers' processors) do. A text a template
rendered carries its special tokens itself and is tokenized with `add_special_tokens=False`, as
transformers tokenizes chat templates; for the official `llama3` template and a LLaMA-3 tokenizer that
adds a BOS this is byte-exact with the official `tokenizer_image_token` (two BOS tokens: the template
starts with the tokenizer's BOS, then its own `<|begin_of_text|>`; `templates.ChatTemplate.tokenizer_prefix`).
"""

from __future__ import annotations

from typing import Any

from ..templates import IMAGE_TOKEN

RESERVED_TOKEN = "<|infllava_reserved_{}|>"


def ensure_image_token(tokenizer: Any, image_token_id: int, image_token: str = IMAGE_TOKEN) -> None:
    """Make `image_token` a special token of `tokenizer` with id `image_token_id` (idempotent).

    A tokenizer shorter than `image_token_id` is first filled with reserved special tokens
    (`<|infllava_reserved_N|>`, never produced from text), as LMs pad their vocabulary. ValueError when the
    tokenizer already gives the token another id or already uses the id for another token.
    """
    from tokenizers import AddedToken

    image_token_id = int(image_token_id)
    have = tokenizer.convert_tokens_to_ids(image_token)
    if have == image_token_id and tokenizer.convert_ids_to_tokens(image_token_id) == image_token:
        return
    if image_token in tokenizer.get_vocab():
        raise ValueError(f"the tokenizer's {image_token} has id {have}, but the model's image_token_id is {image_token_id}")
    n = len(tokenizer)
    if n > image_token_id:
        raise ValueError(
            f"cannot add {image_token} with id {image_token_id}: the tokenizer already has {n} tokens "
            f"(id {image_token_id} is {tokenizer.convert_ids_to_tokens(image_token_id)!r}); set the model's "
            f"image_token_id to {n} or more"
        )
    new = [RESERVED_TOKEN.format(i) for i in range(n, image_token_id)] + [image_token]
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in new], special_tokens=True)
    if tokenizer.convert_tokens_to_ids(image_token) != image_token_id:  # never expected
        raise RuntimeError(f"adding {image_token} gave id {tokenizer.convert_tokens_to_ids(image_token)}, not {image_token_id}")


def _expand(ids: list[int], image_token_id: int, num_image_tokens: int) -> list[int]:
    out: list[int] = []
    for t in ids:
        if t == image_token_id:
            out.extend([image_token_id] * num_image_tokens)
        else:
            out.append(t)
    return out


def tokenize_with_images(prompt: str, tokenizer: Any, image_token_id: int, num_image_tokens: int,
                         add_special_tokens: bool = True) -> list[int]:
    """The tokenizer's ids of `prompt`, each "<image>" expanded to `num_image_tokens` copies of
    `image_token_id`. `add_special_tokens`: False for a text a template rendered (it carries every special
    token itself), True for raw text (the tokenizer adds its BOS...). Adds the image token to the
    tokenizer if it lacks it."""
    if int(num_image_tokens) < 1:
        raise ValueError(f"num_image_tokens must be >= 1, got {num_image_tokens}")
    ensure_image_token(tokenizer, image_token_id)
    ids = [int(x) for x in tokenizer(prompt, add_special_tokens=add_special_tokens)["input_ids"]]
    return _expand(ids, int(image_token_id), int(num_image_tokens))


def tokenize_with_offsets(
    text: str, tokenizer: Any, image_token_id: int, num_image_tokens: int, add_special_tokens: bool = True
) -> tuple[list[int], list[int], list[bool]]:
    """`tokenize_with_images(text, ...)` plus, per token, the character where it starts in `text` (-1 for a
    token the tokenizer adds itself, such as a BOS; the placeholder's offset for each image token) and
    whether it is an image token. Needs a fast (Rust `tokenizers`) tokenizer; TypeError otherwise."""
    if int(num_image_tokens) < 1:
        raise ValueError(f"num_image_tokens must be >= 1, got {num_image_tokens}")
    ensure_image_token(tokenizer, image_token_id)
    try:
        enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=add_special_tokens)
        offsets = enc["offset_mapping"]
        sequence_ids = enc.sequence_ids(0)
    except (NotImplementedError, ValueError, AttributeError, TypeError, KeyError) as exc:
        raise TypeError(
            f"labels need character offsets, which only a fast (Rust `tokenizers`) tokenizer gives; "
            f"{type(tokenizer).__name__} failed with: {exc}"
        ) from exc
    ids_in = [int(x) for x in enc["input_ids"]]
    if len(offsets) != len(ids_in) or len(sequence_ids) != len(ids_in):
        raise TypeError(f"{type(tokenizer).__name__} returned offsets that do not match its tokens")
    ids: list[int] = []
    starts: list[int] = []
    is_image: list[bool] = []
    n, image = int(num_image_tokens), int(image_token_id)
    for tid, off, seq in zip(ids_in, offsets, sequence_ids):
        start = -1 if seq is None else int(off[0])
        if tid == image:
            ids.extend([image] * n)
            starts.extend([start] * n)
            is_image.extend([True] * n)
        else:
            ids.append(tid)
            starts.append(start)
            is_image.append(False)
    return ids, starts, is_image
