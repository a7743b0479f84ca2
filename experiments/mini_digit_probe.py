"""Where along a trained INF-LLaVA-mini's vision path does the digit (or the small shape's colour / shape) stop being readable?

The raw local-crop cell of EfficientNet-Lite0 holds the HR-VQA digit (experiments/mini_probe.py), yet the
align stage memorises the train digits instead of reading them (docs/inf-llava-mini.md). This fits the
same linear probe (mini_probe.probe: logistic regression on standardised features, fitted on train
images, scored on test images) at each step of a model's path, at the position of the digit box's centre:

  local cell  the tower's output for the local crop holding the centre, at its cell (d)
  fused       the DEM's fused map at that position (d; full view only)
  high        the DEM's output after the downsampling, at the token's cell (d; full view only)
  merged      the visual feature after the thumbnail is merged in, before the projector (d)
  token       the projector's output, what the LM reads (D)

    python experiments/mini_digit_probe.py MODEL_DIR [--target digit|color|shape] [--train-images 600] [--test-images 340]

--target color / shape probe the small shape's colour / shape at its centre instead of the digit box's digit.

A probe that fits the train images but not the test images says the representation is specific to the
images, not the digit.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mini_probe import probe  # noqa: E402  (experiments/ is not a package)

from infllava.evaluation.hrvqa.scenes import make_scene  # noqa: E402
from infllava.inference import load  # noqa: E402
from infllava.model.feature_cache import attach_feature_cache  # noqa: E402
from infllava.processing import load_image  # noqa: E402

DATA = ".cache/hrvqa"


def collect(model, proc, split: str, n: int, target: str = "digit") -> tuple[dict[str, list[torch.Tensor]], list]:
    cfg = model.config
    gh, gw = cfg.grid
    h, w = cfg.feature_grid
    full = cfg.views == "full"
    seen: dict[str, torch.Tensor] = {}
    # the model's own path (get_image_features), its intermediate outputs taken by hooks
    hooks = [model.vision_tower.register_forward_hook(lambda m, i, o: seen.update(feats=o)),
             model.projector.register_forward_hook(lambda m, i, o: seen.update(merged=i[0], token=o))]
    if full:
        hooks.append(model.dem.fuse_norm.register_forward_hook(lambda m, i, o: seen.update(fused=o)))
        hooks.append(model.dem.register_forward_hook(lambda m, i, o: seen.update(high=o)))
    reps: dict[str, list[torch.Tensor]] = {}
    labels = []
    try:
        for index in range(n):
            scene = make_scene(split, index)
            obj = next(o for o in scene.objects if o.kind == ("box" if target == "digit" else "small"))
            x, y = obj.center
            Y, X = int(y * gh * h // scene.size), int(x * gw * w // scene.size)  # position in the n*h x n*w map
            with torch.no_grad():
                model.image_tokens(proc.image_processor.pixels([load_image(f"{DATA}/images/{split}/{index:06d}.png")]))
            feats, merged, token = seen["feats"], seen["merged"], seen["token"]  # (N, T, d), (1, T, d), (1, T, D)
            k = (Y // h) * gw + X // w  # the local crop holding the centre (local crops come first)
            t = (Y // gh) * w + X // gw  # the token whose cell holds it
            out = {"local cell": feats[k].view(h, w, -1)[Y % h, X % w] if cfg.views in ("full", "local") else None,
                   "merged": merged[0, t], "token": token[0, t]}
            if full:
                o = (Y % gh) * gw + X % gw  # the offset (i, j) of the position inside its cell
                out["fused"] = seen["fused"][0, o, Y // gh, X // gw]
                out["high"] = seen["high"][0, Y // gh, X // gw]
            for name, v in out.items():
                if v is not None:
                    reps.setdefault(name, []).append(v.float())
            labels.append(getattr(obj, target))
    finally:
        for hk in hooks:
            hk.remove()
    return reps, labels


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model")
    p.add_argument("--target", choices=("digit", "color", "shape"), default="digit")
    p.add_argument("--train-images", type=int, default=600)
    p.add_argument("--test-images", type=int, default=340)
    a = p.parse_args()
    t0 = time.perf_counter()
    model, proc = load(a.model)
    model.eval()
    attach_feature_cache(model, ".cache/features")
    train, ytr = collect(model, proc, "train", a.train_images, a.target)
    test, yte = collect(model, proc, "test", a.test_images, a.target)
    majority = Counter(yte).most_common(1)[0][1] / len(yte)
    print(f"{a.model} (views {model.config.views}): {a.target} probes, fit on {len(ytr)} train images, "
          f"scored on {len(yte)} test images (majority {100 * majority:.1f}%)")
    for name in ("local cell", "fused", "high", "merged", "token"):
        if name in train:
            fit = probe(train[name], ytr, train[name], ytr)
            acc = probe(train[name], ytr, test[name], yte)
            print(f"  {name:10s} d={train[name][0].numel():4d}  train {100 * fit:5.1f}%  test {100 * acc:5.1f}%")
    print(f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
