"""`infllava eval`: answer every question of a LLaVA-format file and score it per kind.

Questions are answered greedily in left-padded batches through `generate` (the same processor and
templates as chat): `encode_image` turns each image into its visual tokens and `generate_answers`
answers a batch of conversations over them; the lmms-eval model (`infllava.evaluation.lmms_eval`)
answers through the same two functions, so its predictions are these. Scoring is normalised exact match
(`hrvqa.scoring.normalize_answer`), reported overall, per `kind` and per `subtype` when the records
carry them. Predictions and scores are written as JSON so a table can be rebuilt from them.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path

import torch

from ..data.records import load_records, record_image_paths, resolve_image_path, to_messages
from ..processing import load_image


def encode_image(model, processor, image) -> torch.Tensor:
    """One image (PIL) -> its projected visual tokens (T, D), encoded on its own (a batch of one image)."""
    param = next(model.parameters())
    pixels = processor.image_processor.pixels([image]).to(param.device, param.dtype)
    with torch.inference_mode():
        return model.image_tokens(pixels)[0]


def generate_answers(model, processor, chats, num_images, image_features, max_new_tokens: int,
                     **sampling) -> list[str]:
    """The answers (decoded without special tokens, stripped) to a batch of conversations.

    chats: one message list per row (`processor.tokenize_chats`; a placeholder is inserted for images the
    text does not place); num_images: the images of each row; image_features: their visual tokens in that
    order, (N, T, D) or None. Rows are left-padded and generated together; greedy unless `sampling` says
    otherwise (`do_sample`, `temperature`, `top_p`: passed to `generate`).
    """
    device = next(model.parameters()).device
    enc = processor.tokenize_chats(chats, num_images, "left")
    input_ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
    with torch.inference_mode():
        embeds = model.embed_inputs(input_ids, image_features=image_features)
        out = model.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=max_new_tokens,
                             **{"do_sample": False, **sampling})
    return [text.strip() for text in processor.batch_decode(out, skip_special_tokens=True)]


def predict(model, processor, records, image_root, batch_size: int = 8, max_new_tokens: int = 8,
            progress: bool = True, on_batch=None) -> tuple[dict, dict]:
    """({record id: generated answer}, {record id: why it was skipped}) for the first user turn of each
    record. A record whose image cannot be read is skipped and counted, as training does.

    Each distinct image is encoded once (questions about the same image share its visual tokens).
    `on_batch(preds, skipped)` receives each batch's results as they come (to write them at once).
    """
    from tqdm.auto import tqdm

    from ..processing import ImageLoadError

    preds: dict = {}
    skipped: dict = {}
    cache: dict[str, torch.Tensor] = {}  # image path -> projected visual tokens (T, D)
    bad: dict[str, str] = {}  # image path -> why it cannot be read
    bar = tqdm(total=len(records), desc="eval", disable=not progress, dynamic_ncols=True)
    for start in range(0, len(records), batch_size):
        chunk = records[start: start + batch_size]
        for path in {resolve_image_path(p, image_root) for r in chunk for p in record_image_paths(r)}:
            if path in cache or path in bad:
                continue
            try:
                cache[path] = encode_image(model, processor, load_image(path))
            except (ImageLoadError, OSError) as e:
                bad[path] = " ".join(str(e).split())
        batch_preds, batch_skipped, usable, chats, counts, paths = {}, {}, [], [], [], []
        for r in chunk:
            images = [resolve_image_path(p, image_root) for p in record_image_paths(r)]
            unreadable = [bad[p] for p in images if p in bad]
            if unreadable:
                batch_skipped[r["id"]] = unreadable[0]
                continue
            usable.append(r)
            chats.append(to_messages(r)[:1])
            counts.append(len(images))
            paths += images
        if usable:
            feats = torch.stack([cache[p] for p in paths]) if paths else None
            for r, text in zip(usable, generate_answers(model, processor, chats, counts, feats, max_new_tokens)):
                batch_preds[r["id"]] = text
        preds.update(batch_preds)
        skipped.update(batch_skipped)
        if on_batch is not None:
            on_batch(batch_preds, batch_skipped)
        if len(cache) > 256:
            cache.clear()
        bar.update(len(chunk))
    bar.close()
    return preds, skipped


class PredictionLog:
    """`OUT.partial.jsonl`: the predictions of a run, appended and flushed batch by batch, so an interrupted
    run loses nothing and a rerun with the same --out continues after them. Its first line names the model
    and the data; a file of another run is refused rather than mixed in."""

    def __init__(self, out_path: str | Path, header: dict):
        self.path = Path(f"{out_path}.partial.jsonl")
        self.header = header
        self.preds: dict = {}
        self.skipped: dict = {}
        if self.path.is_file() and self.path.stat().st_size:
            self._read()
        else:
            with open(self.path, "w", encoding="utf-8") as f:  # also checks that --out's folder is writable
                f.write(json.dumps({"header": header}) + "\n")

    def _read(self) -> None:
        lines = self.path.read_text(encoding="utf-8").splitlines()
        try:
            first = json.loads(lines[0]).get("header")
        except (ValueError, AttributeError, IndexError):
            first = None
        if first != self.header:
            raise ValueError(f"{self.path} holds the predictions of another run ({first}): remove it, or choose "
                             f"another --out")
        for line in lines[1:]:
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a line cut by an interruption: its question is asked again
            if "skipped" in row:
                self.skipped[row["id"]] = row["skipped"]
            elif "prediction" in row:
                self.preds[row["id"]] = row["prediction"]

    def append(self, preds: dict, skipped: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            for qid, text in preds.items():
                f.write(json.dumps({"id": qid, "prediction": text}) + "\n")
            for qid, why in skipped.items():
                f.write(json.dumps({"id": qid, "skipped": why}) + "\n")
            f.flush()
            os.fsync(f.fileno())


def check_output_path(out_path: str | Path) -> Path:
    """The --out file, checked before any work: its folder exists (or is made) and is writable, and it is
    not a directory."""
    out = Path(out_path)
    if out.is_dir():
        raise ValueError(f"--out {out} is a directory; give a file name (e.g. {out}/scores.json)")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"--out {out}: cannot create its folder ({e.strerror or e})") from e
    if not os.access(out.parent, os.W_OK):
        raise ValueError(f"--out {out}: its folder {out.parent} is not writable")
    return out


def evaluate(model_dir, data_path, image_root=".", out_path=None, batch_size: int = 8, max_new_tokens: int = 8,
             limit: int | None = None, device=None, dtype=None, feature_cache=None, progress: bool = True,
             quantization: str | None = None) -> dict:
    """Score `model_dir` on the questions of `data_path`. feature_cache: a folder for the frozen tower's
    outputs per crop (`infllava.model.feature_cache`): the view ablations of one benchmark share their
    crops (full = local crops + the centre global crop, which is also the thumbnail), so each crop of
    the test images runs through the tower once for all of them.

    With `out_path`, the output is checked before the model loads, predictions are appended to
    `out_path + ".partial.jsonl"` as they come (a rerun resumes from them), and the scores and
    predictions are written to `out_path` at the end (atomically; the partial file is then removed).
    Questions whose image cannot be read are skipped, counted and named in the result. `quantization` (nf4,
    int8) loads the LM through bitsandbytes; the result records it and the LM's weight memory (`lm_mib`)."""
    from ..inference import load
    from ..quantization import module_bytes
    from .hrvqa.scoring import score

    if batch_size < 1 or max_new_tokens < 1 or (limit is not None and limit < 1):
        raise ValueError(f"batch_size, max_new_tokens and limit must be >= 1, got {batch_size}, {max_new_tokens}, {limit}")
    out = check_output_path(out_path) if out_path else None
    records, problems = load_records(data_path)
    if problems:
        raise ValueError(f"{data_path}: {len(problems)} malformed record(s), first: {problems[0]}")
    ids = [r["id"] for r in records]
    dups = [i for i, n in Counter(ids).items() if n > 1]
    if dups:
        raise ValueError(f"{data_path}: {len(dups)} question id(s) occur more than once (first: {dups[0]!r}): "
                         f"every question needs its own id")
    if limit:
        records = records[:limit]
    log = PredictionLog(out, {"model": str(model_dir), "data": str(Path(data_path).resolve()),
                              "max_new_tokens": max_new_tokens, "quantization": quantization or "none"}) \
        if out else None
    done = set(log.preds) | set(log.skipped) if log else set()
    todo = [r for r in records if r["id"] not in done]
    model, processor = load(model_dir, device=device, dtype=dtype, quantization=quantization)
    if feature_cache:
        from ..model.feature_cache import attach_feature_cache

        attach_feature_cache(model, feature_cache)
    t0 = time.perf_counter()
    preds, skipped = predict(model, processor, todo, image_root, batch_size, max_new_tokens, progress=progress,
                             on_batch=log.append if log else None)
    if log:
        preds = {**{k: v for k, v in log.preds.items()}, **preds}
        skipped = {**log.skipped, **skipped}
    scored = [r for r in records if r["id"] not in skipped]
    result = score(preds, scored)
    result.update(model=str(model_dir), data=str(data_path), seconds=round(time.perf_counter() - t0, 1),
                  views=model.config.views, skipped=len(skipped),
                  quantization=getattr(model, "infllava_quantization", None),
                  lm_mib=round(module_bytes(model.model.language_model) / 2**20, 1),
                  seconds_per_question=round((time.perf_counter() - t0) / max(len(todo), 1), 3),
                  skip_reasons=[f"{k}: {v}" for k, v in list(skipped.items())[:20]],
                  resumed=len(done & {r["id"] for r in records}))
    if out:
        tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps({"scores": result, "predictions": preds, "skipped": skipped}, indent=1))
        os.replace(tmp, out)
        log.path.unlink(missing_ok=True)
    return result
