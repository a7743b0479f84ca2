"""Do a model's visual tokens name what is in their cell? A readout of the align stage's effect.

For each of the first N images of a split, take the visual token (projector output) whose cell holds
the centre of (a) the digit box and (b) each small shape, and compare it by cosine with the LM's
input embeddings of the phrases the align stage targets: "digit 0" ... "digit 9" for the box;
"small COLOR SHAPE" over the 7 colours (true shape) and over the 3 shapes (true colour) for a small
shape. Prints how often the nearest phrase is the right one (chance: 10% digits, 14% colours, 33%
shapes).

    python experiments/mini_token_words.py MODEL_DIR [--split test] [--images 100]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from infllava.evaluation.hrvqa.scenes import COLORS, SHAPES, make_scene
from infllava.inference import load
from infllava.model.feature_cache import attach_feature_cache
from infllava.processing import load_image
from infllava.training.align import phrase_embedding

DATA = ".cache/hrvqa"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--split", default="test")
    p.add_argument("--images", type=int, default=100)
    a = p.parse_args()
    model, proc = load(a.model)
    attach_feature_cache(model, ".cache/features")
    emb, tok = model.get_input_embeddings().weight.detach(), proc.tokenizer
    colors = list(COLORS)
    digits = torch.stack([phrase_embedding(emb, tok, [f"digit {d}"]) for d in range(10)])
    h, w = model.config.feature_grid
    right = {"digit": 0, "small colour": 0, "small shape": 0}
    total = {"digit": 0, "small colour": 0, "small shape": 0}
    for i in range(a.images):
        scene = make_scene(a.split, i)
        with torch.no_grad():
            feats = model.image_tokens(proc.image_processor.pixels([load_image(f"{DATA}/images/{a.split}/{i:06d}.png")]))[0]
        for o in scene.objects:
            x, y = o.center
            v = feats[min(h - 1, int(y * h // scene.size)) * w + min(w - 1, int(x * w // scene.size))]
            if o.kind == "box":
                right["digit"] += int(F.cosine_similarity(v[None], digits).argmax()) == o.digit
                total["digit"] += 1
            elif o.kind == "small":
                cand = torch.stack([phrase_embedding(emb, tok, [f"small {c} {o.shape}"]) for c in colors])
                right["small colour"] += colors[int(F.cosine_similarity(v[None], cand).argmax())] == o.color
                total["small colour"] += 1
                cand = torch.stack([phrase_embedding(emb, tok, [f"small {o.color} {s}"]) for s in SHAPES])
                right["small shape"] += SHAPES[int(F.cosine_similarity(v[None], cand).argmax())] == o.shape
                total["small shape"] += 1
    print(f"{a.model} ({a.split}, {a.images} images, views {model.config.views}): " + ", ".join(
        f"{k} {100 * right[k] / total[k]:.1f}% of {total[k]}" for k in right))


if __name__ == "__main__":
    main()
