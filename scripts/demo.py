"""`make demo`: answer a question about the example image with the embedded default model.

Until a trained small model ships, the default is a tiny INF-LLaVA with RANDOM weights, built here
on first use: the answer is noise, but every stage (pad + resize to n x S, local/global crops, one
batched tower call, DEM, projector, LM with streaming generation) runs for real.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    from infllava.cli import main as cli_main
    from infllava.tiny import build_tiny_model

    model_dir = ROOT / ".cache" / "demo-model"
    if not (model_dir / "config.json").exists():
        build_tiny_model(model_dir)
    image = ROOT / "examples" / "house.png"
    question = "What is in the picture?"
    print("=" * 72)
    print("infllava demo: the default model has RANDOM WEIGHTS (no trained model ships yet),")
    print("so the answer below is noise; the full INF-LLaVA pipeline runs for real.")
    print(f"model: {model_dir}\nimage: {image}\nquestion: {question}")
    print("=" * 72)
    from infllava.processing import InfLlavaProcessor
    from infllava.visualize import crops_picture

    picture = crops_picture(image, InfLlavaProcessor.from_pretrained(model_dir).image_processor,
                            ROOT / ".cache" / "demo-crops.png")
    print(f"the model's input, local crops, global crops and thumbnail: {picture}")
    print("answer: ", end="", flush=True)
    return cli_main(["chat", str(model_dir), "--image", str(image), question, "--max-new-tokens", "24"])


if __name__ == "__main__":
    sys.exit(main())
