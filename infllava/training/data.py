"""Training data: a lazy supervised dataset, collation, modality/length grouping, and
a data check (`infllava data check DATA --images DIR`).

* Records are read and checked by the data layer (`infllava.data.records`: `load_records`,
  `resolve_image_path`, `to_messages`, shared with evaluation).
* `SupervisedDataset`: lazy; each item loads its images and encodes its text when asked for. A bad
  sample (missing / unreadable image, `SampleError`) comes back as `{"id", "skip": "<kind>: ..."}`
  so that one broken file does not end a long run; `collate` drops such items and reports them.
* `grouped_order`: LLaVA-style `group_by_modality_length` ordering (batches of one modality and
  similar length).
* `check_dataset` / `DataReport`: every problem kind counted, with the ids, before training starts.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..data.records import SampleError, record_image_paths, resolve_image_path, scan_records
from ..processing import InfLlavaImageProcessor, ImageLoadError, load_image
from .labels import IGNORE_INDEX, encode_record

__all__ = [
    "PROBLEM_KINDS",
    "SupervisedDataset",
    "collate",
    "grouped_order",
    "DataReport",
    "check_dataset",
]

#: Problem kinds of a data check, in report order.
PROBLEM_KINDS = (
    "malformed",
    "bad_record",
    "missing_image",
    "unreadable_image",
    "placeholder_mismatch",
    "not_alternating",
    "empty_answer",
    "truncated",
    "empty",
)


# --------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------


def _word_count(record: Mapping[str, Any]) -> int:
    turns = record.get("conversations")
    if not isinstance(turns, list):
        return 0
    words = 0
    for turn in turns:
        if isinstance(turn, Mapping):
            value = turn.get("value", turn.get("content"))
            if isinstance(value, str):
                words += len(value.split())
    return words


def _num_images(record: Mapping[str, Any]) -> int:
    try:
        return len(record_image_paths(record))
    except SampleError:
        return 1 if record.get("image") else 0


class SupervisedDataset(torch.utils.data.Dataset):
    """Lazy supervised dataset over LLaVA records.

    Args:
        records: dicts as returned by `load_records`.
        image_root: folder the records' relative image paths are relative to (None: the current
            directory); absolute paths are used as they are.
        tokenizer: a fast tokenizer (offsets are needed for the labels).
        image_processor: `InfLlavaImageProcessor` (loads, pads and resizes; its `max_pixels` applies).
        template: "llama3" (stage 2), "plain" (stage 1) or "chat_template".
        image_token_id, num_image_tokens: as the model's config (each "<image>" becomes
            `num_image_tokens` ids `image_token_id`).
        max_length: longest token sequence; a sample whose answer does not fit is skipped
            ("truncated"), never cut.

    `ds[i]` -> {"id", "input_ids": LongTensor [T], "labels": LongTensor [T],
    "pixel_values": FloatTensor [n_img, 3, H, W] or None (text-only: no image work is done)}, or
    {"id", "skip": "<kind>: <message>"} for a bad sample (kinds: missing_image, unreadable_image and
    the `SampleError` kinds). The text is checked before any image is read.
    """

    def __init__(
        self,
        records: Sequence[Mapping[str, Any]],
        image_root: str | os.PathLike | None,
        tokenizer: Any,
        image_processor: InfLlavaImageProcessor,
        template: str,
        image_token_id: int,
        num_image_tokens: int,
        max_length: int | None,
    ) -> None:
        self.records = list(records)
        self.image_root = image_root
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.template = template
        self.image_token_id = int(image_token_id)
        self.num_image_tokens = int(num_image_tokens)
        self.max_length = max_length
        self._lengths: list[int] | None = None

    def __len__(self) -> int:
        return len(self.records)

    def lengths(self) -> list[int]:
        """Cheap length estimates, no tokenizing, no image reading (LLaVA's `modality_lengths`):
        words of all turns + num_image_tokens per image; positive for samples with images,
        negative (at most -1) for text-only ones."""
        if self._lengths is None:
            out = []
            for record in self.records:
                n_img = _num_images(record) if isinstance(record, Mapping) else 0
                words = _word_count(record) if isinstance(record, Mapping) else 0
                if n_img:
                    out.append(words + n_img * self.num_image_tokens)
                else:
                    out.append(-max(1, words))
            self._lengths = out
        return list(self._lengths)

    def record_id(self, i: int) -> Any:
        record = self.records[i]
        return record.get("id", i) if isinstance(record, Mapping) else i

    def __getitem__(self, i: int) -> dict[str, Any]:
        record = self.records[i]
        rid = self.record_id(i)
        try:
            sample = encode_record(
                record, self.tokenizer, self.template, self.image_token_id, self.num_image_tokens, self.max_length
            )
        except SampleError as exc:
            return {"id": rid, "skip": f"{exc.kind}: {exc}"}
        pixel_values = None
        if sample.image_paths:
            paths = [resolve_image_path(p, self.image_root) for p in sample.image_paths]
            for p in paths:
                if not os.path.isfile(p):
                    return {"id": rid, "skip": f"missing_image: {p} not found"}
            try:
                pixel_values = self.image_processor.pixels(paths)
            except (ImageLoadError, OSError) as exc:
                return {"id": rid, "skip": f"unreadable_image: {exc}"}
        return {
            "id": rid,
            "input_ids": torch.tensor(sample.input_ids, dtype=torch.long),
            "labels": torch.tensor(sample.labels, dtype=torch.long),
            "pixel_values": pixel_values,
        }


# --------------------------------------------------------------------------------------------
# Collation and ordering
# --------------------------------------------------------------------------------------------


def collate(
    batch: Sequence[Mapping[str, Any]], pad_token_id: int, pad_to_multiple_of: int | None = None
) -> dict[str, Any]:
    """Items of `SupervisedDataset` -> a right-padded batch.

    Returns {"input_ids" [B, T] long (pad_token_id on padding), "labels" [B, T] long (-100 on
    padding), "attention_mask" [B, T] long, "pixel_values" [N_img, 3, H, W] (the images of the
    samples that have any, in batch order) or None, "ids": [B], "skipped": [(id, reason), ...]}.
    Skipped items are dropped; a batch with nothing left has (0, 0) tensors.
    Use with a DataLoader as `functools.partial(collate, pad_token_id=...)`.
    """
    if pad_token_id is None:
        raise ValueError("collate needs a pad_token_id (use the tokenizer's pad id, or its eos id)")
    kept = [item for item in batch if "skip" not in item]
    skipped = [(item.get("id"), item["skip"]) for item in batch if "skip" in item]
    if not kept:
        empty = torch.zeros((0, 0), dtype=torch.long)
        return {
            "input_ids": empty,
            "labels": empty.clone(),
            "attention_mask": empty.clone(),
            "pixel_values": None,
            "ids": [],
            "skipped": skipped,
        }
    longest = max(int(item["input_ids"].shape[0]) for item in kept)
    if pad_to_multiple_of:
        longest = -(-longest // pad_to_multiple_of) * pad_to_multiple_of
    n = len(kept)
    input_ids = torch.full((n, longest), int(pad_token_id), dtype=torch.long)
    labels = torch.full((n, longest), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((n, longest), dtype=torch.long)
    for row, item in enumerate(kept):
        length = int(item["input_ids"].shape[0])
        input_ids[row, :length] = item["input_ids"]
        labels[row, :length] = item["labels"]
        attention_mask[row, :length] = 1
    images = [item["pixel_values"] for item in kept if item.get("pixel_values") is not None]
    return {
        "input_ids": input_ids,
        "labels": labels,
        "attention_mask": attention_mask,
        "pixel_values": torch.cat(images, dim=0) if images else None,
        "ids": [item.get("id") for item in kept],
        "skipped": skipped,
    }


def grouped_order(lengths: Sequence[int], batch_size: int, seed: int, epoch: int = 0) -> list[int]:
    """A permutation of range(len(lengths)) for LLaVA's `group_by_modality_length` batching.

    `lengths` as `SupervisedDataset.lengths()`: > 0 multimodal, <= 0 text-only. Per modality: shuffle,
    split into mega-batches of batch_size * 50, sort each by |length| (longest first), cut into
    batches of batch_size. The full batches of both modalities are shuffled together, the one with
    the longest sample is put first (an out-of-memory shows at step 1, not hours later), and the
    remainders (fewer than batch_size per modality) come last, multimodal before text-only.

    So every consecutive `batch_size` chunk is single-modality, except that when neither modality's
    count is a multiple of batch_size, the last one or two chunks hold both remainders (a mix is then
    unavoidable for any permutation). Deterministic in (seed, epoch).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch) & 0xFFFFFFFF])
    lengths = [int(x) for x in lengths]
    size = [abs(x) for x in lengths]
    mm = [i for i, x in enumerate(lengths) if x > 0]
    text = [i for i, x in enumerate(lengths) if x <= 0]

    full: list[list[int]] = []
    remainders: list[int] = []
    mega = batch_size * 50
    for group in (mm, text):
        if not group:
            continue
        shuffled = [group[j] for j in rng.permutation(len(group))]
        ordered: list[int] = []
        for start in range(0, len(shuffled), mega):
            ordered.extend(sorted(shuffled[start : start + mega], key=lambda i: -size[i]))
        n_full = len(ordered) // batch_size * batch_size
        # the short remainder is taken from the shortest end of the last mega-batch
        full.extend(ordered[k : k + batch_size] for k in range(0, n_full, batch_size))
        remainders.extend(ordered[n_full:])

    batches = [full[j] for j in rng.permutation(len(full))] if full else []
    if batches:
        longest = max(range(len(batches)), key=lambda b: max(size[i] for i in batches[b]))
        batches[0], batches[longest] = batches[longest], batches[0]
    return [i for b in batches for i in b] + remainders


