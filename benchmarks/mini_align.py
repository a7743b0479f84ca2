"""Experiment: does a grounded token-alignment warm start let the frozen LM read the image?

Trains only the DEM + projector of one INF-LLaVA-mini variant so that each of its 7 x 7 visual tokens
lands near the LM's input embedding of the words naming the objects centred in that token's image
cell (colour, shape, digit), with the LM untouched (no LM forward: seconds per epoch). Then asks the
frozen LM the test questions zero-shot and prints accuracy per kind.

    python benchmarks/mini_align.py --views full --train-images 1500 --epochs 30 --questions 300
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from infllava.evaluation.evaluate import _tokenize
from infllava.evaluation.hrvqa import ANSWERS, iter_questions, load_jsonl, make_scene
from infllava.model.feature_cache import FeatureCache, tower_fingerprint
from infllava.processing import load_image
from infllava.training.build import build_model
from infllava.training.config import load_config

DATA = ".cache/hrvqa"


def words_of(obj) -> list[str]:
    if obj.kind == "box":
        return [str(obj.digit)]
    return [obj.color, obj.shape]


def targets(model, proc, indices, h: int, w: int):
    """(N, h*w, D) target embeddings: the mean input embedding of the words of the objects centred
    in each token's cell; 'background' where none is."""
    emb = model.get_input_embeddings().weight.detach()
    tok = proc.tokenizer

    def vec(word):
        ids = tok(word, add_special_tokens=False)["input_ids"]
        return emb[ids[0]]

    cache = {}
    out = torch.empty(len(indices), h * w, emb.shape[1])
    for n, i in enumerate(indices):
        scene = make_scene("train", i)
        cells: dict[int, list[str]] = {}
        for o in scene.objects:
            x, y = o.center
            c = min(h - 1, int(y * h // scene.size)) * w + min(w - 1, int(x * w // scene.size))
            cells.setdefault(c, []).extend(words_of(o))
        for c in range(h * w):
            ws = cells.get(c, ["background"])
            out[n, c] = torch.stack([cache.setdefault(x, vec(x)) for x in ws]).mean(0)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--views", default="full")
    p.add_argument("--train-images", type=int, default=1500)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--questions", type=int, default=300)
    p.add_argument("--save", default="")
    a = p.parse_args()
    torch.manual_seed(0)
    cfg = load_config("configs/mini/pretrain.yaml", [f"model.views={a.views}", "model.template=chat_template"])
    model, proc = build_model(cfg)
    tower = model.vision_tower
    tower.feature_cache = FeatureCache(".cache/features", tower_fingerprint(tower, model.config.vision_config.to_dict()))
    h, w = model.config.feature_grid

    t0 = time.perf_counter()
    idx = list(range(a.train_images))
    recorded: list[torch.Tensor] = []
    real_forward = tower.forward
    pixels_of = lambda i: proc.image_processor([load_image(f"{DATA}/images/train/{i:06d}.png")])
    def record(x):
        out = real_forward(x)
        recorded.append(out.half())
        return out

    tower.forward = record
    with torch.no_grad():
        for i in idx:
            model.encode_images(pixels_of(i))
            if i % 250 == 0:
                print(f"  {i} images ({time.perf_counter() - t0:.0f} s)", flush=True)
    print(f"tower features of {len(idx)} images: {time.perf_counter() - t0:.0f} s "
          f"(cache hits {tower.feature_cache.hits}, misses {tower.feature_cache.misses})", flush=True)
    y = targets(model, proc, idx, h, w)
    print(f"target norm {y.norm(dim=-1).mean():.3f}", flush=True)

    S = model.config.tower_image_size
    dummy = torch.zeros(1, 3, model.config.input_size[0], model.config.input_size[1])
    feed: list[torch.Tensor] = []
    tower.forward = lambda x: feed[0].float()
    params = [q for m in (model.dem, model.projector) for q in m.parameters()]
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.0)
    steps = a.epochs * (len(idx) // a.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, a.lr, total_steps=max(1, steps), pct_start=0.05)
    scale = y.pow(2).sum(-1).mean()
    g = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    step = 0
    for ep in range(a.epochs):
        perm = torch.randperm(len(idx), generator=g)
        tot = 0.0
        for s in range(len(idx) // a.batch):
            b = perm[s * a.batch:(s + 1) * a.batch]
            feed[:] = [torch.cat([recorded[int(k)] for k in b])]
            out = model.projector(model.encode_images(dummy.expand(len(b), -1, -1, -1)))
            loss = (out - y[b]).pow(2).sum(-1).mean() / scale
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            tot += float(loss.detach())
            step += 1
        if ep % 5 == 4 or ep == a.epochs - 1:
            print(f"epoch {ep + 1} loss {tot / (len(idx) // a.batch):.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    tower.forward = real_forward
    model.eval()
    if a.save:
        from infllava.training.trainer import _save_final
        _save_final(model, proc, __import__("pathlib").Path(a.save))
    questions = list(iter_questions(load_jsonl(f"{DATA}/test.jsonl")))[: a.questions]
    t0 = time.perf_counter()
    r = rank(model, proc, questions)
    print(f"zero-shot ranking {a.views}: " + " ".join(f"{k} {100 * v:.1f}" for k, v in r.items())
          + f" ({time.perf_counter() - t0:.0f} s)", flush=True)


def rank(model, proc, questions, batch: int = 16) -> dict[str, float]:
    """Closed-vocabulary accuracy: the answer of the question's subtype whose first token the LM
    rates highest right after the assistant turn starts (the LM need not know the answer format)."""
    tok = proc.tokenizer
    first = {s: [tok(x, add_special_tokens=False)["input_ids"][0] for x in opts] for s, opts in ANSWERS.items()}
    hits: dict[str, list[int]] = {}
    feats: dict[str, torch.Tensor] = {}
    for s in range(0, len(questions), batch):
        chunk = questions[s: s + batch]
        for q in chunk:
            if q["image"] not in feats:
                with torch.no_grad():
                    feats[q["image"]] = model.get_image_features(proc.image_processor([load_image(f"{DATA}/{q['image']}")]))[0]
        prompts = [proc.chat_prompt([{"role": "user", "content": q["prompt"]}], num_images=1) for q in chunk]
        enc = _tokenize(proc, prompts)
        with torch.no_grad():
            emb = model.embed_inputs(enc["input_ids"], image_features=torch.stack([feats[q["image"]] for q in chunk]))
            logits = model(inputs_embeds=emb, attention_mask=enc["attention_mask"], logits_to_keep=1).logits[:, -1]
        for q, row in zip(chunk, logits):
            opts = ANSWERS[q["subtype"]]
            pred = opts[int(row[first[q["subtype"]]].argmax())]
            ok = int(pred == q["answer"])
            for key in ("all", q["kind"], q["subtype"]):
                hits.setdefault(key, []).append(ok)
    return {k: sum(v) / len(v) for k, v in hits.items()}

if __name__ == "__main__":
    main()
