"""Assemble the model to train, and decide what trains in each stage.

Stages (paper Sec. 4.1, official scripts):
  pretrain: tower and LM frozen; DEM + projector trained.
  finetune: tower frozen; DEM + projector + LM trained (or LoRA adapters on the LM, through peft).
The tower never trains and runs without gradients.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import torch

from ..checkpoints.official import map_key
from ..config import InfLlavaConfig, tiny_config
from ..model import InfLlavaForConditionalGeneration
from ..loading import Provenance, load_model
from ..templates import default_template_for
from ..processing import InfLlavaProcessor
from .config import ConfigError, RunConfig

ADAPTER_FILE = "adapter.safetensors"  # DEM + projector weights (our stage-1 output)
PRETRAIN_TEMPLATE = "plain"  # the recipe's stage-1 format (LLaVA's conv_llava_plain), unless model.template says


class Built(NamedTuple):
    model: InfLlavaForConditionalGeneration
    processor: InfLlavaProcessor
    provenance: Provenance


def build_model(cfg: RunConfig) -> Built:
    """(model, processor, provenance) in float32 on CPU, stage-1 adapter loaded if given."""
    m = cfg.model
    if m.preset == "tiny":
        from ..tiny import make_tiny_tokenizer

        config = tiny_config(**_dem_overrides(m))
        model = InfLlavaForConditionalGeneration(config)
        processor = InfLlavaProcessor.from_config(config, make_tiny_tokenizer())
        provenance = Provenance("preset:tiny")
    elif m.base is not None:  # any model infllava loads: a run's final/ (full or parts), a converted release
        try:
            model, processor, provenance = load_model(m.base, device="cpu", dtype=torch.float32)
        except (FileNotFoundError, ValueError) as e:
            raise ConfigError(f"model.base: {e}") from e
    else:
        model, processor, provenance = _build_from_parts(m)
    provenance = replace(provenance, template=provenance.template or model.config.template)
    template = m.template or (PRETRAIN_TEMPLATE if cfg.train.stage == "pretrain" else model.config.template)
    processor.template = template
    model.config.template = template
    if m.adapter:
        load_adapter(model, m.adapter)
    return Built(model, processor, provenance)


def _dem_overrides(m) -> dict:
    out = dict(grid=list(m.grid), vision_feature_layer=m.vision_feature_layer, projector_type=m.projector_type,
               dem_share_attention=m.dem_share_attention, dem_downsample=m.dem_downsample, views=m.views,
               dem_local_residual=m.dem_local_residual, thumbnail_merge=m.thumbnail_merge,
               projector_input_norm=m.projector_input_norm)
    if m.dem_num_heads is not None:
        out["dem_num_heads"] = m.dem_num_heads
    if m.dem_ffn_ratio is not None:
        out["dem_ffn_ratio"] = m.dem_ffn_ratio
    return out


def _build_from_parts(m):
    """A vision tower + a causal LM (local transformers directories, or the packaged small parts)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from ..model.towers import packaged_tower_config
    from ..packaged.smollm2 import smollm2_dir

    lm_path = str(smollm2_dir()) if m.language_model == "smollm2" else m.language_model
    lm = AutoModelForCausalLM.from_pretrained(lm_path, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(m.tokenizer or lm_path)
    vocab = max(lm.config.vocab_size, len(tokenizer))
    packaged_tower = packaged_tower_config(m.vision_tower, stage=m.vision_stage, image_size=m.vision_image_size)
    extra, packaged = {}, None
    if packaged_tower is not None:  # a tower whose weights a pip package ships (e.g. efficientnet-lite0)
        vision_cfg, mean, std = packaged_tower
        extra = dict(image_mean=list(mean), image_std=list(std))
    else:  # a local transformers directory
        vision_cfg = AutoConfig.from_pretrained(m.vision_tower)
        vision_cfg = getattr(vision_cfg, "vision_config", vision_cfg)
    template = m.template or default_template_for(tokenizer)
    config = InfLlavaConfig(
        vision_config=vision_cfg.to_dict(), text_config=lm.config.to_dict(), image_token_id=vocab,
        template=template, **extra, **_dem_overrides(m),
    )
    model = InfLlavaForConditionalGeneration(config)
    try:
        model.load_language_model(lm)
    except ValueError as e:
        raise ConfigError(f"{lm_path}: {e}") from e
    try:
        model.vision_tower.load_pretrained(None if packaged_tower is not None else m.vision_tower)
    except (ValueError, OSError) as e:
        raise ConfigError(f"model.vision_tower={m.vision_tower}: {e}") from e
    if packaged_tower is not None and m.language_model == "smollm2" and not m.tokenizer:
        packaged = {"vision_tower": m.vision_tower, "language_model": "smollm2"}  # both from pip packages
    return model, InfLlavaProcessor.from_config(config, tokenizer), Provenance(
        f"{m.vision_tower} + {m.language_model}", layout="full", packaged=packaged)


# Model choices an adapter must be loaded under (model.* keys, named as in the saved config). Most hold no
# weights: under another value every shape matches and the model silently computes something else; those
# that change shapes (dem_downsample unshuffle / mlpavg, thumbnail_merge concat, dem_local_residual's gate)
# get the same message naming the override instead of a shape mismatch or a missing weight.
_ADAPTER_CHOICES = ("dem_downsample", "views", "grid", "vision_feature_layer", "thumbnail_merge",
                    "dem_local_residual")


def _check_adapter_config(model: InfLlavaForConditionalGeneration, directory: Path) -> None:
    """A saved model directory given as model.adapter must agree with the model being built on the
    choices that hold no weights (ConfigError naming the override to set otherwise)."""
    cfg_file = directory / "config.json"
    if not cfg_file.is_file():
        return
    try:
        saved = json.loads(cfg_file.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"model.adapter: {cfg_file} is not readable JSON ({e})") from e
    for key in _ADAPTER_CHOICES:
        if key not in saved:
            continue
        want, have = saved[key], getattr(model.config, key, None)
        if isinstance(have, tuple):
            have = list(have)
        if want != have:
            raise ConfigError(f"model.adapter {directory} was trained with {key}={want!r}, this config builds "
                              f"{key}={have!r}: set model.{key}={want}")


def load_adapter(model: InfLlavaForConditionalGeneration, path: str | Path) -> None:
    """Load DEM + projector weights: our adapter.safetensors (or a directory holding it) or the
    official stage-1 `mm_projector.bin` (keys model.mm_projector.*, model.spatial_embed.*)."""
    p = Path(path)
    if p.is_dir():
        _check_adapter_config(model, p)
        p = p / ADAPTER_FILE
    if not p.is_file():
        raise ConfigError(f"model.adapter: {p} not found")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(p))
    else:
        official = torch.load(str(p), map_location="cpu", weights_only=True)
        sd = {map_key(k).removeprefix("model."): v for k, v in official.items()}
    own = adapter_state_dict(model)
    missing, unexpected = sorted(set(own) - set(sd)), sorted(set(sd) - set(own))
    if missing or unexpected:
        raise ConfigError(f"model.adapter {p}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for k, v in sd.items():
        if v.shape != own[k].shape:
            raise ConfigError(f"model.adapter {p}: {k} has shape {tuple(v.shape)}, model expects {tuple(own[k].shape)}")
    model.model.load_state_dict(sd, strict=False)


NORM_FIT_IMAGES = 256  # training images whose visual features fit the projector's input statistics


@torch.no_grad()
def fit_projector_input_norm(model: InfLlavaForConditionalGeneration, merged_features) -> int:
    """Fit `projector.input_mean/std` (config.projector_input_norm) once, before the first training
    step, from an iterable of merged visual features (B, T, d) of training images (the first
    `NORM_FIT_IMAGES` are used; deterministic, so every process of a run fits the same numbers).
    Returns the number of images used."""
    chunks, n = [], 0
    for f in merged_features:
        chunks.append(f.float().cpu())
        n += f.shape[0]
        if n >= NORM_FIT_IMAGES:
            break
    if not chunks:
        raise ConfigError("model.projector_input_norm: no training image to fit the projector's input statistics on")
    model.projector.fit_input_norm(torch.cat(chunks)[:NORM_FIT_IMAGES])
    return min(n, NORM_FIT_IMAGES)


def adapter_state_dict(model: InfLlavaForConditionalGeneration) -> dict[str, torch.Tensor]:
    """DEM + projector weights, keyed relative to `InfLlavaModel` (`dem.*`, `projector.*`): adapter.safetensors."""
    return {k: v.detach().cpu().contiguous() for k, v in model.model.state_dict().items()
            if k.startswith(("dem.", "projector."))}


def apply_stage(model: InfLlavaForConditionalGeneration, cfg: RunConfig,
                provenance: Provenance | None = None) -> Provenance | None:
    """Freeze / unfreeze per stage; wrap the LM with LoRA when asked. Returns the provenance of what the
    run will write (a full fine-tune of the LM records why its LM is no longer the packaged one)."""
    t = cfg.train
    model.requires_grad_(False)
    model.dem.requires_grad_(not t.freeze_mm)
    model.projector.requires_grad_(not t.freeze_mm)
    if t.stage == "finetune":
        if t.lora.enabled:
            from peft import LoraConfig, get_peft_model

            if t.lora.quantization not in (None, "none"):  # QLoRA: the frozen LM 4/8-bit under the factors
                from ..quantization import quantize_language_model

                quantize_language_model(model, t.lora.quantization, torch.float32)
            lora = LoraConfig(r=t.lora.r, lora_alpha=t.lora.alpha, lora_dropout=t.lora.dropout,
                              target_modules=list(t.lora.target_modules), bias="none")
            model.model.language_model = get_peft_model(model.model.language_model, lora)
        else:
            model.language_model.requires_grad_(True)
            model.lm_head.requires_grad_(True)
            if provenance is not None:
                provenance = replace(provenance, lm_delta={
                    "reason": "its language model was fine-tuned in full (train.lora.enabled false)"})
    if t.gradient_checkpointing and t.stage == "finetune":
        model.language_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.language_model.enable_input_require_grads() if t.lora.enabled else None
    return provenance


def merge_lora(model: InfLlavaForConditionalGeneration) -> None:
    """Fold LoRA adapters into the LM weights so the saved model loads without peft."""
    lm = model.model.language_model
    if hasattr(lm, "merge_and_unload"):
        model.model.language_model = lm.merge_and_unload()
