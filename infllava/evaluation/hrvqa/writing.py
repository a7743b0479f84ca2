"""HR-VQA writing: images and LLaVA records of a split, caption records, subtype subsets, and the
`infllava hrvqa` command (`main`)."""

from __future__ import annotations

import json
import os
import random
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from PIL import Image

from .rendering import make_sample
from .scenes import (
    ANSWERS,
    DETAIL_SUBTYPES,
    GLOBAL_SUBTYPES,
    GRID,
    HRVQA_VERSION,
    PROMPT_SUFFIX,
    REFERENCE_SIZE,
    SPLIT_SEEDS,
    caption,
    check_args,
    make_scene,
    regions,
)
from .scoring import iter_questions, load_jsonl

__all__ = ["write_split", "write_captions", "write_subtype", "write_curriculum", "write_turns", "main"]


def _human(question: str, first: bool) -> dict[str, str]:
    return {"from": "human", "value": ("<image>\n" if first else "") + question + PROMPT_SUFFIX}


def write_split(out_dir: str | os.PathLike, split: str, num_images: int, size: int = REFERENCE_SIZE,
                questions_per_record: str = "one", every_subtype: bool = False) -> Path:
    """Write `num_images` images of `split` to out_dir/images/{split}/ and their records to
    out_dir/{split}.jsonl; returns the jsonl path.

    questions_per_record="one": one single-turn record per question, id "{split}-{index}-{q}", with
    "kind", "subtype" and "meta". "all": one multi-turn record per image, id "{split}-{index}", with
    "kinds" and "subtypes" lists (the image placeholder only in the first turn); `iter_questions` and
    `score` expand such records back to the per-question ids. every_subtype: one question of every
    subtype per image (`make_scene`), for training data.
    """
    if questions_per_record not in ("one", "all"):
        raise ValueError(f"questions_per_record must be 'one' or 'all', got {questions_per_record!r}")
    check_args(split, 0, size)
    return write_samples(out_dir, split, num_images, lambda i: (*make_sample(split, i, size, every_subtype), {}),
                         questions_per_record)


def write_samples(out_dir: str | os.PathLike, split: str, num_images: int,
                  sample: Callable[[int], tuple[Image.Image, list[dict[str, Any]], dict[str, Any]]],
                  questions_per_record: str) -> Path:
    """Write out_dir/images/{split}/ and out_dir/{split}.jsonl (atomically) from `sample(index)` ->
    (image, questions, extra fields for every record of that image), in `write_split`'s record layout
    (shared with the simple-scene mixture)."""
    out = Path(out_dir)
    (out / "images" / split).mkdir(parents=True, exist_ok=True)
    jsonl = out / f"{split}.jsonl"
    tmp = jsonl.with_name(jsonl.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for index in range(num_images):
            image, questions, extra = sample(index)
            rel = f"images/{split}/{index:06d}.png"
            image.save(out / rel, format="PNG", compress_level=1)
            if questions_per_record == "one":
                for q, item in enumerate(questions):
                    rec = {"id": f"{split}-{index}-{q}", "image": rel,
                           "conversations": [_human(item["question"], True),
                                             {"from": "gpt", "value": item["answer"]}],
                           "kind": item["kind"], "subtype": item["subtype"], "meta": item["meta"], **extra}
                    f.write(json.dumps(rec) + "\n")
            else:
                turns = []
                for q, item in enumerate(questions):
                    turns += [_human(item["question"], q == 0), {"from": "gpt", "value": item["answer"]}]
                rec = {"id": f"{split}-{index}", "image": rel, "conversations": turns,
                       "kinds": [q["kind"] for q in questions], "subtypes": [q["subtype"] for q in questions], **extra}
                f.write(json.dumps(rec) + "\n")
    os.replace(tmp, jsonl)
    return jsonl


def write_captions(out_dir: str | os.PathLike, split: str, num_images: int, size: int = REFERENCE_SIZE) -> Path:
    """out_dir/{split}_captions.jsonl: one "<image>" -> caption record per image of the split, with the
    objects' grounded phrases in "regions" (the images themselves are those `write_split` writes; only
    the scenes are regenerated here)."""
    check_args(split, 0, size)

    def describe(index: int):
        scene = make_scene(split, index, size)
        return caption(scene), regions(scene)

    return write_caption_records(out_dir, split, num_images, describe)


def write_caption_records(out_dir: str | os.PathLike, split: str, num_images: int,
                          describe: Callable[[int], tuple[str, list[dict[str, Any]]]]) -> Path:
    """out_dir/{split}_captions.jsonl (atomically) from `describe(index)` -> (caption, regions): the caption
    record layout the align stage reads, shared with the simple-scene mixture."""
    path = Path(out_dir) / f"{split}_captions.jsonl"
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for index in range(num_images):
            text, grounded = describe(index)
            rec = {"id": f"{split}-{index}-caption", "image": f"images/{split}/{index:06d}.png",
                   "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": text}],
                   "regions": grounded}
            f.write(json.dumps(rec) + "\n")
    os.replace(tmp, path)
    return path


