"""The blind baseline of HR-VQA: answer every question with the most frequent training answer of its
subtype, and never look at the image. A model that does not use the image lands here (or, for
"higher", at ~50% by naming one of the two colours in the question).

    python experiments/hrvqa_prior.py [--data .cache/hrvqa] [--split test | heldout] [--train-data DIR]
    python experiments/hrvqa_prior.py --split generalise --train-split mixture-train   # the simple-scene mixture
"""

from __future__ import annotations

import argparse
from collections import Counter, defaultdict
from pathlib import Path

from infllava.evaluation.hrvqa.scoring import iter_questions, normalize_answer, score


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=".cache/hrvqa")
    p.add_argument("--split", default="test", help="the split scored (test or heldout)")
    p.add_argument("--train-data", default=None, help="folder of the train.jsonl the majority comes from (default --data)")
    p.add_argument("--train-split", default="train", help="the split the majority comes from (mixture-train: the mixture's)")
    args = p.parse_args()
    data = Path(args.data)
    counts: dict[str, Counter] = defaultdict(Counter)
    for q in iter_questions(Path(args.train_data or data) / f"{args.train_split}.jsonl"):
        counts[q["subtype"]][normalize_answer(q["answer"])] += 1
    majority = {st: c.most_common(1)[0][0] for st, c in counts.items()}
    split = data / f"{args.split}.jsonl"
    s = score({q["id"]: majority[q["subtype"]] for q in iter_questions(split)}, split)
    print(f"majority-answer baseline on {s['total']} {args.split} questions: {100 * s['accuracy']:.1f}% overall; "
          + "; ".join(f"{k} {100 * v['accuracy']:.1f}%" for k, v in sorted(s["by_kind"].items())))
    print("  " + "  ".join(f"{k} {100 * v['accuracy']:.1f}%" for k, v in sorted(s["by_subtype"].items())))


if __name__ == "__main__":
    main()
