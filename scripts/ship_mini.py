"""Ship a trained INF-LLaVA-mini: export its parts (float16) into the package and pick the demo image.

    python scripts/ship_mini.py [--run runs/mini-full] [--baseline runs/mini-thumbnail]
    python scripts/ship_mini.py --run runs/mini-full --verify   # does RUN reproduce the shipped parts?

1. `export_parts(RUN/stage2/final, infllava/assets/inf-llava-mini, dtype=float16)`: DEM, projector and
   LoRA factors with their sha256 (`infllava.load("inf-llava-mini")` assembles them with the packaged
   EfficientNet-Lite0 and SmolLM2).
2. The demo example: the first test image (test images are never trained on) on which RUN answered every
   question right in `RUN/test_scores.json`, preferring one with a detail question that the baseline
   (thumbnail-only) model got wrong (without a baseline run: one with a detail question). It is copied
   to examples/hrvqa-example.png with its questions and true answers in examples/hrvqa-example.json,
   which says how it was chosen.

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
    p.add_argument("--caveat", default="", help="a warning the demo prints with the example (e.g. an under-trained model)")
    p.add_argument("--verify", action="store_true", help="compare RUN's parts with the shipped ones; write nothing")
    args = p.parse_args()
    run, data = ROOT / args.run, ROOT / args.data

    out = SHIPPED["inf-llava-mini"]
    if args.verify:
        sys.exit(verify(run, out))
    if out.exists():
        shutil.rmtree(out)
    export_parts(run / "stage2" / "final", out, dtype=torch.float16)
    size = sum(f.stat().st_size for f in out.iterdir())
    print(f"parts -> {out.relative_to(ROOT)} ({size / 2**20:.1f} MiB)")

    run_scores = json.loads((run / "test_scores.json").read_text())
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
    example = {"image": "hrvqa-example.png", "note": note, "caveat": args.caveat, "questions": [
        {"question": q["prompt"].replace("<image>\n", ""), "answer": q["answer"], "kind": q["kind"],
         "subtype": q["subtype"]} for q in recs]}
    (ROOT / "examples" / "hrvqa-example.json").write_text(json.dumps(example, indent=1) + "\n")
    print(f"example -> examples/hrvqa-example.png ({note})")


def verify(run: Path, shipped: Path) -> int:
    """0 when RUN's float16 parts equal the shipped ones tensor for tensor (and the model config agrees)."""
    differs = 0
    with tempfile.TemporaryDirectory() as tmp:
        mine = export_parts(run / "stage2" / "final", Path(tmp) / "parts", dtype=torch.float16)
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