def _subtype_rows(src: str | os.PathLike, subtypes: str | Iterable[str]) -> list[str]:
    """The questions of `subtypes` in a split file (either layout) as single-turn JSON lines."""
    wanted = {subtypes} if isinstance(subtypes, str) else set(subtypes)
    questions = list(iter_questions(src))
    # HR-VQA's subtypes, and those the file holds (the simple-scene mixture's: presence, position, ...)
    known = list(DETAIL_SUBTYPES + GLOBAL_SUBTYPES)
    known += sorted({q["subtype"] for q in questions} - set(known))
    unknown = wanted - set(known)
    if unknown:
        raise ValueError(f"unknown HR-VQA or mixture subtype(s) {sorted(unknown)}; expected some of {known}")
    rows = []
    for q in questions:
        if q["subtype"] in wanted:
            prompt = q["prompt"] if q["prompt"].startswith("<image>") else "<image>\n" + q["prompt"]
            rows.append(json.dumps({"id": q["id"], "image": q["image"], "kind": q["kind"], "subtype": q["subtype"],
                                    "conversations": [{"from": "human", "value": prompt},
                                                      {"from": "gpt", "value": q["answer"]}]}) + "\n")
    if not rows:
        raise ValueError(f"{src}: no questions of subtype(s) {sorted(wanted)}")
    return rows


def write_subtype(src: str | os.PathLike, subtypes: str | Iterable[str], out: str | os.PathLike) -> int:
    """Write the questions of `subtypes` from a split file (either layout) as single-turn records, each
    with the image placeholder, to `out`; returns how many. The data of a curriculum stage (the
    subtypes learned so far, scripts/train_mini.sh S2_CURRICULUM, train_mini_broad.sh S3_CURRICULUM) and of
    experiments/mini_one_subtype.py."""
    return write_curriculum([(src, subtypes)], [], out, new_share=None)[0]


def write_curriculum(new: Iterable[tuple[str | os.PathLike, str | Iterable[str]]],
                     old: Iterable[tuple[str | os.PathLike, str | Iterable[str]]],
                     out: str | os.PathLike, new_share: float | None = 0.5, seed: int = 0) -> tuple[int, int]:
    """One curriculum stage's data with the new question types at `new_share` of the records: all the
    (file, subtypes) questions of `new`, and of `old` (what earlier stages taught, kept) a uniform sample
    of len(new) * (1 - share) / share (all of them if fewer; all of them for None), drawn with `seed`;
    single-turn records in file order, new ones first. Returns (new, old) counts.

    Why: with every type learned so far in equal measure, a new type is a small share of each batch (the
    mixture's presence questions 19%, count 9% of train_mini_broad.sh's stages) and 96 steps leave it at
    its answer prior (experiments/results/mini_broad_v2_2026-12-03.txt)."""
    if new_share is not None and not 0.0 < new_share <= 1.0:
        raise ValueError(f"new_share must be in (0, 1], got {new_share!r}")
    new_rows = [row for src, st in new for row in _subtype_rows(src, st)]
    old_rows = [row for src, st in old for row in _subtype_rows(src, st)]
    if new_share is not None:
        keep = min(len(old_rows), round(len(new_rows) * (1.0 - new_share) / new_share))
        old_rows = [old_rows[i] for i in sorted(random.Random(seed).sample(range(len(old_rows)), keep))]
    rows = new_rows + old_rows
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text("".join(rows), encoding="utf-8")
    return len(new_rows), len(old_rows)


