"""HR-VQA scoring: the question records read back (either `write_split` layout) and normalised exact
match, overall, per kind and per subtype."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from .scenes import PROMPT_SUFFIX

__all__ = ["normalize_answer", "load_jsonl", "iter_questions", "score"]

_NUMBER_WORDS = {w: str(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve".split())}
_ARTICLES = {"a", "an", "the"}


def normalize_answer(text: str) -> str:
    """Lowercase, punctuation to spaces, whitespace collapsed, leading articles dropped, number words
    to digits ("Three." -> "3", "the Red" -> "red")."""
    words = re.sub(r"[^\w\s]|_", " ", str(text).lower()).split()
    while words and words[0] in _ARTICLES:
        words.pop(0)
    return " ".join(_NUMBER_WORDS.get(w, w) for w in words)


def load_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a JSONL file (blank lines skipped); ValueError naming the file and line of one that is
    not JSON."""
    records = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{line_no}: not a JSON record ({e.msg})") from None
    return records


def _strip_prompt(value: str) -> str:
    value = value.replace("<image>", "").strip()
    return value[: -len(PROMPT_SUFFIX)].rstrip() if value.endswith(PROMPT_SUFFIX.strip()) else value


def iter_questions(records: Iterable[Mapping[str, Any]] | str | os.PathLike
                   ) -> Iterator[dict[str, Any]]:
    """One {id, image, question, prompt, answer, kind, subtype} per question of the records (a list
    or a jsonl path), in either `write_split` layout; prompt is the human turn as written (with the
    image placeholder and answer instruction), question is the bare question."""
    if isinstance(records, (str, os.PathLike)):
        records = load_jsonl(records)
    for rec in records:
        turns = rec["conversations"]
        humans = [t["value"] for t in turns if t.get("from") == "human"]
        answers = [t["value"] for t in turns if t.get("from") == "gpt"]
        if len(humans) == 1:
            ids, kinds, subtypes = [rec["id"]], [rec.get("kind")], [rec.get("subtype")]
        else:
            ids = [f"{rec['id']}-{q}" for q in range(len(humans))]
            kinds = rec.get("kinds") or [None] * len(humans)
            subtypes = rec.get("subtypes") or [None] * len(humans)
        for qid, prompt, answer, kind, subtype in zip(ids, humans, answers, kinds, subtypes):
            yield {"id": qid, "image": rec.get("image"), "question": _strip_prompt(prompt), "prompt": prompt,
                   "answer": answer, "kind": kind, "subtype": subtype}


def _acc(correct: int, total: int) -> dict[str, Any]:
    return {"accuracy": correct / total if total else 0.0, "correct": correct, "total": total}


def score(predictions: Mapping[str, str], records: Iterable[Mapping[str, Any]] | str | os.PathLike
          ) -> dict[str, Any]:
    """Normalized exact-match accuracy of `predictions` (question id -> answer text) on `records`.

    Returns {"accuracy", "correct", "total", "missing", "by_kind": {kind: {"accuracy", "correct",
    "total"}}, "by_subtype": {...}}. A question without a prediction counts as wrong (and as missing).
    """
    tally: dict[str, list[int]] = {}
    kinds: dict[str, list[int]] = {}
    subtypes: dict[str, list[int]] = {}
    missing = 0
    for item in iter_questions(records):
        pred = predictions.get(item["id"])
        missing += pred is None
        ok = int(pred is not None and normalize_answer(pred) == normalize_answer(item["answer"]))
        for table, key in ((tally, "all"), (kinds, item["kind"]), (subtypes, item["subtype"])):
            entry = table.setdefault(str(key), [0, 0])
            entry[0] += ok
            entry[1] += 1
    c, t = tally.get("all", [0, 0])
    return {**_acc(c, t), "missing": missing,
            "by_kind": {k: _acc(*v) for k, v in sorted(kinds.items())},
            "by_subtype": {k: _acc(*v) for k, v in sorted(subtypes.items())}}
