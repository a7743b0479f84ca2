"""One LLaVA-format conversation -> (input_ids, labels) for supervised fine-tuning.

A record (LLaVA's data format)::

    {"id": "000123", "image": "coco/train2017/000000123.jpg",      # optional; or a list of paths
     "conversations": [{"from": "human", "value": "<image>\\nWhat is shown?"},
                       {"from": "gpt", "value": "A cat."}, ...]}

Steps:

1. `infllava.data.records.to_messages`: roles "human"/"gpt" (or "user"/"assistant") -> alternating
   user/assistant messages, with the checks a training run needs (alternation, empty answers,
   placeholders vs images); the data layer, shared with evaluation.
2. `encode_conversation`: render the conversation with the *same* code inference uses
   (`processing.build_prompt` + `processing.tokenize_with_images`), so training and inference
   token sequences cannot drift apart, and mark the supervised characters (each assistant answer
   plus its end-of-turn marker). A token is supervised iff the character where it starts lies in a
   supervised span; the character offsets come from `tokenize_with_offsets`, which yields exactly
   the ids of `tokenize_with_images` plus where each token starts.
3. Problems raise `SampleError` with a machine-usable `.kind`; nothing is silently cut or masked:
   an answer that does not fit `max_length` is an error ("truncated"), and a sample in which no
   token ends up supervised is an error ("empty").
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..data.records import SampleError, check_alternation, record_image_paths, to_messages
from ..processing import (
    IMAGE_PLACEHOLDER,
    LLAMA3_ASSISTANT,
    LLAMA3_SEP,
    LLAMA3_SYSTEM,
    LLAMA3_USER,
    TEMPLATES,
    build_prompt,
    require_chat_template,
)

__all__ = [
    "IGNORE_INDEX",
    "EncodedSample",
    "tokenize_with_offsets",
    "supervised_spans",
    "encode_conversation",
    "encode_record",
]

#: Label value of positions that are not supervised (PyTorch's cross-entropy ignore_index).
IGNORE_INDEX = -100

@dataclass
class EncodedSample:
    """Token ids and labels of one record, with the image paths (as written in the record)."""

    input_ids: list[int]
    labels: list[int]
    image_paths: list[str] = field(default_factory=list)
    id: Any = None

    @property
    def num_supervised(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE_INDEX)


# --------------------------------------------------------------------------------------------
# Tokenization with character offsets
# --------------------------------------------------------------------------------------------


def _tokenize(
    text: str, tokenizer: Any, image_token_id: int, num_image_tokens: int
) -> tuple[list[int], list[int], list[bool]]:
    """ids, start offsets and an is-image mask; the ids follow `processing.tokenize_with_images`."""
    if int(num_image_tokens) < 1:
        raise ValueError(f"num_image_tokens must be >= 1, got {num_image_tokens}")
    pieces = text.split(IMAGE_PLACEHOLDER)
    chunk_ids: list[list[int]] = []
    chunk_starts: list[list[int]] = []
    placeholder_at: list[int] = []
    pos = 0
    for i, piece in enumerate(pieces):
        if i > 0:
            placeholder_at.append(pos)
            pos += len(IMAGE_PLACEHOLDER)
        ids, starts = _encode_chunk(piece, tokenizer, pos)
        chunk_ids.append(ids)
        chunk_starts.append(starts)
        pos += len(piece)

    # Same dropping rule as tokenize_with_images (LLaVA's tokenizer_image_token).
    bos = getattr(tokenizer, "bos_token_id", None)
    drop = 1 if bos is not None and chunk_ids[0] and chunk_ids[0][0] == bos else 0
    out_ids: list[int] = []
    out_starts: list[int] = []
    is_image: list[bool] = []
    if drop:
        out_ids.append(bos)
        out_starts.append(chunk_starts[0][0])
        is_image.append(False)
    n_img = int(num_image_tokens)
    for i, (ids, starts) in enumerate(zip(chunk_ids, chunk_starts)):
        if i > 0:
            out_ids.extend([int(image_token_id)] * n_img)
            out_starts.extend([placeholder_at[i - 1]] * n_img)
            is_image.extend([True] * n_img)
        out_ids.extend(ids[drop:])
        out_starts.extend(starts[drop:])
        is_image.extend([False] * len(ids[drop:]))
    return out_ids, out_starts, is_image


def _encode_chunk(piece: str, tokenizer: Any, base: int) -> tuple[list[int], list[int]]:
    try:
        enc = tokenizer(piece, return_offsets_mapping=True)
        offsets = enc["offset_mapping"]
        sequence_ids = enc.sequence_ids(0)
    except (NotImplementedError, ValueError, AttributeError, TypeError, KeyError) as exc:
        raise TypeError(
            f"labels need character offsets, which only a fast (Rust `tokenizers`) tokenizer gives; "
            f"{type(tokenizer).__name__} failed with: {exc}"
        ) from exc
    ids = [int(x) for x in enc["input_ids"]]
    if len(offsets) != len(ids) or len(sequence_ids) != len(ids):
        raise TypeError(f"{type(tokenizer).__name__} returned offsets that do not match its tokens")
    # Tokens the tokenizer adds itself (BOS, EOS ...) belong to no input sequence: no text, -1.
    starts = [-1 if seq is None else base + int(off[0]) for off, seq in zip(offsets, sequence_ids)]
    return ids, starts


def tokenize_with_offsets(
    text: str, tokenizer: Any, image_token_id: int, num_image_tokens: int
) -> tuple[list[int], list[int]]:
    """`processing.tokenize_with_images(text, ...)` plus the start character of every token.

    Returns (ids, starts): `ids` is exactly what `tokenize_with_images` gives; `starts[j]` is the
    offset in `text` where token j starts, -1 for a token with no text (one the tokenizer adds, such
    as a BOS), and the offset of the "<image>" placeholder for each of its image tokens. Needs a fast
    tokenizer (`return_offsets_mapping`); raises TypeError otherwise.
    """
    ids, starts, _ = _tokenize(text, tokenizer, image_token_id, num_image_tokens)
    return ids, starts


# --------------------------------------------------------------------------------------------
# Templates: full text + supervised character spans
# --------------------------------------------------------------------------------------------


def _llama3_spans(messages: Sequence[Mapping[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    parts = [LLAMA3_SYSTEM, LLAMA3_SEP]
    pos = len(LLAMA3_SYSTEM) + len(LLAMA3_SEP)
    spans: list[tuple[int, int]] = []
    for msg in messages:
        role = LLAMA3_USER if msg["role"] == "user" else LLAMA3_ASSISTANT
        content = msg["content"]
        piece = role + content + LLAMA3_SEP if content else role
        if msg["role"] == "assistant" and content:
            spans.append((pos + len(role), pos + len(piece)))  # answer + "<|eot_id|>"
        parts.append(piece)
        pos += len(piece)
    text = "".join(parts)
    reference = build_prompt(messages, "llama3", add_generation_prompt=False)
    if text != reference:  # the two renderings are kept in step by the tests; never expected
        raise RuntimeError("internal error: the llama3 rendering differs from processing.build_prompt")
    return text, spans


def _plain_spans(messages: Sequence[Mapping[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    if len(messages) != 2:
        raise SampleError(
            "bad_record",
            f"the 'plain' template (stage-1 captioning) takes one user turn and one answer; got "
            f"{len(messages)} turns",
        )
    n_user = messages[0]["content"].count(IMAGE_PLACEHOLDER)
    if n_user != 1 or IMAGE_PLACEHOLDER in messages[1]["content"]:
        raise SampleError(
            "bad_record",
            f"the 'plain' template needs exactly one image, in the user turn; got {n_user} "
            f"placeholder(s) in the user turn"
            + (" and one in the answer" if IMAGE_PLACEHOLDER in messages[1]["content"] else ""),
        )
    text = build_prompt(messages, "plain", add_generation_prompt=False)  # "<image>" + answer + "\n"
    return text, [(len(IMAGE_PLACEHOLDER), len(text))]


def _chat_template_spans(
    messages: Sequence[Mapping[str, str]], tokenizer: Any
) -> tuple[str, list[tuple[int, int]]]:
    def render(msgs: Sequence[Mapping[str, str]], generation_prompt: bool) -> str:
        try:
            return tokenizer.apply_chat_template(
                [dict(m) for m in msgs], tokenize=False, add_generation_prompt=generation_prompt
            )
        except Exception as exc:  # noqa: BLE001 - jinja errors of a user template are data errors here
            raise SampleError("bad_record", f"the chat template failed to render: {exc}") from exc

    try:
        text = build_prompt(messages, "chat_template", tokenizer, add_generation_prompt=False)
    except ValueError as exc:
        if isinstance(exc, SampleError):
            raise
        raise SampleError("bad_record", str(exc)) from exc
    except Exception as exc:  # noqa: BLE001
        raise SampleError("bad_record", f"the chat template failed to render: {exc}") from exc
    spans: list[tuple[int, int]] = []
    for k, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        before = render(messages[:k], True)
        upto = render(messages[: k + 1], False)
        if not (text.startswith(upto) and upto.startswith(before)):
            raise SampleError(
                "bad_record",
                f"the chat template is not prefix-stable: rendering the first {k} / {k + 1} messages "
                f"is not a prefix of rendering the whole conversation, so the answer of turn {k} "
                f"cannot be located (use template 'llama3', or a template whose rendering only appends)",
            )
        end = len(upto.rstrip())
        if end > len(before):
            spans.append((len(before), end))
    return text, spans


def supervised_spans(
    messages: Sequence[Mapping[str, str]], template: str, tokenizer: Any = None
) -> tuple[str, list[tuple[int, int]]]:
    """(full text, [(start, end) character spans that are supervised]) of a complete conversation.

    "llama3": each answer + "<|eot_id|>"; "plain": caption + "\\n"; "chat_template": the part the
    answer adds to the rendering after the generation prompt, trailing whitespace stripped.
    """
    check_alternation(messages)
    if template == "llama3":
        return _llama3_spans(messages)
    if template == "plain":
        return _plain_spans(messages)
    if template == "chat_template":
        require_chat_template(tokenizer)
        return _chat_template_spans(messages, tokenizer)
    raise ValueError(f"template must be one of {TEMPLATES}, got {template!r}")


# --------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------


def encode_conversation(
    messages: Sequence[Mapping[str, str]],
    tokenizer: Any,
    template: str,
    image_token_id: int,
    num_image_tokens: int,
    max_length: int | None,
) -> tuple[list[int], list[int]]:
    """Messages -> (input_ids, labels), labels IGNORE_INDEX (-100) where not supervised.

    The text is the template's rendering of the whole conversation (see `supervised_spans`),
    tokenized as `processing.tokenize_with_images` does at inference. Supervised tokens: those whose
    start character lies in a supervised span; image tokens and tokens the tokenizer adds (BOS,
    EOS) are never supervised.

    Raises SampleError: "not_alternating"; "bad_record" (plain template with several turns or not
    exactly one image; chat template not prefix-stable); "empty" (no supervised token: template /
    tokenizer mismatch); "truncated" (a supervised or image token at or beyond `max_length`).
    The sequence is capped at `max_length` (None: no limit).
    """
    text, spans = supervised_spans(messages, template, tokenizer)
    ids, starts, is_image = _tokenize(text, tokenizer, image_token_id, num_image_tokens)
    span_starts = [a for a, _ in spans]
    labels = [IGNORE_INDEX] * len(ids)
    last_supervised = -1
    for j, (tid, start, image) in enumerate(zip(ids, starts, is_image)):
        if image or start < 0:
            continue
        k = bisect.bisect_right(span_starts, start) - 1
        if k >= 0 and start < spans[k][1]:
            labels[j] = tid
            last_supervised = j
    if last_supervised < 0:
        raise SampleError(
            "empty",
            f"no token is supervised ({len(ids)} tokens, {len(spans)} answer span(s)): the template "
            f"{template!r} and the tokenizer do not fit this sample",
        )
    if max_length is not None:
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1 or None, got {max_length}")
        if last_supervised >= max_length:
            raise SampleError(
                "truncated",
                f"the sample is {len(ids)} tokens and its answer runs to token {last_supervised + 1}, "
                f"beyond max_length={max_length}",
            )
        last_image = max((j for j, image in enumerate(is_image) if image), default=-1)
        if last_image >= max_length:
            raise SampleError(
                "truncated",
                f"the sample is {len(ids)} tokens and its image tokens run to token {last_image + 1}, "
                f"beyond max_length={max_length}",
            )
        ids, labels = ids[:max_length], labels[:max_length]
    return ids, labels


def encode_record(
    record: Mapping[str, Any],
    tokenizer: Any,
    template: str,
    image_token_id: int,
    num_image_tokens: int,
    max_length: int | None,
) -> EncodedSample:
    """`to_messages` + `encode_conversation`; the image paths are returned as written in the record."""
    messages = to_messages(record)
    input_ids, labels = encode_conversation(
        messages, tokenizer, template, image_token_id, num_image_tokens, max_length
    )
    return EncodedSample(input_ids, labels, record_image_paths(record), record.get("id"))
