"""`infllava eval`: answer every question of a LLaVA-format file and score it per kind.

Questions are answered greedily in left-padded batches through `generate` (the same processor and
templates as chat). Scoring is normalised exact match (`hrvqa.scoring.normalize_answer`), reported
overall, per `kind` and per `subtype` when the records carry them. Predictions and scores are written
as JSON so a table can be rebuilt from them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from ..data.records import load_records, record_image_paths, resolve_image_path, to_messages
from ..processing import load_image


def predict(model, processor, records, image_root, batch_size: int = 8, max_new_tokens: int = 8,
            progress: bool = True) -> dict:
    """{record id: generated answer} for the first user turn of each record.

    Each distinct image is encoded once (questions about the same image share its visual tokens).
    """
    from tqdm.auto import tqdm

    preds = {}
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    cache: dict[str, torch.Tensor] = {}  # image path -> projected visual tokens (T, D)
    bar = tqdm(total=len(records), desc="eval", disable=not progress, dynamic_ncols=True)
    for start in range(0, len(records), batch_size):
        chunk = records[start: start + batch_size]
        prompts, paths = [], []
        for r in chunk:
            messages = to_messages(r)
            images = record_image_paths(r)
            prompts.append(processor.chat_prompt(messages[:1], num_images=len(images)))
            paths += [resolve_image_path(p, image_root) for p in images]
        new = [p for p in dict.fromkeys(paths) if p not in cache]
        if new:
            pixels = processor.image_processor.pixels([load_image(p) for p in new]).to(device, dtype)
            with torch.inference_mode():
                for p, f in zip(new, model.image_tokens(pixels)):
                    cache[p] = f
        enc = _tokenize(processor, prompts)
        input_ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
        feats = torch.stack([cache[p] for p in paths]) if paths else None
        with torch.inference_mode():
            embeds = model.embed_inputs(input_ids, image_features=feats)
            out = model.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=max_new_tokens,
                                 do_sample=False)
        for r, text in zip(chunk, processor.batch_decode(out, skip_special_tokens=True)):
            preds[r["id"]] = text.strip()
        if len(cache) > 256:
            cache.clear()
        bar.update(len(chunk))
    bar.close()
    return preds


def _tokenize(processor, prompts):
    """Left-padded ids of prompts whose placeholders are filled from precomputed features."""
    return processor.tokenize_prompts(prompts, "left")


def evaluate(model_dir, data_path, image_root=".", out_path=None, batch_size: int = 8, max_new_tokens: int = 8,
             limit: int | None = None, device=None, dtype=None, feature_cache=None) -> dict:
    """Score `model_dir` on the questions of `data_path`. feature_cache: a folder for the frozen tower's
    outputs per crop (`infllava.model.feature_cache`): the view ablations of one benchmark share their
    crops (full = local crops + the centre global crop, which is also the thumbnail), so each crop of
    the test images runs through the tower once for all of them."""
    from ..inference import load
    from .hrvqa.scoring import score

    records, problems = load_records(data_path)
    if problems:
        raise ValueError(f"{data_path}: {len(problems)} malformed record(s), first: {problems[0]}")
    if limit:
        records = records[:limit]
    model, processor = load(model_dir, device=device, dtype=dtype)
    if feature_cache:
        from ..model.feature_cache import attach_feature_cache

        attach_feature_cache(model, feature_cache)
    t0 = time.perf_counter()
    preds = predict(model, processor, records, image_root, batch_size, max_new_tokens)
    result = score(preds, records)
    result.update(model=str(model_dir), data=str(data_path), seconds=round(time.perf_counter() - t0, 1),
                  views=model.config.views)
    if out_path:
        Path(out_path).write_text(json.dumps({"scores": result, "predictions": preds}, indent=1))
    return result
