"""Grounded alignment (`train.stage: align`): DEM + projector learn where the LM's words are, no LM pass.

An optional stage before LLaVA's stage 1, for small data and small compute. Stage 1 teaches the
projector to speak the LM's input language only through the LM's loss on captions: the gradient of a
few answer tokens reaches the visual tokens through every frozen LM layer, and a small model sees too
few images for that to work (INF-LLaVA-mini: ~1000 images left own- and other-image losses within
0.01 nats). This stage gives the visual tokens a direct target instead, from grounded captions
(phrases with boxes, as in Flickr30k Entities or GRIT):

    {"id": ..., "image": "a.png", "conversations": [...],
     "regions": [{"bbox": [x0, y0, x1, y1], "phrase": "small red square"}, ...]}

`bbox` in pixels of the record's image (x1, y1 exclusive). Every visual token covers one cell of the
model's h x w feature grid laid over its input (the padded / resized image; all views merge to that
grid). The target of a token is the mean input embedding of the LM (frozen) over the tokens of the
phrases whose box centre lies in its cell, or of `train.align_background` where no box centre does.
Loss (`align_loss`): the squared distance between projected token and target, averaged over tokens
and divided by the mean squared norm of the LM's embedding rows (so 1.0 = predicting zeros), plus
`train.align_word_weight` x a word cross-entropy: the token's cosine similarities with the candidate
words (all phrase tokens of the data) over `train.align_temperature`, against its bag of phrase
tokens. The distance alone is met by the words all phrases share and leaves out the telling one.

The frozen tower runs once per image (through `train.feature_cache` when set); its outputs stay in
memory (views full, 3x3 grid, 49 x 320 stage-8 features: ~0.3 MB per image in float16), and each
step is only DEM + projector: seconds per epoch. An interrupted run starts again (the tower outputs
come back from the disk cache); a finished one (`OUTPUT/final` present) is not run again. Single
process only.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..data.records import load_records, resolve_image_path
from ..processing import ImageLoadError, load_image
from .build import apply_stage, build_model, fit_projector_input_norm
from .config import ConfigError, RunConfig
from .final import save_final
from .schedule import lr_lambda


def region_problem(regions: Any) -> str | None:
    """Why a record's "regions" field is unusable, or None."""
    if not isinstance(regions, list) or not regions:
        return "regions must be a non-empty list of {bbox, phrase}"
    for k, r in enumerate(regions):
        if not isinstance(r, Mapping):
            return f"regions[{k}] is not an object"
        box = r.get("bbox")
        if (not isinstance(box, Sequence) or len(box) != 4
                or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in box)):
            return f"regions[{k}].bbox must be 4 numbers [x0, y0, x1, y1]"
        if box[2] < box[0] or box[3] < box[1]:
            return f"regions[{k}].bbox {list(box)} has x1 < x0 or y1 < y0"
        if not isinstance(r.get("phrase"), str) or not r["phrase"].strip():
            return f"regions[{k}].phrase must be a non-empty string"
        if not isinstance(r.get("cover", False), bool):
            return f"regions[{k}].cover must be true or false"
    return None


def region_cells(regions: Sequence[Mapping[str, Any]], image_size: tuple[int, int], grid: tuple[int, int],
                 feature_grid: tuple[int, int], aspect_mode: str = "pad") -> dict[int, list[str]]:
    """{token index: phrases} for the regions whose box centre lies in the token's cell; a region with
    ``"cover": true`` also names every token whose cell centre lies inside its box (a large object is
    named wherever it is, not only at its centre, where "background" would otherwise be the target).

    image_size (W, H) of the original image; the image processor pads it (centred) to the grid's
    aspect ("pad", as `expand_to_aspect`) or stretches it ("resize") to the model input, over which
    the h x w tokens lie in row-major order. A centre outside the image raises ValueError.
    """
    W, H = image_size
    gh, gw = grid
    h, w = feature_grid
    dx = dy = 0
    cw, ch = W, H
    if aspect_mode == "pad" and W * gh != H * gw:
        if W * gh > H * gw:  # too wide: rows added (the same rounding as expand_to_aspect)
            ch = (2 * W * gh + gw) // (2 * gw)
            dy = (ch - H) // 2
        else:
            cw = (2 * H * gw + gh) // (2 * gh)
            dx = (cw - W) // 2
    cells: dict[int, list[str]] = {}
    for r in regions:
        x0, y0, x1, y1 = r["bbox"]
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        if not (0 <= cx <= W and 0 <= cy <= H):
            raise ValueError(f"region {r['phrase']!r}: box centre ({cx:g}, {cy:g}) lies outside the {W}x{H} image")
        row = min(h - 1, int((cy + dy) * h / ch))
        col = min(w - 1, int((cx + dx) * w / cw))
        named = {row * w + col}
        if r.get("cover"):
            named |= {i * w + j for i in range(h) for j in range(w)
                      if y0 <= (i + 0.5) * ch / h - dy <= y1 and x0 <= (j + 0.5) * cw / w - dx <= x1}
        for cell in sorted(named):
            cells.setdefault(cell, []).append(r["phrase"].strip())
    return cells


