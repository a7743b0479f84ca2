"""`infllava eval`: answer every question of a LLaVA-format file and score it per kind.

Questions are answered greedily in left-padded batches through `generate` (the same processor and
templates as chat). Scoring is normalised exact match (`hrvqa.normalize_answer`), reported overall,
per `kind` and per `subtype` when the records carry them. Predictions and scores are written as JSON
so a table can be rebuilt from them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from ..processing import load_image
from ..training.data import load_records, resolve_image_path
from ..training.labels import to_messages


def predict(model, processor, records, image_root, batch_size: int = 8, max_new_tokens: int = 8,
            progress: bool = True) -> dict:
    """{record id: generated answer} for the first user turn of each record."""
    from tqdm.auto import tqdm

    preds = {}
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    bar = tqdm(total=len(records), desc="eval", disable=not progress, dynamic_ncols=True)
    for start in range(0, len(records), batch_size):
        chunk = records[start: start + batch_size]
        convs, images = [], []
        for r in chunk:
            messages = to_messages(r)
            convs.append(messages[:1])
            paths = r.get("image")
            paths = [paths] if isinstance(paths, str) else list(paths or [])
            images.append([load_image(resolve_image_path(p, image_root)) for p in paths] or None)
        enc = processor.apply_chat(convs, images=images)
        enc = {k: (v.to(device, dtype) if k == "pixel_values" else v.to(device)) for k, v in enc.items()}
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)
        texts = processor.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        for r, text in zip(chunk, texts):
            preds[r["id"]] = text.strip()
        bar.update(len(chunk))
    bar.close()
    return preds


def evaluate(model_dir, data_path, image_root=".", out_path=None, batch_size: int = 8, max_new_tokens: int = 8,
             limit: int | None = None, device=None, dtype=None) -> dict:
    from ..inference import load
    from .hrvqa import score

    records, problems = load_records(data_path)
    if problems:
        raise ValueError(f"{data_path}: {len(problems)} malformed record(s), first: {problems[0]}")
    if limit:
        records = records[:limit]
    model, processor = load(model_dir, device=device, dtype=dtype)
    t0 = time.perf_counter()
    preds = predict(model, processor, records, image_root, batch_size, max_new_tokens)
    result = score(preds, records)
    result.update(model=str(model_dir), data=str(data_path), seconds=round(time.perf_counter() - t0, 1),
                  views=model.config.views)
    if out_path:
        Path(out_path).write_text(json.dumps({"scores": result, "predictions": preds}, indent=1))
    return result