def _kept_turns(rec: dict[str, Any], wanted: set[str] | None, src: str | os.PathLike) -> dict[str, Any] | None:
    """`rec` with only the turns of `wanted` subtypes (None: all; the record itself when all are kept),
    the image placeholder moved to the first kept question; None when no turn is kept."""
    if "subtype" in rec:  # single-turn layout
        return rec if wanted is None or rec["subtype"] in wanted else None
    conv, subs, kinds = rec.get("conversations"), rec.get("subtypes"), rec.get("kinds")
    if not isinstance(conv, list) or not isinstance(subs, list) or not isinstance(kinds, list) \
            or len(conv) != 2 * len(subs) or len(kinds) != len(subs):
        raise ValueError(f"{src}: record {rec.get('id')!r} has no subtype per question turn "
                         "(expected 'subtype', or 'subtypes' and 'kinds' lists of one entry per question)")
    keep = [i for i, st in enumerate(subs) if wanted is None or st in wanted]
    if not keep:
        return None
    if len(keep) == len(subs):
        return rec
    turns = []
    for j, i in enumerate(keep):
        question = conv[2 * i]["value"].replace("<image>\n", "")
        turns += [{"from": "human", "value": ("<image>\n" if j == 0 else "") + question}, conv[2 * i + 1]]
    return {"id": rec["id"], "image": rec["image"], "conversations": turns,
            "kinds": [kinds[i] for i in keep], "subtypes": [subs[i] for i in keep]}


def write_turns(sources: Iterable[tuple[str | os.PathLike, str | Iterable[str] | None]], out: str | os.PathLike,
                seed: int = 0, extend: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> int:
    """Multi-turn training records: every record of each (file, subtypes) source with only the question
    turns of those subtypes (None: all turns; records left without a turn are dropped), all sources
    together shuffled with `seed`; returns how many records were written.

    extend: applied to each kept record, e.g. `functools.partial(mixture.with_presence_turns, n=3)`: up to 3
    more presence turns in front of each mixture-train record.

    Why: a record's cost is mostly its image tokens (196), so asking an image all its questions in one
    sequence trains ~4 answers for about the price of one (the mixture's records:
    experiments/results/mini_lm_read_2026-12-03.txt)."""
    rows = []
    for src, subtypes in sources:
        wanted = None if subtypes is None else ({subtypes} if isinstance(subtypes, str) else set(subtypes))
        n = len(rows)
        for rec in load_jsonl(src):
            kept = _kept_turns(rec, wanted, src)
            if kept is not None and extend is not None:
                kept = extend(kept)
            if kept is not None:
                rows.append(json.dumps(kept) + "\n")
        if len(rows) == n:
            raise ValueError(f"{src}: no question turns of subtype(s) {sorted(wanted or [])}")
    random.Random(seed).shuffle(rows)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text("".join(rows), encoding="utf-8")
    return len(rows)


# --------------------------------------------------------------------------------------------------
# Command line


def write_benchmark(out: str | Path, train: int = 2000, val: int = 200, test: int = 1000, heldout: int = 0,
                    size: int = REFERENCE_SIZE, train_format: str = "one", train_every_subtype: bool = False,
                    captions: bool = False, log=print) -> dict:
    """Write the splits asked for (n images each; 0: not written) and hrvqa.json to `out`; returns the info
    written to hrvqa.json. ValueError for a count below 0, a size the grid does not divide, an unknown
    train_format."""
    counts = {"train": train, "val": val, "test": test, "heldout": heldout}
    for name, n in counts.items():
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"--{name} must be an integer >= 0, got {n!r}")
    if train_format not in ("one", "all"):
        raise ValueError(f"train_format must be 'one' or 'all', got {train_format!r}")
    check_args("test", 0, size)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for split in SPLIT_SEEDS:  # train, val, test, heldout
        n = counts[split]
        if n == 0:
            continue
        fmt = train_format if split == "train" else "one"
        path = write_split(out, split, n, size=size, questions_per_record=fmt,
                           every_subtype=train_every_subtype and split == "train")
        n_questions = sum(1 for _ in iter_questions(path))
        written[split] = {"images": n, "questions": n_questions, "records": str(path.name)}
        log(f"{split}: {n} images, {n_questions} questions -> {path}")
        if split == "train" and captions:
            cap = write_captions(out, split, n, size=size)
            written[split]["captions"] = cap.name
            log(f"{split}: {n} captions -> {cap}")
    info = {"benchmark": "hrvqa", "version": HRVQA_VERSION, "size": size, "grid": GRID,
            # the held-out seed only where that split is written: files written without it stay as they were
            "split_seeds": {s: seed for s, seed in SPLIT_SEEDS.items() if s != "heldout" or s in written},
            "splits": written,
            "train_every_subtype": bool(train_every_subtype), "prompt_suffix": PROMPT_SUFFIX,
            "answers": {k: list(v) for k, v in ANSWERS.items()}}
    (out / "hrvqa.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return info


def main(argv: list[str] | None = None) -> int:
    """`python -m infllava.evaluation.hrvqa OUT ...`: the same as `infllava hrvqa OUT ...`."""
    from infllava_cli import main as cli

    return cli(["hrvqa", *(sys.argv[1:] if argv is None else argv)])
