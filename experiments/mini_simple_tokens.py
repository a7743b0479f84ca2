"""Do a model's visual tokens carry the colour and shape of a simple scene's only / largest shape?

For mixture images (infllava.evaluation.hrvqa.mixture) whose colour question is asked (one shape, or one
clearly largest), take the visual token (projector output) whose cell holds that shape's centre (the
image padded to square as the processor does) and measure:

* readout, as the align stage targets it: is the LM input embedding of "COLOR SHAPE" with the true colour
  the nearest by cosine among the 12 colours (true shape given)? And the true shape among the 7 (true
  colour given)? And is the phrase nearer than "background"?
* linear probes (logistic regression, fit on --fit images of mixture-train, scored on mixture-val): colour
  and shape from that token, and colour from the mean of all 196 tokens; is the information there at all?

    python experiments/mini_simple_tokens.py MODEL [--fit 200] [--data .cache/hrvqa]
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

from infllava.evaluation.hrvqa.mixture import MIXTURE_COLORS, MIXTURE_SHAPES, make_simple_scene
from infllava.inference import load
from infllava.model.feature_cache import attach_feature_cache
from infllava.processing import load_image
from infllava.training.align import phrase_embedding


def samples(model, proc, data: str, split: str, n: int):
    """(centre token, mean token, colour index, shape index) per image of `split` with a colour question."""
    h, w = model.config.feature_grid
    out = []
    with open(f"{data}/{split}.jsonl") as f:
        indices = sorted({int(json.loads(line)["image"].rsplit("/", 1)[1][:6]) for line in f})
    for i in indices[:n]:
        scene = make_simple_scene(split, i)
        q = next((q for q in scene.questions if q["subtype"] == "color"), None)
        if q is None:
            continue
        with torch.no_grad():
            tokens = model.image_tokens(proc.image_processor.pixels(
                [load_image(f"{data}/images/{split}/{i:06d}.png")]))[0]
        (iw, ih), (x0, y0, x1, y1) = scene.size, q["meta"]["bbox"]
        side = max(iw, ih)
        cx, cy = (x0 + x1) / 2 + (side - iw) // 2, (y0 + y1) / 2 + (side - ih) // 2
        v = tokens[min(h - 1, int(cy * h // side)) * w + min(w - 1, int(cx * w // side))]
        obj = q["meta"]["target"].split()
        out.append((v, tokens.mean(0), list(MIXTURE_COLORS).index(obj[0]), MIXTURE_SHAPES.index(obj[1])))
    return out


def probe(x_fit, y_fit, x_test, y_test, classes: int, steps: int = 300) -> float:
    mu, sd = x_fit.mean(0), x_fit.std(0) + 1e-6
    x_fit, x_test = (x_fit - mu) / sd, (x_test - mu) / sd
    torch.manual_seed(0)
    lin = torch.nn.Linear(x_fit.shape[1], classes)
    opt = torch.optim.Adam(lin.parameters(), lr=1e-2, weight_decay=1e-3)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(lin(x_fit), y_fit).backward()
        opt.step()
    return 100 * (lin(x_test).argmax(1) == y_test).float().mean().item()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--fit", type=int, default=200)
    p.add_argument("--data", default=".cache/hrvqa")
    a = p.parse_args()
    model, proc = load(a.model)
    attach_feature_cache(model, ".cache/features")
    emb, tok = model.get_input_embeddings().weight.detach(), proc.tokenizer
    colors = list(MIXTURE_COLORS)
    background = phrase_embedding(emb, tok, ["background"])
    test = samples(model, proc, a.data, "mixture-val", 10_000)
    right = {"colour": 0, "shape": 0, "phrase nearer than background": 0}
    for v, _, c, s in test:
        cand = torch.stack([phrase_embedding(emb, tok, [f"{k} {MIXTURE_SHAPES[s]}"]) for k in colors])
        right["colour"] += int(F.cosine_similarity(v[None], cand).argmax()) == c
        cand = torch.stack([phrase_embedding(emb, tok, [f"{colors[c]} {k}"]) for k in MIXTURE_SHAPES])
        right["shape"] += int(F.cosine_similarity(v[None], cand).argmax()) == s
        true = phrase_embedding(emb, tok, [f"{colors[c]} {MIXTURE_SHAPES[s]}"])
        right["phrase nearer than background"] += float(F.cosine_similarity(v, true, 0)) > float(
            F.cosine_similarity(v, background, 0))
    fit = samples(model, proc, a.data, "mixture-train", a.fit)
    stack = lambda rows, k: torch.stack([r[k] for r in rows]).float()  # noqa: E731
    label = lambda rows, k: torch.tensor([r[k] for r in rows])  # noqa: E731
    probes = {
        "colour from the centre token": probe(stack(fit, 0), label(fit, 2), stack(test, 0), label(test, 2), 12),
        "shape from the centre token": probe(stack(fit, 0), label(fit, 3), stack(test, 0), label(test, 3), 7),
        "colour from the mean token": probe(stack(fit, 1), label(fit, 2), stack(test, 1), label(test, 2), 12),
    }
    print(f"{a.model} (views {model.config.views}), {len(test)} mixture-val shapes; readout (chance 8 / 14%): "
          + ", ".join(f"{k} {100 * n / len(test):.1f}%" for k, n in right.items()))
    print(f"linear probes fit on {len(fit)} mixture-train shapes: " + ", ".join(f"{k} {v:.1f}%" for k, v in probes.items()))


if __name__ == "__main__":
    main()