def phrase_embedding(embeddings: torch.Tensor, tokenizer, phrases: Sequence[str]) -> torch.Tensor:
    """Mean input embedding over the tokens of the phrases (D,)."""
    ids = [i for p in phrases for i in tokenizer(p, add_special_tokens=False)["input_ids"]]
    if not ids:
        raise ValueError(f"phrases {list(phrases)!r} have no tokens")
    return embeddings[torch.tensor(ids)].float().mean(0)


def align_targets(model, tokenizer, cells: Sequence[dict[int, list[str]]], background: str) -> torch.Tensor:
    """(N, T, D) targets for N images from their `region_cells`: each token's bag of phrase tokens
    (`word_targets`) averaged over the LM's input embeddings, i.e. `phrase_embedding` of its phrases."""
    cand_ids, dist = word_targets(tokenizer, cells, background, model.config.num_image_tokens)
    return dist @ model.get_input_embeddings().weight.detach().float()[cand_ids]


def word_targets(tokenizer, cells: Sequence[dict[int, list[str]]], background: str, T: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(candidate token ids (C,), (N, T, C) distributions): each token's phrases as a bag of their
    tokens over the candidate vocabulary (every token of every phrase, and the background's)."""
    def ids(phrases):
        return [i for p in phrases for i in tokenizer(p, add_special_tokens=False)["input_ids"]]

    bags = [[ids(c.get(t, [background])) for t in range(T)] for c in cells]
    vocab = sorted({i for img in bags for bag in img for i in bag})
    where = {v: k for k, v in enumerate(vocab)}
    dist = torch.zeros(len(cells), T, len(vocab))
    for n, img in enumerate(bags):
        for t, bag in enumerate(img):
            for i in bag:
                dist[n, t, where[i]] += 1.0 / len(bag)
    return torch.tensor(vocab), dist


def align_loss(x: torch.Tensor, target: torch.Tensor, dist: torch.Tensor, cand: torch.Tensor, scale: torch.Tensor,
               temperature: float, weight: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(squared distance / scale, word cross-entropy), each averaged over tokens (weighted by `weight`
    (B, T) when given: sum(weight * loss) / sum(weight)).

    The distance pulls a token towards the mean embedding of its phrases (the LM's input scale); the
    cross-entropy makes it name them: cosine similarities with the candidate words' embeddings over
    `temperature`, against the token's bag of phrase tokens. The distance alone is met by the words
    all phrases share ("small", "digit") and leaves the telling one (which digit) out."""
    mse = (x - target).pow(2).sum(-1) / scale  # (B, T)
    logits = F.normalize(x, dim=-1) @ F.normalize(cand, dim=-1).T / temperature
    ce = -(dist * logits.log_softmax(-1)).sum(-1)
    if weight is None:
        return mse.mean(), ce.mean()
    return (weight * mse).sum() / weight.sum(), (weight * ce).sum() / weight.sum()


def train_align(cfg: RunConfig) -> Path:
    """Run the align stage; returns OUTPUT/final (a model directory with adapter.safetensors)."""
    from accelerate.utils import set_seed

    t = cfg.train
    cfg.check_paths()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("train.stage: align runs in one process (it takes minutes); launch it without torchrun")
    out = Path(t.output_dir)
    final = out / "final"
    if (final / "config.json").is_file():
        print(f"{final} exists: the align stage is done (delete it to run again)")
        return final
    set_seed(t.seed)
    model, processor, provenance = build_model(cfg)
    provenance = apply_stage(model, cfg, provenance)
    if t.feature_cache:
        from ..model.feature_cache import attach_feature_cache

        attach_feature_cache(model, t.feature_cache)
    mc = model.config
    ip = processor.image_processor
    out.mkdir(parents=True, exist_ok=True)
    log = open(out / "train.log", "a", buffering=1)
    log.write(json.dumps({"event": "start", "processes": 1, "config": asdict(cfg)}) + "\n")

    records, problems = load_records(cfg.data.path)
    for where, message in problems:
        log.write(json.dumps({"event": "skip", "id": where, "reason": f"malformed: {message}"}) + "\n")
    feats, cells, skipped = [], [], len(problems)
    t0 = time.perf_counter()
    model.eval()
    for rec in records:
        rid = rec.get("id")
        image = rec.get("image")
        why = None if isinstance(image, str) else "align needs exactly one image per record"
        why = why or region_problem(rec.get("regions"))
        if why is None:
            path = resolve_image_path(image, cfg.data.images)
            try:
                image = load_image(path, max_pixels=ip.max_pixels)  # EXIF-transposed: the size the model sees
                pixels = ip.pixels([image])
                size = image.size
                c = region_cells(rec["regions"], size, tuple(mc.grid), tuple(mc.feature_grid), ip.aspect_mode)
            except (ImageLoadError, OSError, ValueError) as e:
                why = f"{type(e).__name__}: {e}"
        if why is not None:
            skipped += 1
            log.write(json.dumps({"event": "skip", "id": rid, "reason": why}) + "\n")
            continue
        with torch.no_grad():
            crops = model.image_crops(pixels)
            f = model.vision_tower(crops.flatten(0, 1))
        feats.append(f.to(torch.float16))
        cells.append(c)
        if len(feats) % 250 == 0:
            print(f"align: tower features of {len(feats)} images ({time.perf_counter() - t0:.0f} s)", flush=True)
    if not feats:
        raise ConfigError(f"{cfg.data.path}: no record has an image and valid regions ({skipped} skipped; see {out}/train.log)")
    N = len(feats)
    feats = torch.stack(feats)  # (N, crops, T, d)
    if model.projector.needs_fit:
        # the generator runs inside fit_projector_input_norm (no_grad) and stops at its image budget
        n = fit_projector_input_norm(model, (model.merge_crop_features(feats[i: i + 32].float()) for i in range(0, N, 32)))
        print(f"align: projector input statistics fitted on {n} images", flush=True)
    emb = model.get_input_embeddings().weight.detach().float()
    scale = emb.pow(2).sum(-1).mean()
    # each token's bag of phrase tokens; its distance target is the bag's mean embedding, dist @ cand
    cand_ids, dist = word_targets(processor.tokenizer, cells, t.align_background, mc.num_image_tokens)
    cand = emb[cand_ids]
    # tokens with a region in their cell weigh train.align_region_weight, background tokens 1
    weight = torch.ones(N, mc.num_image_tokens)
    for i, c in enumerate(cells):
        weight[i, list(c)] = t.align_region_weight
    print(f"align: {N} images ({skipped} skipped), tower {time.perf_counter() - t0:.0f} s", flush=True)

    B = min(t.global_batch_size, N)
    steps_per_epoch = N // B
    total = t.max_steps or max(1, math.ceil(t.epochs * steps_per_epoch))
    params = [p for m in (model.dem, model.projector) for p in m.parameters() if p.requires_grad]
    lr = t.projector_lr or t.lr
    opt = torch.optim.AdamW([{"params": [p for p in params if p.ndim >= 2], "weight_decay": t.weight_decay},
                             {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}], lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, partial(lr_lambda, warmup=int(round(t.warmup_ratio * total)),
                                                           total=total, kind=t.scheduler))
    g = torch.Generator().manual_seed(t.seed)
    model.train()
    step, t0, order = 0, time.perf_counter(), torch.empty(0, dtype=torch.long)
    while step < total:
        if order.numel() < B:
            order = torch.cat([order, torch.randperm(N, generator=g)])
        idx, order = order[:B], order[B:]
        x = model.projector(model.merge_crop_features(feats[idx].float()))
        mse, ce = align_loss(x, dist[idx] @ cand, dist[idx], cand, scale, t.align_temperature, weight[idx])
        loss = mse + t.align_word_weight * ce
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if t.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, t.max_grad_norm)
        opt.step()
        sched.step()
        step += 1
        if step % t.log_every == 0 or step == total:
            rec = {"step": step, "loss": round(float(loss.detach()), 6), "distance": round(float(mse.detach()), 6),
                   "word_ce": round(float(ce.detach()), 6), "lr": sched.get_last_lr()[0],
                   "samples_per_s": round(t.log_every * B / (time.perf_counter() - t0), 1)}
            log.write(json.dumps(rec) + "\n")
            print(f"align: step {step}/{total} loss {rec['loss']:.4f} (distance {rec['distance']:.4f}, "
                  f"word cross-entropy {rec['word_ce']:.4f})", flush=True)
            t0 = time.perf_counter()
    log.close()
    model.eval()
    save_final(model, processor, final, provenance, save_full_model=cfg.train.save_full_model)
    return final
