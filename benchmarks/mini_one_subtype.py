"""Can the LM learn to read one kind of question? Stage 2 on the questions of a single HR-VQA subtype.

    python benchmarks/mini_one_subtype.py BASE SUBTYPE OUT [--data .cache/hrvqa] [--steps 96] [KEY=VALUE ...]

BASE: a model after the align stage (or stage 1), e.g. runs/mini-full/stage0/final. Writes
OUT/train.jsonl (one single-turn record per train question of SUBTYPE, from the multi-turn
DATA/train.jsonl) and OUT/test.jsonl (the test questions of SUBTYPE), runs stage 2 with
configs/mini/finetune.yaml for --steps steps of 8 questions, exports the parts and scores them with
`infllava eval`. Trailing KEY=VALUE arguments override the stage-2 config (e.g. train.lr=2e-3
train.freeze_mm=true). Used to tell "the LM cannot learn this question at this budget" from "the mixture of
question types is the problem" (README, "HR-VQA v2").
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from infllava.evaluation.hrvqa import iter_questions, load_jsonl

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

    def single(q):
        return {"id": q["id"], "image": q["image"], "conversations": [
            {"from": "human", "value": q["prompt"]}, {"from": "gpt", "value": q["answer"]}]}

    train = []
    for q in iter_questions(data / "train.jsonl"):  # multi-turn records: the image only in turn 1
        if q["subtype"] == args.subtype:
            q["prompt"] = q["prompt"] if q["prompt"].startswith("<image>") else "<image>\n" + q["prompt"]
            train.append(single(q))
    test = [r for r in load_jsonl(data / "test.jsonl") if r.get("subtype") == args.subtype]
    if not train or not test:
        raise SystemExit(f"no {args.subtype!r} questions in {data} (train {len(train)}, test {len(test)})")
    (out / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train))
    (out / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in test))
    print(f"{args.subtype}: {len(train)} train questions, {len(test)} test questions", flush=True)

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
