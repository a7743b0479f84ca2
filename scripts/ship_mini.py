"""Ship a trained INF-LLaVA-mini: export its parts (float16) into the package and pick the demo image.

    python scripts/ship_mini.py [--run runs/mini-full] [--baseline runs/mini-thumbnail]
    python scripts/ship_mini.py --run runs/mini-full --verify   # does RUN reproduce the shipped parts?
    python scripts/ship_mini.py --stage stage3 --scores broad_test_scores.json   # the broadened model
                                                                 # (scripts/train_mini_broad.sh)

1. `export_parts(RUN/STAGE/final, infllava/assets/inf-llava-mini, dtype=float16)` (STAGE: --stage,
   default stage2): DEM, projector and LoRA factors with their sha256 (`infllava.load("inf-llava-mini")` assembles them with the packaged
   EfficientNet-Lite0 and SmolLM2).
2. The demo example: the first test image (test images are never trained on) on which RUN answered every
   question right in `RUN/SCORES` (--scores, default test_scores.json: its HR-VQA test scores),
   preferring one with a detail question that the baseline
   (thumbnail-only) model got wrong (without a baseline run: one with a detail question). It is copied
   to examples/hrvqa-example.png with its questions and true answers in examples/hrvqa-example.json,
   which says how it was chosen.

3. With --simple-scores (RUN's `infllava eval` file on the simple-scene validation split, mixture-val: never
   trained on, not the held-out generalisation split), a second example: the first mixture-val image with at
   least three questions on which RUN answered every one right -> examples/simple-example.png / .json.

--verify writes nothing: it exports RUN's parts the same way into a temporary folder and compares every
tensor and the model config with the shipped ones (exit status 1 where any differs).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import torch
from safetensors.torch import load_file

from infllava.evaluation.hrvqa.scoring import iter_questions, normalize_answer
from infllava.inference import SHIPPED
from infllava.parts import export_parts

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", default="runs/mini-full")
    p.add_argument("--baseline", default="runs/mini-thumbnail")
    p.add_argument("--data", default=".cache/hrvqa")
    p.add_argument("--stage", default="stage2", help="the run's stage whose final/ ships (stage3: train_mini_broad.sh)")
    p.add_argument("--scores", default="test_scores.json", help="RUN's HR-VQA test scores file")
    p.add_argument("--simple-scores", default="", help="RUN's scores file on mixture-val (a simple-scene example)")
    p.add_argument("--caveat", default="", help="a warning the demo prints with the example (e.g. an under-trained model)")
    p.add_argument("--verify", action="store_true", help="compare RUN's parts with the shipped ones; write nothing")
    args = p.parse_args()
    run, data = ROOT / args.run, ROOT / args.data

    out = SHIPPED["inf-llava-mini"]
    if args.verify:
        sys.exit(verify(run / args.stage, out))
    if out.exists():
        shutil.rmtree(out)
    export_parts(run / args.stage / "final", out, dtype=torch.float16)
    size = sum(f.stat().st_size for f in out.iterdir())
    print(f"parts -> {out.relative_to(ROOT)} ({size / 2**20:.1f} MiB)")

    if args.simple_scores:
        simple_example(run, data, args.simple_scores)
    run_scores = json.loads((run / args.scores).read_text())
    preds, total = run_scores["predictions"], run_scores["scores"]
    base_file = ROOT / args.baseline / "test_scores.json"
    base = json.loads(base_file.read_text())["predictions"] if base_file.exists() else {}
    by_image = defaultdict(list)
    for q in iter_questions(data / "test.jsonl"):
        by_image[q["image"]].append(q)

    def right(p, q):
        return normalize_answer(p.get(q["id"], "")) == normalize_answer(q["answer"])

    candidates = [(img, recs) for img, recs in by_image.items() if all(right(preds, r) for r in recs)]
    if not candidates:
        raise SystemExit(f"{run.name} answered no test image entirely right: nothing to show")
    # a detail question the baseline got wrong; without a baseline, any detail question
    preferred = [c for c in candidates if any(r["kind"] == "detail" and not (base and right(base, r)) for r in c[1])]
    image, recs = (preferred or candidates)[0]
    shutil.copy2(data / image, ROOT / "examples" / "hrvqa-example.png")
    why = ""
    if preferred:
        why = f", with a detail question {Path(args.baseline).name} got wrong" if base else ", with a detail question"
    note = (f"HR-VQA test image {Path(image).stem}: the first test image on which {run.name} answered every "
            f"question right{why}; on all {total['total']} test questions it is right {100 * total['accuracy']:.1f}%")
    example = _example("hrvqa-example.png", recs, note, args.caveat)
    (ROOT / "examples" / "hrvqa-example.json").write_text(json.dumps(example, indent=1) + "\n")
    print(f"example -> examples/hrvqa-example.png ({note})")


def _example(rel: str, recs: list, note: str, caveat: str = "") -> dict:
    return {"image": rel, "note": note, "caveat": caveat, "questions": [
        {"question": q["prompt"].replace("<image>\n", ""), "answer": q["answer"], "kind": q["kind"],
         "subtype": q["subtype"]} for q in recs]}


def simple_example(run: Path, data: Path, scores_name: str) -> None:
    """examples/simple-example.{png,json}: the first mixture-val image with >= 3 questions, all answered right."""
    scores = json.loads((run / scores_name).read_text())
    preds, total = scores["predictions"], scores["scores"]
    by_image = defaultdict(list)
    for q in iter_questions(data / "mixture-val.jsonl"):
        by_image[q["image"]].append(q)
    for image, recs in by_image.items():
        if len(recs) >= 3 and all(normalize_answer(preds.get(q["id"], "")) == normalize_answer(q["answer"])
                                  for q in recs):
            break
    else:
        raise SystemExit(f"{run.name} answered no mixture-val image with 3 questions entirely right")
    shutil.copy2(data / image, ROOT / "examples" / "simple-example.png")
    note = (f"simple-scene validation image {Path(image).stem} (never trained on): the first with three or more "
            f"questions all answered right by {run.name}; on all {total['total']} mixture-val questions it is "
            f"right {100 * total['accuracy']:.1f}%")
    (ROOT / "examples" / "simple-example.json").write_text(
        json.dumps(_example("simple-example.png", recs, note), indent=1) + "\n")
    print(f"example -> examples/simple-example.png ({note})")


def verify(stage: Path, shipped: Path) -> int:
    """0 when the float16 parts of a run's stage equal the shipped ones tensor for tensor (and the model
    config agrees)."""
    differs = 0
    with tempfile.TemporaryDirectory() as tmp:
        mine = export_parts(stage / "final", Path(tmp) / "parts", dtype=torch.float16)
        for name in ("adapter.safetensors", "lora.safetensors"):
            a, b = load_file(str(mine / name)), load_file(str(shipped / name))
            if set(a) != set(b):
                print(f"{name}: different tensors ({len(set(a) ^ set(b))} names in only one)")
                differs += 1
                continue
            unequal = [k for k in a if a[k].shape != b[k].shape or not torch.equal(a[k], b[k])]
            worst = max(((a[k].float() - b[k].float()).abs().max().item() for k in unequal
                         if a[k].shape == b[k].shape), default=0.0)
            print(f"{name}: {len(a) - len(unequal)} of {len(a)} tensors bit-equal; largest difference {worst:.3g}")
            differs += bool(unequal)
        ca, cb = (_settings(json.loads((d / "config.json").read_text())) for d in (mine, shipped))
        keys = sorted(k for k in set(ca) | set(cb) if ca.get(k) != cb.get(k))
        print(f"config.json: {'the same' if not keys else 'differs in ' + ', '.join(keys)}")
        differs += bool(keys)
    print("RUN reproduces the shipped parts" if not differs else "RUN does NOT reproduce the shipped parts")
    return int(bool(differs))


def _settings(config: dict) -> dict:
    """A saved model config without the bookkeeping that says nothing about the model (library version,
    the dtype a save recorded)."""
    return {k: _settings(v) if isinstance(v, dict) else v for k, v in config.items()
            if k not in ("transformers_version", "dtype")}


if __name__ == "__main__":
    main()