# --------------------------------------------------------------------------------------------
# Data check
# --------------------------------------------------------------------------------------------


@dataclass
class DataReport:
    """Result of `check_dataset`.

    total: entries in the file (records + malformed lines + unusable entries); ok: records with no
    problem; problems: kind -> ids (a malformed line is named "line N"; a record may appear under
    several kinds, e.g. a text problem and a missing image); details: (id, kind, message) for each.
    """

    total: int = 0
    ok: int = 0
    problems: dict[str, list[Any]] = field(default_factory=lambda: {k: [] for k in PROBLEM_KINDS})
    details: list[tuple[Any, str, str]] = field(default_factory=list)

    def add(self, kind: str, rid: Any, message: str) -> None:
        self.problems.setdefault(kind, []).append(rid)
        self.details.append((rid, kind, message))

    @property
    def num_bad(self) -> int:
        return self.total - self.ok

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "ok": self.ok,
            "problems": {k: list(v) for k, v in self.problems.items() if v},
        }

    def format(self, max_ids: int = 5) -> str:
        """One line per problem kind (count and the first ids), then a summary line."""
        lines = []
        for kind in list(PROBLEM_KINDS) + [k for k in self.problems if k not in PROBLEM_KINDS]:
            ids = self.problems.get(kind) or []
            if not ids:
                continue
            shown = ", ".join(str(x) for x in ids[:max_ids])
            more = f", ... ({len(ids) - max_ids} more)" if len(ids) > max_ids else ""
            example = next((m for rid, k, m in self.details if k == kind), "")
            lines.append(f"{kind}: {len(ids)} ({shown}{more})" + (f"  e.g. {example}" if example else ""))
        bad = self.total - self.ok
        if bad == 0:
            lines.append(f"{self.total} sample(s) checked: all ok")
        else:
            lines.append(f"{self.total} sample(s) checked: {self.ok} ok, {bad} with problems")
        return "\n".join(lines)


