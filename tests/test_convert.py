"""`infllava convert-official`: an official-layout directory in, a from_pretrained directory out."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from transformers import CLIPVisionConfig, CLIPVisionModel

from helpers import paired_models
from infllava import InfLlavaForConditionalGeneration
from infllava.checkpoints import ConversionError, convert_official, map_key
from infllava_cli import main as cli_main
from infllava.config import CLIP_VIT_L_14_336
from infllava.processing import InfLlavaProcessor
from infllava.tiny import make_tiny_tokenizer

TOL = 1e-4


def official_config_json(cfg) -> dict:
    text = cfg.text_config.to_dict()
    text.update(
        model_type="llava_llama",
        architectures=["LlavaLlamaForCausalLM"],
        mm_vision_tower="local/tiny-clip",
        mm_hidden_size=cfg.vision_config.hidden_size,
        mm_projector_type="mlp2x_gelu",
        mm_vision_select_layer=-2,
        mm_vision_select_feature="patch",
        image_aspect_ratio="pad",
        mm_patch_merge_type="flat",
        mm_use_im_start_end=False,
        tokenizer_model_max_length=2048,
        tokenizer_padding_side="right",
    )
    return text


def write_official(tmp_path, ref, cfg, fmt="sharded", include_tower=True, tokenizer=True):
    src = tmp_path / "official"
    src.mkdir()
    (src / "config.json").write_text(json.dumps(official_config_json(cfg)))
    sd = {k: v.contiguous() for k, v in ref.official_state_dict(include_tower).items()}
    if fmt == "sharded":
        keys = sorted(sd)
        halves = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
                  "model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
        weight_map = {}
        for name, ks in halves.items():
            save_file({k: sd[k] for k in ks}, str(src / name))
            weight_map.update({k: name for k in ks})
        (src / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    elif fmt == "single":
        save_file(sd, str(src / "model.safetensors"))
    else:
        torch.save(sd, src / "pytorch_model.bin")
    if tokenizer:
        make_tiny_tokenizer().save_pretrained(str(src))
    return src


def write_clip_dir(tmp_path, cfg, weights_from=None):
    d = tmp_path / "clip"
    d.mkdir()
    vcfg = CLIPVisionConfig(**{k: v for k, v in cfg.vision_config.to_dict().items() if k != "model_type"})
    if weights_from is not None:
        tower = CLIPVisionModel(vcfg)
        tower.load_state_dict(weights_from.state_dict())
        tower.save_pretrained(d)
    else:
        vcfg.save_pretrained(d)
    (d / "preprocessor_config.json").write_text(json.dumps({
        "image_mean": list(cfg.image_mean), "image_std": list(cfg.image_std), "crop_size": cfg.tower_image_size}))
    return d


@pytest.fixture
def paired():
    return paired_models(seed=3)


def _check_logits(dst, ref, cfg):
    model = InfLlavaForConditionalGeneration.from_pretrained(dst).eval()
    px = torch.randn(1, 3, *cfg.input_size)
    pre, post = [1, 20, 30], [40, 2]
    ids = torch.tensor([pre + [cfg.image_token_id] * cfg.num_image_tokens + post])
    with torch.no_grad():
        a = ref.logits(pre + [-200] + post, px)
        b = model(input_ids=ids, pixel_values=px).logits
    assert (a - b).abs().max() <= TOL
    return model


@pytest.mark.parametrize("fmt", ["sharded", "single", "bin"])
def test_convert_matches_official_computation(tmp_path, paired, fmt):
    ref, _, cfg = paired
    src = write_official(tmp_path, ref, cfg, fmt=fmt)
    clip = write_clip_dir(tmp_path, cfg)
    dst = tmp_path / "converted"
    report = convert_official(src, dst, vision_tower=clip, dem_num_heads=cfg.dem_num_heads)
    model = _check_logits(dst, ref, cfg)
    assert model.config.image_token_id == cfg.text_config.vocab_size
    # every source key is either mapped or skipped with a reason
    n_src = len(ref.official_state_dict())
    assert len(report.mapped) + len(report.skipped) == n_src
    last = cfg.vision_config.num_hidden_layers - 1
    assert report.skipped[f"model.vision_tower.vision_tower.vision_model.encoder.layers.{last}.mlp.fc1.weight"] \
        == "layer after the selected feature layer"
    assert "post_layernorm" in " ".join(report.skipped)
    proc = InfLlavaProcessor.from_pretrained(dst)
    assert proc.num_image_tokens == cfg.num_image_tokens and proc.template == "llama3"


def test_convert_takes_tower_weights_from_vision_tower_dir(tmp_path, paired):
    ref, _, cfg = paired
    src = write_official(tmp_path, ref, cfg, include_tower=False)
    clip = write_clip_dir(tmp_path, cfg, weights_from=ref.vision_tower)
    dst = tmp_path / "converted"
    convert_official(src, dst, vision_tower=clip, dem_num_heads=cfg.dem_num_heads)
    _check_logits(dst, ref, cfg)


def test_cli_convert_then_chat(tmp_path, paired, capsys):
    ref, _, cfg = paired
    src = write_official(tmp_path, ref, cfg)
    clip = write_clip_dir(tmp_path, cfg)
    dst = tmp_path / "converted"
    assert cli_main(["convert-official", str(src), str(dst), "--vision-tower", str(clip), "--dem-heads", "4"]) == 0
    assert "mapped" in capsys.readouterr().out
    from PIL import Image

    Image.new("RGB", (50, 30), (200, 10, 10)).save(tmp_path / "red.png")
    assert cli_main(["chat", str(dst), "--image", str(tmp_path / "red.png"), "what colour?",
                     "--max-new-tokens", "3"]) == 0


def test_missing_shard_is_named(tmp_path, paired):
    ref, _, cfg = paired
    src = write_official(tmp_path, ref, cfg)
    (src / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(ConversionError, match="model-00002-of-00002.safetensors"):
        convert_official(src, tmp_path / "out", vision_tower=write_clip_dir(tmp_path, cfg))


def test_missing_and_misshaped_keys_are_named(tmp_path, paired):
    ref, _, cfg = paired
    clip = write_clip_dir(tmp_path, cfg)
    src = write_official(tmp_path, ref, cfg, fmt="single")
    from safetensors.torch import load_file

    sd = load_file(str(src / "model.safetensors"))
    del sd["model.spatial_embed.ln_fuse.bias"]
    save_file(sd, str(src / "model.safetensors"))
    with pytest.raises(ConversionError, match="model.dem.fuse_norm.bias"):
        convert_official(src, tmp_path / "out", vision_tower=clip)
    sd["model.spatial_embed.ln_fuse.bias"] = torch.zeros(7)
    save_file(sd, str(src / "model.safetensors"))
    with pytest.raises(ConversionError, match=r"dem.fuse_norm.bias.*\(7,\)"):
        convert_official(src, tmp_path / "out", vision_tower=clip)


def test_unknown_tower_without_vision_tower_dir_says_what_to_pass(tmp_path, paired, capsys):
    ref, _, cfg = paired
    src = write_official(tmp_path, ref, cfg)
    with pytest.raises(ConversionError, match="--vision-tower"):
        convert_official(src, tmp_path / "out")
    assert cli_main(["convert-official", str(src), str(tmp_path / "out")]) == 1
    assert "--vision-tower" in capsys.readouterr().err


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(ConversionError, match="config.json"):
        convert_official(tmp_path, tmp_path / "out")


def test_builtin_clip_l_keys_all_map():
    """Every key of a real CLIP ViT-L/14-336 tower (transformers-4 names, as in the release) maps or is skipped."""
    from infllava import official_config

    vcfg = CLIPVisionConfig(**{k: v for k, v in CLIP_VIT_L_14_336.items() if k != "model_type"})
    with torch.device("meta"):
        tower = CLIPVisionModel(vcfg)
        ours = InfLlavaForConditionalGeneration(official_config(
            text_config=dict(model_type="llama", vocab_size=8, hidden_size=4096, intermediate_size=8,
                             num_hidden_layers=1, num_attention_heads=32, num_key_value_heads=8)))
    expected = ours.state_dict()
    tower_keys = {f"model.vision_tower.vision_tower.vision_model.{k}" for k in tower.state_dict()}
    targets = {map_key(k) for k in tower_keys}
    ours_tower = {k for k in expected if k.startswith("model.vision_tower.")}
    assert ours_tower <= targets  # everything the model needs is provided
    extra = targets - ours_tower
    assert all(".encoder.layers.23." in k or "post_layernorm" in k for k in extra), sorted(extra)[:5]
