"""Disk cache of the frozen tower's outputs: same features and loss, hits on repeat, namespaced by tower."""

from __future__ import annotations

import torch

from infllava import InfLlavaForConditionalGeneration
from infllava.config import tiny_config
from infllava.model.feature_cache import FeatureCache, tower_fingerprint


def _model(seed=0):
    torch.manual_seed(seed)
    model = InfLlavaForConditionalGeneration(tiny_config()).eval()
    model.vision_tower.requires_grad_(False)
    return model


def _cache(model, root):
    tower = model.vision_tower
    return FeatureCache(root, tower_fingerprint(tower, model.config.vision_config.to_dict()))


def test_cached_features_equal_computed_and_hit_on_repeat(tmp_path):
    model = _model()
    S = model.config.tower_image_size
    g = model.config.grid
    x = torch.randn(2, 3, g[0] * S, g[1] * S)
    with torch.no_grad():
        plain = model.image_tokens(x)
    cache = model.vision_tower.feature_cache = _cache(model, tmp_path)
    with torch.no_grad():
        first = model.image_tokens(x)
    assert cache.misses > 0 and cache.hits == 0
    misses = cache.misses
    with torch.no_grad():
        second = model.image_tokens(x)
    assert cache.hits == misses and cache.misses == misses
    assert torch.equal(first, second)
    assert (first - plain).abs().max() < 1e-5
    # gradients still reach the DEM and projector through cached features
    model.vision_tower.feature_cache = _cache(model, tmp_path)
    model.image_tokens(x).square().sum().backward()
    assert model.projector.parameters().__next__().grad.abs().max() > 0


def test_other_tower_weights_use_another_namespace_and_damaged_entries_recompute(tmp_path):
    a, b = _model(0), _model(1)
    ca, cb = _cache(a, tmp_path), _cache(b, tmp_path)
    assert ca.dir != cb.dir
    S = a.config.tower_image_size
    crops = torch.randn(3, 3, S, S)
    fa = ca.get_or_compute(crops, lambda c: a.vision_tower._run(c, False))
    for f in ca.dir.rglob("*.safetensors"):
        f.write_bytes(b"garbage")
    again = ca.get_or_compute(crops, lambda c: a.vision_tower._run(c, False))
    assert ca.misses == 6 and torch.allclose(fa, again)
    fb = cb.get_or_compute(crops, lambda c: b.vision_tower._run(c, False))
    assert cb.misses == 3 and not torch.allclose(fa, fb)
