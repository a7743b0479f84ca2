"""Convert an official INF-LLaVA checkpoint (LLaVA fork, model_type `llava_llama`) to infllava.

One declarative key map (`OFFICIAL_KEY_MAP`) says where every official key goes. Every source key is
either mapped or reported as skipped with a reason; a missing or mis-shaped target key is an error
naming it. All sizes are read from the checkpoint (DEM bottleneck ratio from `ffn_crop.0.weight`,
widths from the tensors, LM sizes from config.json); the grid (3x3) and the DEM heads (8) are not
stored by the official code, which hard-codes them, so they default to those values.

The vision tower comes, in order of preference, from `--vision-tower DIR` (a local transformers CLIP
directory: its config, image-processor normalisation, and its weights where SRC has none), or from
the tower weights inside SRC with the built-in config of the tower named by `mm_vision_tower`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import CLIP_MEAN, CLIP_STD, CLIP_VIT_L_14_336, InfLlavaConfig

# (regex on the official key, replacement). First match wins; None = skip (reason in the tuple).
OFFICIAL_KEY_MAP: list[tuple[str, str | None]] = [
    (r"^model\.spatial_embed\.attention\.linears\.0\.(weight|bias)$", r"model.dem.attn.q_proj.\1"),
    (r"^model\.spatial_embed\.attention\.linears\.1\.(weight|bias)$", r"model.dem.attn.k_proj.\1"),
    (r"^model\.spatial_embed\.attention\.linears\.2\.(weight|bias)$", r"model.dem.attn.v_proj.\1"),
    (r"^model\.spatial_embed\.attention\.linears\.3\.(weight|bias)$", r"model.dem.attn.o_proj.\1"),
    (r"^model\.spatial_embed\.attention\.ln\.(weight|bias)$", r"model.dem.attn.norm.\1"),
    (r"^model\.spatial_embed\.ffn_crop\.0\.(weight|bias)$", r"model.dem.ffn_local.fc1.\1"),
    (r"^model\.spatial_embed\.ffn_crop\.2\.(weight|bias)$", r"model.dem.ffn_local.fc2.\1"),
    (r"^model\.spatial_embed\.ffn_stride\.0\.(weight|bias)$", r"model.dem.ffn_global.fc1.\1"),
    (r"^model\.spatial_embed\.ffn_stride\.2\.(weight|bias)$", r"model.dem.ffn_global.fc2.\1"),
    (r"^model\.spatial_embed\.ln_fuse\.(weight|bias)$", r"model.dem.fuse_norm.\1"),
    (r"^model\.mm_projector\.(\d+)\.(weight|bias)$", r"model.projector.layers.\1.\2"),
    (r"^model\.vision_tower\.vision_tower\.(?:vision_model\.)?(.+)$", r"model.vision_tower.model.\1"),
    (r"^model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$", None),
    (r"^model\.(embed_tokens|layers|norm)\.(.+)$", r"model.language_model.\1.\2"),
    (r"^lm_head\.weight$", r"lm_head.weight"),
]

# Keys of a stand-alone transformers CLIP checkpoint (--vision-tower DIR).
CLIP_DIR_KEY_MAP: list[tuple[str, str | None]] = [
    (r"^(?:vision_model\.)?(embeddings|pre_layrnorm|encoder|post_layernorm)\.(.+)$", r"model.vision_tower.model.\1.\2"),
]

KNOWN_TOWERS = {
    "openai/clip-vit-large-patch14-336": CLIP_VIT_L_14_336,
    "openai/clip-vit-large-patch14": {**CLIP_VIT_L_14_336, "image_size": 224},
}


class ConversionError(ValueError):
    pass


@dataclass
class ConversionReport:
    mapped: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # source key -> reason

    def summary(self) -> str:
        lines = [f"mapped {len(self.mapped)} tensors, skipped {len(self.skipped)}"]
        reasons: dict[str, list[str]] = {}
        for key, why in self.skipped.items():
            reasons.setdefault(why, []).append(key)
        for why, keys in reasons.items():
            shown = ", ".join(keys[:3]) + (f", ... ({len(keys)} in all)" if len(keys) > 3 else "")
            lines.append(f"  skipped ({why}): {shown}")
        return "\n".join(lines)


def map_key(key: str, key_map=OFFICIAL_KEY_MAP) -> str | None:
    """Target key for `key`, None if the map says skip; raises KeyError if nothing matches."""
    for pattern, target in key_map:
        if re.match(pattern, key):
            return None if target is None else re.sub(pattern, target, key)
    raise KeyError(key)


# ---------------------------------------------------------------- reading checkpoints
def check_shards(directory: str | Path) -> None:
    """Raise ConversionError naming any shard that a `*.index.json` in `directory` lists but is absent."""
    d = Path(directory)
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = d / index_name
        if index.exists():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as e:
                raise ConversionError(f"{index}: not a valid shard index ({e})") from e
            missing = sorted({s for s in weight_map.values() if not (d / s).exists()})
            if missing:
                raise ConversionError(f"{d}: shard(s) listed in {index_name} are missing: {', '.join(missing)}")


def read_state_dict(directory: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint directory: safetensors or .bin, single or sharded (with an index)."""
    d = Path(directory)
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = d / index_name
        if index.exists():
            check_shards(d)
            weight_map = json.loads(index.read_text())["weight_map"]
            shards = sorted(set(weight_map.values()))
            sd: dict[str, torch.Tensor] = {}
            for shard in shards:
                sd.update(_read_file(d / shard))
            absent = sorted(set(weight_map) - set(sd))
            if absent:
                raise ConversionError(f"{d}: tensors listed in {index_name} not found in the shards: {absent[:5]}")
            return sd
    singles = sorted(d.glob("*.safetensors")) or sorted(d.glob("pytorch_model*.bin"))
    if not singles:
        raise ConversionError(f"{d}: no weights found (*.safetensors or pytorch_model*.bin)")
    sd = {}
    for f in singles:
        sd.update(_read_file(f))
    return sd


