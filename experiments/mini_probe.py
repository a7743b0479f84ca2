"""Is the answer in the frozen EfficientNet-Lite0 features at all? Linear probes on HR-VQA.

A diagnostic for INF-LLaVA-mini: before asking the LM to read an answer out of the visual tokens,
check that the tower's features hold it. For each probe a logistic regression is fitted on the
feature vector of the feature-grid cell that holds the question's target, computed from HR-VQA
train images, and scored on test images:

* digit (detail): the digit in the small white box, from the cell of the *local crop* holding the box
  (what the DCM's local perspective sees) and from the cell of the 224-px *thumbnail* (what a
  LLaVA-1.5-like model sees);
* largest (global): the colour of the largest shape, from the thumbnail cell at its centre.

    python experiments/mini_probe.py [--train-images 900] [--test-images 340] [--stages 6 8]

Prints the accuracy of each probe and the majority-class rate of its test answers.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

import numpy as np
import torch
from PIL import Image

from infllava.model.towers.efficientnet_lite import EfficientNetLiteConfig, EfficientNetLiteTower, efficientnet_image_norm
from infllava.evaluation.hrvqa.rendering import make_sample

S = 224


def _prep(img: Image.Image) -> torch.Tensor:
    mean, std = efficientnet_image_norm()
    x = torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


def _cell(feats: torch.Tensor, x: float, y: float) -> torch.Tensor:
    g = int(round(feats.shape[0] ** 0.5))
    step = S / g
    return feats.view(g, g, -1)[min(g - 1, int(y // step)), min(g - 1, int(x // step))]


def collect(split: str, n: int, towers: dict[int, EfficientNetLiteTower]):
    """{(probe, stage): (X, answers)} for the first n images of a split."""
    out: dict[tuple[str, int], tuple[list, list]] = {}
    for index in range(n):
        image, questions = make_sample(split, index)
        thumb = _prep(image.resize((S, S), Image.BICUBIC))
        for q in questions:
            if q["subtype"] not in ("digit", "largest"):
                continue
            if q["subtype"] == "digit":
                x0, y0, x1, y1 = q["meta"]["bbox"]
                cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
                ti, tj = q["meta"]["tile"]
                local = _prep(image.crop((tj * S, ti * S, tj * S + S, ti * S + S)))
                views = {"digit/local": (local, cx - tj * S, cy - ti * S), "digit/thumbnail": (thumb, cx / 3, cy / 3)}
            else:
                cx, cy = q["meta"]["center"]
                views = {"largest/thumbnail": (thumb, cx / 3, cy / 3)}
            for stage, tower in towers.items():
                with torch.no_grad():
                    feats = tower(torch.stack([v[0] for v in views.values()]))
                for (name, (_, x, y)), f in zip(views.items(), feats):
                    xs, ys = out.setdefault((name, stage), ([], []))
                    xs.append(_cell(f, x, y))
                    ys.append(q["answer"])
    return out


def probe(train_x, train_y, test_x, test_y) -> float:
    classes = sorted(set(train_y) | set(test_y))
    X, Xt = torch.stack(train_x), torch.stack(test_x)
    mu, sd = X.mean(0), X.std(0) + 1e-5
    X, Xt = (X - mu) / sd, (Xt - mu) / sd
    Y = torch.tensor([classes.index(a) for a in train_y])
    Yt = torch.tensor([classes.index(a) for a in test_y])
    torch.manual_seed(0)
    W = torch.zeros(X.shape[1], len(classes), requires_grad=True)
    b = torch.zeros(len(classes), requires_grad=True)
    opt = torch.optim.Adam([W, b], lr=1e-2)
    for _ in range(400):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(X @ W + b, Y) + 1e-3 * W.square().sum()
        loss.backward()
        opt.step()
    return ((Xt @ W + b).argmax(1) == Yt).float().mean().item()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--train-images", type=int, default=900)
    p.add_argument("--test-images", type=int, default=340)
    p.add_argument("--stages", type=int, nargs="+", default=[6, 8])
    args = p.parse_args()
    t0 = time.perf_counter()
    towers = {}
    for stage in args.stages:
        tower = EfficientNetLiteTower(EfficientNetLiteConfig(variant="efficientnet-lite0", stage=stage))
        tower.load_pretrained()
        towers[stage] = tower.eval()
    train = collect("train", args.train_images, towers)
    test = collect("test", args.test_images, towers)
    print(f"linear probes on frozen EfficientNet-Lite0 cells; fit on {args.train_images} train images, "
          f"scored on {args.test_images} test images")
    for key in sorted(train):
        name, stage = key
        acc = probe(*train[key], *test[key])
        majority = Counter(test[key][1]).most_common(1)[0][1] / len(test[key][1])
        print(f"{name:18s} stage {stage}  train {len(train[key][1]):4d}  test {len(test[key][1]):4d}  "
              f"accuracy {acc * 100:5.1f}%  (majority answer {majority * 100:4.1f}%)")
    print(f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
