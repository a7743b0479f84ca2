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

import re
from collections.abc import Sequence
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


def _encode(text: str, tokenizer: Any, image_token_id: int, add_special_tokens: bool,
            literal_spans: Sequence[tuple[int, int]] | None, offsets_needed: bool):
    """(ids, starts or None) of `text` before the image runs are expanded; inside `literal_spans` (the text
    that came from messages) a special token other than "<image>" is re-tokenized as plain text."""
    if not (offsets_needed or literal_spans):
        return [int(x) for x in tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]], None
    try:
        enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=add_special_tokens)
        offsets = enc["offset_mapping"]
        sequence_ids = enc.sequence_ids(0)
    except (NotImplementedError, ValueError, AttributeError, TypeError, KeyError) as exc:
        raise TypeError(
            f"character offsets are needed (training labels, protecting message text from control tokens), "
            f"which only a fast (Rust `tokenizers`) tokenizer gives; {type(tokenizer).__name__} failed with: {exc}"
        ) from exc
    ids = [int(x) for x in enc["input_ids"]]
    if len(offsets) != len(ids) or len(sequence_ids) != len(ids):
        raise TypeError(f"{type(tokenizer).__name__} returned offsets that do not match its tokens")
    starts = [-1 if seq is None else int(off[0]) for off, seq in zip(offsets, sequence_ids)]
    if literal_spans:
        ids, starts = _literal(text, tokenizer, image_token_id, ids, starts, literal_spans)
    return ids, starts


def _literal(text, tokenizer, image_token_id, ids, starts, spans):
    """Re-tokenize as plain text every span that holds a special token the text spelled out."""
    control = {int(i) for i, t in tokenizer.added_tokens_decoder.items() if t.special} - {int(image_token_id)}
    for a, b in sorted(spans, reverse=True):  # right to left: earlier indices stay valid
        inside = [k for k, st in enumerate(starts) if a <= st < b]
        if not inside or not any(ids[k] in control for k in inside):
            continue
        new_ids, new_starts = [], []
        pos = a
        for piece in re.split(f"({re.escape(IMAGE_TOKEN)})", text[a:b]):
            if piece == IMAGE_TOKEN:
                new_ids.append(int(image_token_id))
                new_starts.append(pos)
            elif piece:
                enc = tokenizer(piece, add_special_tokens=False, split_special_tokens=True,
                                return_offsets_mapping=True)
                new_ids += [int(x) for x in enc["input_ids"]]
                new_starts += [pos + int(o[0]) for o in enc["offset_mapping"]]
            pos += len(piece)
        ids = ids[: inside[0]] + new_ids + ids[inside[-1] + 1:]
        starts = starts[: inside[0]] + new_starts + starts[inside[-1] + 1:]
    return ids, starts


def tokenize_with_images(prompt: str, tokenizer: Any, image_token_id: int, num_image_tokens: int,
                         add_special_tokens: bool = True,
                         literal_spans: Sequence[tuple[int, int]] | None = None) -> list[int]:
    """The tokenizer's ids of `prompt`, each "<image>" expanded to `num_image_tokens` copies of
    `image_token_id`. `add_special_tokens`: False for a text a template rendered (it carries every special
    token itself), True for raw text (the tokenizer adds its BOS...). `literal_spans`: character spans of
    text that came from messages (`templates.render_with_content_spans`): a special token spelled out there
    ("<|im_end|>", "<|eot_id|>"...) stays plain text, never a control token. Adds the image token to the
    tokenizer if it lacks it."""
    if int(num_image_tokens) < 1:
        raise ValueError(f"num_image_tokens must be >= 1, got {num_image_tokens}")
    ensure_image_token(tokenizer, image_token_id)
    ids, _ = _encode(prompt, tokenizer, int(image_token_id), add_special_tokens, literal_spans, False)
    return _expand(ids, int(image_token_id), int(num_image_tokens))


def tokenize_with_offsets(
    text: str, tokenizer: Any, image_token_id: int, num_image_tokens: int, add_special_tokens: bool = True,
    literal_spans: Sequence[tuple[int, int]] | None = None,
) -> tuple[list[int], list[int], list[bool]]:
    """`tokenize_with_images(text, ...)` plus, per token, the character where it starts in `text` (-1 for a
    token the tokenizer adds itself, such as a BOS; the placeholder's offset for each image token) and
    whether it is an image token. Needs a fast (Rust `tokenizers`) tokenizer; TypeError otherwise."""
    if int(num_image_tokens) < 1:
        raise ValueError(f"num_image_tokens must be >= 1, got {num_image_tokens}")
    ensure_image_token(tokenizer, image_token_id)
    ids_in, starts_in = _encode(text, tokenizer, int(image_token_id), add_special_tokens, literal_spans, True)
    ids: list[int] = []
    starts: list[int] = []
    is_image: list[bool] = []
    n, image = int(num_image_tokens), int(image_token_id)
    for tid, start in zip(ids_in, starts_in):
        if tid == image:
            ids.extend([image] * n)
            starts.extend([start] * n)
            is_image.extend([True] * n)
        else:
            ids.append(tid)
            starts.append(start)
            is_image.append(False)
    return ids, starts, is_image