def _read_file(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        # untrusted pickles: tensors only
        obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # corrupt or truncated file
        raise ConversionError(f"cannot read weights file {path}: {e}") from e
    if not isinstance(obj, dict):
        raise ConversionError(f"{path}: expected a state dict, got {type(obj).__name__}")
    return obj


# ---------------------------------------------------------------- config
def config_from_official(src_cfg: dict, sd: dict[str, torch.Tensor], vision_config: dict,
                         image_mean=CLIP_MEAN, image_std=CLIP_STD, grid=(3, 3), dem_num_heads: int = 8) -> InfLlavaConfig:
    text = {k: v for k, v in src_cfg.items() if not k.startswith("mm_") and k not in _LLAVA_ONLY_FIELDS}
    text["model_type"] = "llama"
    emb = sd.get("model.embed_tokens.weight")
    if emb is not None and emb.shape[0] != text.get("vocab_size"):
        raise ConversionError(
            f"config.json vocab_size={text.get('vocab_size')} but model.embed_tokens.weight has {emb.shape[0]} rows"
        )
    d = int(vision_config["hidden_size"])
    if src_cfg.get("mm_hidden_size", d) != d:
        raise ConversionError(f"mm_hidden_size={src_cfg['mm_hidden_size']} but the vision tower width is {d}")
    ffn = sd.get("model.spatial_embed.ffn_crop.0.weight")
    if ffn is None:
        raise ConversionError("model.spatial_embed.ffn_crop.0.weight missing: not an INF-LLaVA checkpoint")
    if ffn.shape[1] != d:
        raise ConversionError(f"model.spatial_embed.ffn_crop.0.weight is {tuple(ffn.shape)}, tower width is {d}")
    if src_cfg.get("mm_vision_select_feature", "patch") != "patch":
        raise ConversionError(f"mm_vision_select_feature={src_cfg['mm_vision_select_feature']!r} unsupported")
    if src_cfg.get("mm_use_im_start_end", False):
        raise ConversionError("mm_use_im_start_end=true is not supported")
    return InfLlavaConfig(
        vision_config=vision_config,
        text_config=text,
        grid=list(grid),
        vision_feature_layer=int(src_cfg.get("mm_vision_select_layer", -2)),
        dem_num_heads=dem_num_heads,
        dem_ffn_ratio=d // ffn.shape[0],
        projector_type=src_cfg.get("mm_projector_type", "linear"),
        image_token_id=int(text["vocab_size"]),  # outside the vocabulary, never embedded
        image_mean=list(image_mean),
        image_std=list(image_std),
        template="llama3",
    )


_LLAVA_ONLY_FIELDS = {
    "image_aspect_ratio", "image_grid_pinpoints", "tokenizer_model_max_length", "tokenizer_padding_side",
    "tune_mm_mlp_adapter", "freeze_mm_mlp_adapter", "use_mm_proj", "architectures", "_name_or_path",
    "transformers_version", "unfreeze_mm_vision_tower", "mm_projector_lr", "mm_vision_tower_lr",
}


def _vision_from_dir(directory: Path) -> tuple[dict, tuple, tuple, dict[str, torch.Tensor] | None]:
    cfg_path = directory / "config.json"
    if not cfg_path.exists():
        raise ConversionError(f"--vision-tower {directory}: no config.json")
    raw = json.loads(cfg_path.read_text())
    vision = dict(raw.get("vision_config", raw))
    vision["model_type"] = "clip_vision_model"
    mean, std = CLIP_MEAN, CLIP_STD
    pre = directory / "preprocessor_config.json"
    if pre.exists():
        p = json.loads(pre.read_text())
        mean, std = tuple(p.get("image_mean", mean)), tuple(p.get("image_std", std))
    try:
        weights = read_state_dict(directory)
    except ConversionError:
        weights = None
    return vision, mean, std, weights


# ---------------------------------------------------------------- conversion
def convert_official(src: str | Path, dst: str | Path, vision_tower: str | Path | None = None,
                     grid=(3, 3), dem_num_heads: int = 8, dtype: torch.dtype | None = None) -> ConversionReport:
    """Convert SRC (official layout) to DST (loadable with `from_pretrained`). Returns the report."""
    from ..model import InfLlavaForConditionalGeneration

    src, dst = Path(src), Path(dst)
    cfg_path = src / "config.json"
    if not cfg_path.exists():
        raise ConversionError(f"{src}: no config.json (expected an official INF-LLaVA checkpoint directory)")
    src_cfg = json.loads(cfg_path.read_text())
    if "mm_projector_type" not in src_cfg and "mm_hidden_size" not in src_cfg:
        raise ConversionError(f"{cfg_path}: no mm_* fields; not a LLaVA / INF-LLaVA checkpoint")
    if dst.resolve() == src.resolve() or src.resolve() in dst.resolve().parents:
        raise ConversionError(f"DST {dst} is the source checkpoint or lies inside it: choose a new directory "
                              f"(the source is never written to)")
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise ConversionError(f"DST {dst} exists and is not empty: choose a new directory (nothing is overwritten)")
    sd = read_state_dict(src)
    has_tower = any(k.startswith("model.vision_tower.") for k in sd)

    tower_weights = None
    mean, std = CLIP_MEAN, CLIP_STD
    if vision_tower is not None:
        vision, mean, std, tower_weights = _vision_from_dir(Path(vision_tower))
        if not has_tower and tower_weights is None:
            raise ConversionError(f"neither {src} nor --vision-tower {vision_tower} holds vision tower weights")
    else:
        name = src_cfg.get("mm_vision_tower", "")
        if name not in KNOWN_TOWERS or not has_tower:
            raise ConversionError(
                f"{src}: cannot build the vision tower ({'unknown tower ' + repr(name) if name not in KNOWN_TOWERS else 'no tower weights in the checkpoint'}); "
                "pass --vision-tower DIR with a local transformers CLIP directory (config.json, "
                "preprocessor_config.json and weights)"
            )
        vision = dict(KNOWN_TOWERS[name])
    config = config_from_official(src_cfg, sd, vision, mean, std, grid, dem_num_heads)

    report = ConversionReport()
    new_sd: dict[str, torch.Tensor] = {}
    sources = [(k, v, OFFICIAL_KEY_MAP) for k, v in sd.items()]
    if not has_tower:
        sources += [(k, v, CLIP_DIR_KEY_MAP) for k, v in tower_weights.items()]
    for key, tensor, key_map in sources:
        try:
            target = map_key(key, key_map)
        except KeyError:
            report.skipped[key] = "not part of the INF-LLaVA model" if key_map is CLIP_DIR_KEY_MAP else "unknown key"
            continue
        if target is None:
            report.skipped[key] = "rotary buffer, recomputed"
            continue
        new_sd[target] = tensor
        report.mapped[key] = target

    with torch.device("meta"):
        model = InfLlavaForConditionalGeneration(config)
    expected = model.state_dict()
    for key in list(new_sd):
        if key not in expected:
            src_key = next(k for k, t in report.mapped.items() if t == key)
            why = "layer after the selected feature layer" if ".encoder.layers." in key else "unused by the model"
            if key.startswith("model.vision_tower.model.post_layernorm"):
                why = "tower final norm (LLaVA uses the raw hidden state)"
            report.skipped[src_key] = why
            del report.mapped[src_key]
            del new_sd[key]
    missing = sorted(set(expected) - set(new_sd))
    if missing:
        raise ConversionError(f"checkpoint lacks {len(missing)} weight(s) the model needs: {', '.join(missing[:8])}")
    for key, t in new_sd.items():
        if tuple(t.shape) != tuple(expected[key].shape):
            raise ConversionError(
                f"{key}: checkpoint tensor has shape {tuple(t.shape)}, the model expects {tuple(expected[key].shape)}"
            )
    if dtype is not None:
        new_sd = {k: v.to(dtype) for k, v in new_sd.items()}
    model.load_state_dict(new_sd, strict=True, assign=True)
    if dtype is not None:
        config.dtype = dtype
    # written in a temporary directory beside DST and renamed into place: DST is either absent or complete
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.parent / f".{dst.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        model.save_pretrained(tmp)
        _copy_tokenizer(src, tmp, config)
        (tmp / "conversion_report.json").write_text(
            json.dumps({"mapped": report.mapped, "skipped": report.skipped}, indent=1)
        )
        if dst.exists():
            dst.rmdir()  # empty (checked above)
        os.rename(tmp, dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return report


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                    "added_tokens.json", "chat_template.jinja")


def _copy_tokenizer(src: Path, dst: Path, config: InfLlavaConfig) -> None:
    present = [f for f in _TOKENIZER_FILES if (src / f).exists()]
    if not present:
        return
    from transformers import AutoTokenizer

    from ..processing import InfLlavaProcessor

    for f in present:
        shutil.copy2(src / f, dst / f)
    tokenizer = AutoTokenizer.from_pretrained(str(dst))
    InfLlavaProcessor.from_config(config, tokenizer).save_pretrained(dst)
