"""HR-VQA table rows (README, docs/inf-llava-mini.md) from `infllava eval` score files, one Markdown row per file.

    python experiments/mini_table.py runs/mini-full/test_scores.json runs/mini-thumbnail/test_scores.json ...
    python experiments/mini_table.py --diff runs/mini-full/test_scores.json runs/mini-thumbnail/test_scores.json

Columns: overall, detail, global, then the subtypes (accuracy in %, one decimal). Score files of the
simple-scene splits (mixture-val, generalise: kind "simple") get overall and their subtypes instead
(colour, shape, presence, count, position); one table holds one kind of file. A row's label is the
file's parent directory unless given as LABEL=PATH. --diff adds the first file minus each other one.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

SUBTYPES = ("color", "shape", "digit", "count", "relation", "higher", "largest")
COLUMNS = ("overall", "detail", "global") + SUBTYPES
SIMPLE_COLUMNS = ("overall", "color", "shape", "presence", "count", "position")


def columns(scores: dict) -> tuple[str, ...]:
    return SIMPLE_COLUMNS if set(scores.get("by_kind", {})) == {"simple"} else COLUMNS


def row_values(scores: dict) -> dict[str, float]:
    """{column: accuracy in %} from the `scores` object of an `infllava eval --out` file."""
    try:
        values = {"overall": 100 * scores["accuracy"]}
        simple = columns(scores) == SIMPLE_COLUMNS
        for kind in () if simple else ("detail", "global"):
            values[kind] = 100 * scores["by_kind"][kind]["accuracy"]
        for sub in SIMPLE_COLUMNS[1:] if simple else SUBTYPES:
            values[sub] = 100 * scores["by_subtype"][sub]["accuracy"]
    except (KeyError, TypeError) as e:
        raise ValueError(f"not an HR-VQA score object (missing {e})") from e
    return values


def load(spec: str) -> tuple[str, dict[str, float], int]:
    label, _, path = spec.rpartition("=") if "=" in spec else ("", "", spec)
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f"mini_table: cannot read {p}: {e}")
    scores = data.get("scores", data)
    try:
        values = row_values(scores)
    except ValueError as e:
        raise SystemExit(f"mini_table: {p}: {e}")
    return label or p.parent.name, values, int(scores.get("total", 0))


def markdown(rows: list[tuple[str, dict[str, float]]], signed: bool = False) -> str:
    fmt = "{:+.1f}" if signed else "{:.1f}"
    return "\n".join("| " + " | ".join([label] + [fmt.format(v[c]) for c in v]) + " |" for label, v in rows)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+", help="score files (infllava eval --out), optionally LABEL=PATH")
    ap.add_argument("--diff", action="store_true", help="also print the first row minus each other row")
    args = ap.parse_args(argv)
    loaded = [load(f) for f in args.files]
    totals = {t for _, _, t in loaded}
    cols = tuple(loaded[0][1])
    if any(tuple(v) != cols for _, v, _ in loaded):
        raise SystemExit("mini_table: HR-VQA and simple-scene score files cannot share a table")
    name = "HR-VQA" if cols == COLUMNS else "simple scenes"
    print(f"| {name}, {'/'.join(str(t) for t in sorted(totals))} questions | " + " | ".join(cols) + " |")
    print("|" + "---|" * (len(cols) + 1))
    print(markdown([(label, v) for label, v, _ in loaded]))
    if args.diff:
        first_label, first, _ = loaded[0]
        print(markdown([(f"{first_label} - {label}", {c: first[c] - v[c] for c in cols})
                        for label, v, _ in loaded[1:]], signed=True))
    if len(totals) > 1:
        print("mini_table: the files score different numbers of questions", file=sys.stderr)


if __name__ == "__main__":
    main()
