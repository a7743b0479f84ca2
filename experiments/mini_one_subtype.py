"""Can the LM learn to read one kind of question? Stage 2 on the questions of a single HR-VQA subtype.

    python experiments/mini_one_subtype.py BASE SUBTYPE[,SUBTYPE...] OUT [--data .cache/hrvqa] [--steps 96] [KEY=VALUE ...]

BASE: a model after the align stage (or stage 1), e.g. runs/mini-full/stage0/final. Writes
OUT/train.jsonl (one single-turn record per train question of SUBTYPE, from the multi-turn
DATA/train.jsonl) and OUT/test.jsonl (the test questions of SUBTYPE), runs stage 2 with
configs/mini/finetune.yaml for --steps steps of 8 questions, exports the parts and scores them with
`infllava eval`. Trailing KEY=VALUE arguments override the stage-2 config (e.g. train.lr=2e-3
train.freeze_mm=true). Used to tell "the LM cannot learn this question at this budget" from "the mixture of
question types is the problem" (docs/inf-llava-mini.md).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from infllava.evaluation.hrvqa.writing import write_subtype

BIN = Path(sys.executable).parent


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("base")
    p.add_argument("subtype")
    p.add_argument("out")
    p.add_argument("--data", default=".cache/hrvqa")
    p.add_argument("--steps", type=int, default=96)
    p.add_argument("--feature-cache", default=".cache/features")
    p.add_argument("overrides", nargs="*", help="stage-2 config overrides, KEY=VALUE")
    args = p.parse_args()
    data, out = Path(args.data), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    try:
        subtypes = args.subtype.split(",")  # several: single-turn questions of those subtypes, shuffled together
        n_train = write_subtype(data / "train.jsonl", subtypes, out / "train.jsonl")
        n_test = write_subtype(data / "test.jsonl", subtypes, out / "test.jsonl")
    except ValueError as e:
        raise SystemExit(str(e))
    print(f"{args.subtype}: {n_train} train questions, {n_test} test questions", flush=True)

    subprocess.run([str(BIN / "infllava"), "train", "configs/mini/finetune.yaml", f"data.images={data}",
                    f"data.path={out / 'train.jsonl'}", f"model.base={args.base}",
                    f"train.output_dir={out / 'stage2'}", f"train.max_steps={args.steps}",
                    f"train.feature_cache={args.feature_cache}", "train.save_every=100000", *args.overrides], check=True)
    from infllava.parts import export_parts

    export_parts(out / "stage2" / "final", out / "parts")
    subprocess.run([str(BIN / "infllava"), "eval", str(out / "parts"), "--data", str(out / "test.jsonl"),
                    "--images", str(data), "--out", str(out / "test_scores.json"),
                    "--feature-cache", args.feature_cache], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
