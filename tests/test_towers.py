"""The tower registry (infllava.model.towers): every registered tower passes the same checks.

A new tower registers itself in its own module of infllava/model/towers/ and adds its small test config
to TEST_CONFIGS below (test_every_registered_tower_has_a_test_config fails until it does).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from transformers import AutoConfig, PreTrainedConfig

from infllava import tiny_config
from infllava.model import towers
from infllava.model.towers import Tower, build_tower, register_tower, registered_towers, tower_class, tower_has_cls
from infllava.model.towers import vit
from infllava.model.vision_tower import VisionTower

_VIT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, image_size=28,
            patch_size=7)
# model_type -> a small config of that tower (random weights): (fields, patch grid side, width d)
TEST_CONFIGS = {
    "clip_vision_model": (_VIT, 4, 32),
    "siglip_vision_model": (_VIT, 4, 32),
    "efficientnet_lite_tower": (dict(stage=6, image_size=64), 4, 112),
}
WITH_CLS = {"clip_vision_model"}  # what LLaVA drops (`mm_vision_select_feature: patch`)


def make_config(model_type: str) -> PreTrainedConfig:
    return AutoConfig.for_model(model_type, **TEST_CONFIGS[model_type][0])


def pixels(cfg: PreTrainedConfig, n: int = 5) -> torch.Tensor:
    return torch.randn(n, 3, cfg.image_size, cfg.image_size, generator=torch.Generator().manual_seed(0))


def test_every_registered_tower_has_a_test_config():
    assert set(registered_towers()) == set(TEST_CONFIGS)


@pytest.mark.parametrize("model_type", sorted(TEST_CONFIGS))
def test_tower_interface(model_type):
    cfg = make_config(model_type)
    _, side, d = TEST_CONFIGS[model_type]
    torch.manual_seed(0)
    tower = build_tower(cfg, feature_layer=-2)
    assert isinstance(tower, Tower) and type(tower) is tower_class(cfg) and model_type in tower.model_types
    assert isinstance(tower.module, nn.Module) and tower.hidden_size == d
    assert tower.has_cls == tower_has_cls(cfg) == (model_type in WITH_CLS)
    tower.module.eval()
    x = pixels(cfg)
    with torch.no_grad():
        feats = tower.forward_features(x)
        tokens = tower.forward_tokens(x)
    assert feats.shape == (5, side * side, d)  # patch tokens only: no CLS
    assert tokens.shape == (5, side * side + tower.has_cls, d)
    assert torch.equal(feats, tokens[:, 1:] if tower.has_cls else tokens)


@pytest.mark.parametrize("model_type", sorted(TEST_CONFIGS))
def test_vision_tower_over_every_tower(model_type):
    """Shape (N, T, d) without CLS, chunking invariance, and state-dict keys `model.*` = the tower module's own."""
    cfg = make_config(model_type)
    _, side, d = TEST_CONFIGS[model_type]
    has_cls = tower_has_cls(cfg)
    torch.manual_seed(0)
    vt = VisionTower(cfg, feature_layer=-2, drop_cls=has_cls, chunk_size=32).eval()
    assert vt.hidden_size == d and vt.model is vt.tower.module
    assert list(vt.state_dict()) == [f"model.{k}" for k in vt.tower.module.state_dict()]
    x = pixels(cfg, 5)
    with torch.no_grad():
        whole = vt(x)
        assert whole.shape == (5, side * side, d)
        for chunk in (1, 2):
            vt.chunk_size = chunk
            torch.testing.assert_close(vt(x), whole, rtol=1e-5, atol=1e-6)
    if has_cls:  # drop_cls=False keeps the CLS token first
        kept = VisionTower(cfg, drop_cls=False)
        kept.load_state_dict(vt.state_dict())
        with torch.no_grad():
            assert torch.equal(kept.eval()(x)[:, 1:], whole)
    else:
        with pytest.raises(ValueError, match="drop_cls must be False"):
            VisionTower(cfg, drop_cls=True)


def test_vit_stops_at_the_feature_layer_and_has_no_packaged_weights():
    cfg = make_config("clip_vision_model")
    assert len(build_tower(cfg, feature_layer=-2).module.encoder.layers) == 2
    assert len(build_tower(cfg, feature_layer=1).module.encoder.layers) == 1
    with pytest.raises(NotImplementedError, match="no packaged weights for the 'clip_vision_model' tower"):
        build_tower(cfg).load_pretrained()


def test_unregistered_model_type_falls_back_to_the_vit_tower():
    assert tower_class("some_new_vision_model") is vit.ViTTower
    cfg = make_config("siglip_vision_model")
    cfg.model_type = "some_new_vision_model"  # an unregistered type: a ViT without CLS
    assert not tower_has_cls(cfg)


def test_a_cls_token_of_an_unlisted_vit_is_an_error(monkeypatch):
    monkeypatch.setattr(vit, "_WITH_CLS", set())  # CLIP as if nobody had said it has a CLS token
    tower = build_tower(make_config("clip_vision_model"))
    with pytest.raises(ValueError, match="returned 17 tokens for 16 patches"):
        tower.forward_features(pixels(tower.config, 2))


def test_infllava_config_drops_exactly_the_towers_cls():
    for model_type in TEST_CONFIGS:
        cfg = tiny_config(vision_config=dict(model_type=model_type, **TEST_CONFIGS[model_type][0]))
        assert cfg.drops_cls == tower_has_cls(cfg.vision_config), model_type


class _ToyConfig(PreTrainedConfig):
    model_type = "toy_patch_tower"
    image_size: int = 16
    patch_size: int = 4
    hidden_size: int = 8
    num_hidden_layers: int = 1


def test_a_new_tower_is_one_registered_class(monkeypatch):
    """Registering a Tower is all VisionTower needs (a patchify conv as a CNN tower that is its own module)."""
    monkeypatch.setattr(towers, "_REGISTRY", dict(towers._REGISTRY))

    @register_tower("toy_patch_tower")
    class ToyTower(nn.Module, Tower):
        def __init__(self, config, feature_layer=-2):
            super().__init__()
            self.config, self.hidden_size = config, config.hidden_size
            self.patchify = nn.Conv2d(3, config.hidden_size, config.patch_size, config.patch_size)

        @property
        def module(self):
            return self

        def forward_tokens(self, pixel_values):
            return self.patchify(pixel_values).flatten(2).transpose(1, 2)

    assert registered_towers()["toy_patch_tower"] is ToyTower
    vt = VisionTower(_ToyConfig(), drop_cls=False, chunk_size=2)
    assert list(vt.state_dict()) == ["model.patchify.weight", "model.patchify.bias"]
    assert vt(torch.randn(3, 3, 16, 16)).shape == (3, 16, 8)
    with pytest.raises(ValueError, match="already has a tower"):
        register_tower("toy_patch_tower")(type("OtherTower", (Tower,), {}))
    with pytest.raises(TypeError, match="not a Tower"):
        register_tower("x")(nn.Linear)