def _check_images(
    paths: list[str], image_root: Any, image_processor: InfLlavaImageProcessor | None, verify: bool
) -> list[tuple[str, str]]:
    """(kind, message) for each bad image of one record."""
    out = []
    for p in paths:
        full = resolve_image_path(p, image_root)
        if not os.path.isfile(full):
            out.append(("missing_image", f"{full} not found"))
            continue
        if not verify:
            continue
        try:
            if image_processor is not None:
                image_processor.preprocess_pil(full)  # exactly what training does, minus normalising
            else:
                load_image(full)  # full decode: truncation shows here
        except (ImageLoadError, OSError) as exc:
            out.append(("unreadable_image", str(exc)))
    return out


def check_dataset(
    data_path: str | os.PathLike,
    image_root: str | os.PathLike | None,
    tokenizer: Any,
    template: str,
    image_token_id: int,
    num_image_tokens: int,
    max_length: int | None,
    image_processor: InfLlavaImageProcessor | None = None,
    verify_images: bool = True,
    num_workers: int = 8,
) -> DataReport:
    """Check every sample of a data file the way training would use it.

    Counts malformed lines, unusable entries (bad_record), missing images, images that do not fully
    decode (unreadable_image; with `image_processor` the whole pad/resize runs, with its
    `max_pixels`), and the `SampleError` kinds of the text (placeholder_mismatch, not_alternating,
    empty_answer, truncated, empty, bad_record). `verify_images=False` only checks that the files
    exist. Images are decoded in `num_workers` threads.
    """
    records, problems = scan_records(data_path)
    report = DataReport()
    report.total = len(records) + len(problems)
    for kind, where, message in problems:
        report.add(kind, where, message)

    # Text first, in this thread (a fast tokenizer must not be called from several threads at
    # once); then the images, which is where the time goes, in a thread pool.
    found: list[list[tuple[str, str]]] = []
    image_lists: list[list[str]] = []
    for record in records:
        problems_here: list[tuple[str, str]] = []
        try:
            encode_record(record, tokenizer, template, image_token_id, num_image_tokens, max_length)
        except SampleError as exc:
            problems_here.append((exc.kind, str(exc)))
        try:
            paths = record_image_paths(record)
        except SampleError:
            paths = []  # reported as bad_record by encode_record
        found.append(problems_here)
        image_lists.append(paths)

    def check_images(paths: list[str]) -> list[tuple[str, str]]:
        return _check_images(paths, image_root, image_processor, verify_images)

    if num_workers > 1 and sum(1 for p in image_lists if p) > 1:
        with ThreadPoolExecutor(max_workers=num_workers) as pool:
            image_results = list(pool.map(check_images, image_lists))
    else:
        image_results = [check_images(p) for p in image_lists]
    results = [a + b for a, b in zip(found, image_results)]

    for record, found in zip(records, results):
        if not found:
            report.ok += 1
            continue
        seen = set()
        for kind, message in found:
            if kind not in seen:  # a record is listed once per kind
                seen.add(kind)
                report.add(kind, record["id"], message)
    return report
