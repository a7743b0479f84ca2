"""Where a model's answers on a simple-scene split go right: accuracy by scene, not only by subtype.

    python experiments/mini_simple_breakdown.py SCORES.json [LABEL=SCORES.json ...] [--data .cache/hrvqa/generalise.jsonl]

SCORES: `infllava eval --out` files of the same split (mixture-val or generalise). The scenes are rebuilt
from (split, index) with `mixture.make_simple_scene` (a pure function of both), so the breakdown needs no
more than the question file. Rows, per file:

* colour / shape questions by the number of shapes (one: "the only shape"; several: "the largest") and the
  asked shape's share of the canvas (small < 1%, mid < 10%, large);
* every subtype by style group: held-out styles (`mixture.HELD_OUT_STYLES`) against train styles;
* presence: how often the model answers "yes", against how often "yes" is right.

Counts are printed beside each percentage: most cells hold 5-60 questions, so a difference of a few
questions is noise.
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infllava.evaluation.hrvqa.mixture import HELD_OUT_STYLES, make_simple_scene  # noqa: E402
from infllava.evaluation.hrvqa.scoring import load_jsonl, normalize_answer  # noqa: E402


def _size_band(share: float) -> str:
    return "small<1%" if share < 0.01 else "mid<10%" if share < 0.10 else "large"


def breakdown(records: list[dict], predictions: dict[str, str]) -> dict[str, dict[str, list[int]]]:
    """{table: {row: [right, asked]}} over the records that have a prediction."""
    out: dict[str, dict[str, list[int]]] = collections.defaultdict(lambda: collections.defaultdict(lambda: [0, 0]))
    yes = [0, 0, 0]  # answered yes, truly yes, asked
    scenes = functools.lru_cache(maxsize=None)(make_simple_scene)  # an image's colour and shape questions share it
    for rec in records:
        if rec["id"] not in predictions:
            continue
        truth = normalize_answer(rec["conversations"][1]["value"])  # compared as `infllava eval` scores
        guess = normalize_answer(predictions[rec["id"]])
        right = int(guess == truth)
        sub = rec["subtype"]
        group = "held-out styles" if rec.get("style") in HELD_OUT_STYLES else "train styles"
        cell = out["by style group"][f"{sub:9s} {group}"]
        cell[0] += right
        cell[1] += 1
        if sub in ("color", "shape"):
            split, index, _ = rec["id"].rsplit("-", 2)
            scene = scenes(split, int(index))
            largest = max(scene.objects, key=lambda o: o.width * o.height)
            share = largest.width * largest.height / (scene.canvas[0] * scene.canvas[1])
            many = "one shape" if len(scene.objects) == 1 else "several (largest)"
            cell = out["by scene"][f"{sub:6s} {many:18s} {_size_band(share)}"]
            cell[0] += right
            cell[1] += 1
        if sub == "presence":
            yes[0] += guess == "yes"
            yes[1] += truth == "yes"
            yes[2] += 1
    if yes[2]:
        out["presence"]["answers yes"] = [yes[0], yes[2]]
        out["presence"]["yes is right"] = [yes[1], yes[2]]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("scores", nargs="+", help="infllava eval --out files (LABEL=PATH to name a column)")
    p.add_argument("--data", default=".cache/hrvqa/generalise.jsonl", help="the split's question file")
    args = p.parse_args(argv)
    try:
        records = load_jsonl(args.data)
    except (OSError, ValueError) as e:
        p.error(f"cannot read the question file {args.data}: {e}")
    if not records or records[0].get("kind") != "simple":
        p.error(f"{args.data} is not a simple-scene split (infllava hrvqa OUT --mixture-val N --generalise N)")
    tables = []
    for spec in args.scores:
        label, _, path = spec.rpartition("=")
        try:
            predictions = json.loads(Path(path).read_text())["predictions"]
        except (OSError, json.JSONDecodeError, KeyError) as e:
            p.error(f"cannot read predictions from {path}: {e}")
        tables.append((label or Path(path).parent.name, breakdown(records, predictions)))
    names = sorted({(t, r) for _, b in tables for t in b for r in b[t]})
    print("| table | row | " + " | ".join(label for label, _ in tables) + " |")
    print("|---|---|" + "---|" * len(tables))
    for table, row in names:
        cells = []
        for _, b in tables:
            right, asked = b.get(table, {}).get(row, [0, 0])
            cells.append(f"{100 * right / asked:.1f} ({right}/{asked})" if asked else "")
        print(f"| {table} | {row} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
