"""`infllava export MODEL DST`: any model infllava loads, written as one standard transformers directory.

The directory holds config.json, model.safetensors (every weight, LoRA merged, the current
`InfLlavaModel` layout), generation_config.json, processor_config.json, the tokenizer files (with the
"<image>" special token) and chat_template.jinja. After `import infllava` it loads with the Auto classes
alone (`AutoModelForImageTextToText`, `AutoProcessor`): the directory other engines serve.

DST is written in a temporary directory beside it and renamed into place, so it is either absent or
complete; a DST that exists, or that is the source or lies inside it, is refused before any work.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import torch


def export(source: str | Path, dst: str | Path, dtype: str | torch.dtype | None = None) -> Path:
    """Write `source` (a shipped name, a parts or full directory) to `dst` as a full directory."""
    from .loading import load_model, resolve_device_dtype, resolve_source

    src_dir = resolve_source(source).resolve()
    dst = Path(dst)
    target = dst.resolve()
    if target == src_dir or src_dir in target.parents:
        raise ValueError(f"{dst} is the source model directory or lies inside it; choose another destination")
    if dst.exists():
        raise FileExistsError(f"{dst} exists; remove it or choose another destination")
    _, dtype = resolve_device_dtype("cpu", dtype or "float32")
    model, processor, _ = load_model(source, device="cpu", dtype=dtype)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.parent / f".{dst.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        model.config.dtype = dtype
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        os.rename(tmp, dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dst
