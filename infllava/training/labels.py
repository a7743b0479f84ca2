"""One LLaVA-format conversation -> (input_ids, labels) for supervised fine-tuning.

A record (LLaVA's data format)::

    {"id": "000123", "image": "coco/train2017/000000123.jpg",      # optional; or a list of paths
     "conversations": [{"from": "human", "value": "<image>\\nWhat is shown?"},
                       {"from": "gpt", "value": "A cat."}, ...]}

Steps:

1. `infllava.data.records.to_messages`: roles "human"/"gpt" (or "user"/"assistant") -> alternating
   user/assistant messages, with the checks a training run needs (alternation, empty answers,
   placeholders vs images); the data layer, shared with evaluation.
2. `encode_conversation`: render the conversation with the template registry inference uses
   (`infllava.templates`), which also says which character spans are supervised (each assistant
   answer plus its end-of-turn marker), and tokenize it as inference does
   (`processing.tokenize_with_offsets`: the ids of `tokenize_with_images` plus where each token
   starts). A token is supervised iff the character where it starts lies in a supervised span.
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
from ..processing.tokens import tokenize_with_offsets
from ..templates import IMAGE_PLACEHOLDER, get_template, render_with_content_spans
from ..templates import supervised_spans as template_spans

__all__ = [
    "IGNORE_INDEX",
    "EncodedSample",
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


def supervised_spans(
    messages: Sequence[Mapping[str, str]], template: str, tokenizer: Any = None
) -> tuple[str, list[tuple[int, int]]]:
    """(full text, supervised character spans) of a complete conversation (`templates.supervised_spans`),
    with a template that cannot render the sample (several turns for "plain", a chat template that is
    not prefix-stable or fails) reported as SampleError("bad_record")."""
    check_alternation(messages)
    entry = get_template(template)
    if entry.max_messages is not None and len(messages) > entry.max_messages:
        raise SampleError("bad_record", f"the {template!r} template takes at most {entry.max_messages} turns "
                                        f"({entry.description}); got {len(messages)}")
    if entry.images_per_sample is not None:
        in_user = messages[0]["content"].count(IMAGE_PLACEHOLDER)
        total = sum(m["content"].count(IMAGE_PLACEHOLDER) for m in messages)
        if in_user != entry.images_per_sample or total != in_user:
            raise SampleError("bad_record", f"the {template!r} template ({entry.description}) takes exactly "
                                            f"{entry.images_per_sample} image(s), in the first user turn; got "
                                            f"{in_user} there and {total - in_user} elsewhere")
    try:
        return template_spans(messages, template, tokenizer)
    except SampleError:
        raise
    except Exception as exc:  # noqa: BLE001 - a user template's Jinja error is a data error here
        raise SampleError("bad_record", f"the {template!r} template cannot render this sample: {exc}") from exc


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
    _, literal = render_with_content_spans(messages, template, tokenizer, add_generation_prompt=False)
    # the text carries its special tokens; those the messages spell out stay text
    ids, starts, is_image = tokenize_with_offsets(text, tokenizer, image_token_id, num_image_tokens,
                                                  add_special_tokens=False, literal_spans=literal)
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
