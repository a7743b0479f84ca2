"""Core model: crops, exactness against the official computation, generation, save/load."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForImageTextToText

from helpers import paired_models
from infllava import InfLlavaConfig, InfLlavaForConditionalGeneration, tiny_config
from infllava.model.crops import global_crops, interleave_global, local_crops, thumbnail, tile_local
from infllava.model.dem import axis_samples

TOL = 1e-4


# ---------------------------------------------------------------- DCM
@pytest.mark.parametrize("grid", [(3, 3), (2, 3), (1, 1), (4, 2)])
def test_crops_match_loops(grid):
    gh, gw = grid
    S = 5
    x = torch.randn(2, 3, gh * S, gw * S)
    loc, glo = local_crops(x, grid), global_crops(x, grid)
    for i in range(gh):
        for j in range(gw):
            k = i * gw + j
            assert torch.equal(loc[:, k], x[:, :, i * S:(i + 1) * S, j * S:(j + 1) * S])
            assert torch.equal(glo[:, k], x[:, :, i::gh, j::gw])
    # inverses on feature maps (B, K, h, w, d)
    feats = torch.randn(2, gh * gw, 4, 3, 6)
    L = tile_local(feats, grid)
    G = interleave_global(feats, grid)
    for i in range(gh):
        for j in range(gw):
            assert torch.equal(L[:, i * 4:(i + 1) * 4, j * 3:(j + 1) * 3], feats[:, i * gw + j])
            assert torch.equal(G[:, i::gh, j::gw], feats[:, i * gw + j])


def test_crop_grid_mismatch_is_an_error():
    with pytest.raises(ValueError, match="3x3 grid"):
        local_crops(torch.zeros(1, 3, 10, 10), (3, 3))


def test_thumbnail_is_the_central_global_crop():
    """Bicubic at an exact odd ratio samples pixel n*k + (n-1)/2: the official thumbnail is global crop (1, 1)."""
    x = torch.randn(1, 3, 1008, 1008)
    assert torch.equal(thumbnail(x, 336), x[..., 1::3, 1::3])


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_bilinear_downsample_reads_only_the_sampled_offsets(n):
    h = 6
    m = torch.randn(1, 2, n * h, n * h)
    ref = F.interpolate(m, size=(h, h), mode="bilinear", align_corners=False)
    offs, wts = axis_samples(n, "bilinear")
    ours = sum(wi * wj * m[:, :, i::n, j::n] for i, wi in zip(offs, wts) for j, wj in zip(offs, wts))
    assert (ref - ours).abs().max() < 1e-6


# ---------------------------------------------------------------- exactness
PARITY_CASES = {
    "3x3 (official geometry, h not divisible by n)": dict(),
    "3x3, 6x6 patch grid": dict(image_size=42, patch_size=7),
    "2x2 even grid (two offsets per axis, extra thumbnail pass)": dict(grid=(2, 2)),
    "4x4 even grid": dict(grid=(4, 4), image_size=28, patch_size=7),
    "1x1": dict(grid=(1, 1)),
    "avgpool (paper variant, full DEM)": dict(dem_downsample="avgpool"),
    "maxpool (ours, full DEM)": dict(dem_downsample="maxpool"),
    "select layer -1": dict(vision_feature_layer=-1),
    "select layer 1": dict(vision_feature_layer=1),
}


@pytest.mark.parametrize("case", list(PARITY_CASES))
def test_image_features_match_official(case):
    ref, ours, cfg = paired_models(**PARITY_CASES[case])
    px = torch.randn(2, 3, *cfg.input_size)
    with torch.no_grad():
        a, b = ref.get_image_features(px), ours.image_tokens(px)
    assert a.shape == b.shape == (2, cfg.num_image_tokens, cfg.text_config.hidden_size)
    assert (a - b).abs().max() <= TOL


def test_unshuffle_downsample_starts_as_avgpool_and_concatenates_the_cell():
    """dem_downsample "unshuffle" (ours): at init the same features as avgpool; with any weights, the
    Linear over each cell's positions concatenated, as pixel_unshuffle orders them (checked against the
    reference's full fused map)."""
    ref, ours, cfg = paired_models(dem_downsample="avgpool")
    un = InfLlavaForConditionalGeneration(tiny_config(dem_downsample="unshuffle")).eval()
    missing, unexpected = un.load_state_dict(ours.state_dict(), strict=False)
    assert not unexpected and sorted(missing) == ["model.dem.downsample.bias", "model.dem.downsample.weight"]
    assert un.dem.downsample.weight.shape == (cfg.vision_config.hidden_size, 9 * cfg.vision_config.hidden_size)
    px = torch.randn(2, 3, *cfg.input_size)
    with torch.no_grad():
        assert (un.image_tokens(px) - ours.image_tokens(px)).abs().max() <= TOL
        un.dem.downsample.weight.normal_(0, 0.05)
        un.dem.downsample.bias.normal_(0, 0.1)
    ref.downsample = "unshuffle"
    ref.spatial_embed.unshuffle_weight = un.dem.downsample.weight
    ref.spatial_embed.unshuffle_bias = un.dem.downsample.bias
    with torch.no_grad():
        a, b = ref.get_image_features(px), un.image_tokens(px)
        assert (a - b).abs().max() <= TOL
        assert (b - ours.image_tokens(px)).abs().max() > 100 * TOL  # the weights do matter


def test_input_of_other_size_is_resized_like_official():
    ref, ours, cfg = paired_models()
    px = torch.randn(1, 3, 2 * cfg.tower_image_size, 2 * cfg.tower_image_size)  # e.g. 672 for a 1008 model
    with torch.no_grad():
        assert (ref.get_image_features(px) - ours.image_tokens(px)).abs().max() <= TOL


def test_tower_stops_at_the_selected_layer():
    _, ours, cfg = paired_models()
    assert len(ours.vision_tower.model.encoder.layers) == cfg.vision_config.num_hidden_layers - 1
    assert not any("post_layernorm" in k for k in ours.state_dict())


def test_only_needed_crops_go_through_the_tower():
    _, ours, cfg = paired_models()
    seen = []
    hook = ours.vision_tower.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    with torch.no_grad():
        ours.image_tokens(torch.randn(2, 3, *cfg.input_size))
    hook.remove()
    assert seen == [2 * 10]  # one batched call: 9 local + 1 global crop per image


def test_logits_match_official_splice():
    ref, ours, cfg = paired_models()
    px = torch.randn(1, 3, *cfg.input_size)
    text_before, text_after = [1, 17, 42, 5], [9, 33, 2, 7, 8]
    T = cfg.num_image_tokens
    ids = torch.tensor([text_before + [cfg.image_token_id] * T + text_after])
    with torch.no_grad():
        a = ref.logits(text_before + [-200] + text_after, px)
        b = ours(input_ids=ids, pixel_values=px).logits
    assert a.shape == b.shape
    assert (a - b).abs().max() <= TOL


def test_gradients_of_dem_and_projector_match_official():
    ref, ours, cfg = paired_models()
    px = torch.randn(1, 3, *cfg.input_size)
    target = torch.randn(1, cfg.num_image_tokens, cfg.text_config.hidden_size)
    for m in (ref, ours):
        ((m.image_tokens(px) - target) ** 2).mean().backward()
    pairs = [
        (ref.spatial_embed.attention.linears[0].weight, ours.dem.attn.q_proj.weight),
        (ref.spatial_embed.attention.linears[1].weight, ours.dem.attn.k_proj.weight),
        (ref.spatial_embed.attention.ln.weight, ours.dem.attn.norm.weight),
        (ref.spatial_embed.ffn_crop[0].weight, ours.dem.ffn_local.fc1.weight),
        (ref.spatial_embed.ffn_stride[2].bias, ours.dem.ffn_global.fc2.bias),
        (ref.spatial_embed.ln_fuse.weight, ours.dem.fuse_norm.weight),
        (ref.mm_projector[0].weight, ours.projector.layers[0].weight),
    ]
    for r, o in pairs:
        assert (r.grad - o.grad).abs().max() <= TOL * max(1.0, r.grad.abs().max().item())


def test_unshared_attention_and_sum_merge_are_selectable():
    cfg = tiny_config(dem_share_attention=False, thumbnail_merge="sum")
    model = InfLlavaForConditionalGeneration(cfg).eval()
    assert model.dem.local_attn is not None
    out = model.image_tokens(torch.randn(1, 3, *cfg.input_size))
    assert out.shape == (1, cfg.num_image_tokens, cfg.text_config.hidden_size)


def test_concat_merge_keeps_thumbnail_and_dem_apart():
    """thumbnail_merge="concat": [thumbnail, DEM output] along the channels, the projector reading 2d;
    its halves are the thumbnail view's features and 2 x mean-merge - thumbnail (same DEM weights)."""
    torch.manual_seed(0)
    cat_cfg = tiny_config(thumbnail_merge="concat")
    d = cat_cfg.vision_config.hidden_size
    assert cat_cfg.projector_input_size == 2 * d
    cat_model = InfLlavaForConditionalGeneration(cat_cfg).eval()
    assert cat_model.projector.layers[0].in_features == 2 * d
    mean_model = InfLlavaForConditionalGeneration(tiny_config()).eval()
    thumb_model = InfLlavaForConditionalGeneration(tiny_config(thumbnail_merge="concat", views="thumbnail")).eval()
    assert thumb_model.projector.layers[0].in_features == d  # nothing to concatenate
    shared = {k: v for k, v in cat_model.state_dict().items() if not k.startswith("model.projector.")}
    for m in (mean_model, thumb_model):
        m.load_state_dict(shared, strict=False)
    x = torch.randn(2, 3, *cat_cfg.input_size)
    with torch.no_grad():
        both, mean, thumb = cat_model.encode_images(x), mean_model.encode_images(x), thumb_model.encode_images(x)
        tokens = cat_model.image_tokens(x)
    assert both.shape == (2, cat_cfg.num_image_tokens, 2 * d)
    torch.testing.assert_close(both[..., :d], thumb)
    torch.testing.assert_close(both[..., d:], 2 * mean - thumb)
    assert tokens.shape == (2, cat_cfg.num_image_tokens, cat_cfg.text_config.hidden_size)
    with pytest.raises(ValueError, match="thumbnail_merge must be"):
        tiny_config(thumbnail_merge="max")


@pytest.mark.parametrize("downsample", ["avgpool", "unshuffle"])
def test_local_residual_starts_as_local_view_and_learns_the_gate(downsample):
    """dem_local_residual: at initialisation (gate 0) the full model computes exactly the local-only view;
    the loss reaches the gate, and an open gate adds the fusion."""
    torch.manual_seed(0)
    cfg = tiny_config(dem_downsample=downsample, dem_local_residual=True)
    full = InfLlavaForConditionalGeneration(cfg).eval()
    assert torch.count_nonzero(full.dem.local_gate) == 0
    local = InfLlavaForConditionalGeneration(tiny_config(dem_downsample=downsample, views="local")).eval()
    local.load_state_dict({k: v for k, v in full.state_dict().items() if k != "model.dem.local_gate"})
    x = torch.randn(2, 3, *cfg.input_size)
    with torch.no_grad():
        torch.testing.assert_close(full.encode_images(x), local.encode_images(x))
    full.encode_images(x).square().sum().backward()
    assert full.dem.local_gate.grad is not None and full.dem.local_gate.grad.abs().sum() > 0
    with torch.no_grad():
        full.dem.local_gate.fill_(1.0)
        assert not torch.allclose(full.encode_images(x), local.encode_images(x))
    plain = InfLlavaForConditionalGeneration(tiny_config(dem_downsample=downsample))
    assert plain.dem.local_gate is None and "model.dem.local_gate" not in plain.state_dict()  # the official layout


def test_siglip_tower_without_cls():
    vision = dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, image_size=28, patch_size=7)
    cfg = tiny_config(vision_config=vision)
    assert not cfg.drops_cls
    model = InfLlavaForConditionalGeneration(cfg).eval()
    out = model.image_tokens(torch.randn(2, 3, *cfg.input_size))
    assert out.shape == (2, 16, cfg.text_config.hidden_size)


@pytest.mark.parametrize("bad, match", [
    (dict(grid=(0, 3)), "grid"),
    (dict(dem_num_heads=5), "dem_num_heads"),
    (dict(dem_downsample="nearest"), "dem_downsample"),
    (dict(projector_type="mlpx"), "projector_type"),
    (dict(vision_feature_layer=-9), "vision_feature_layer"),
])
def test_bad_config_names_the_field(bad, match):
    with pytest.raises(ValueError, match=match):
        tiny_config(**bad)


# ---------------------------------------------------------------- placeholders
@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    cfg = tiny_config()
    return InfLlavaForConditionalGeneration(cfg).eval(), cfg


def _prompt(cfg, n_images=1, pre=(1, 11, 12), post=(13, 14)):
    return list(pre) + [cfg.image_token_id] * (cfg.num_image_tokens * n_images) + list(post)


def test_placeholder_image_count_mismatch(tiny):
    model, cfg = tiny
    ids = torch.tensor([_prompt(cfg, n_images=2)])
    with pytest.raises(ValueError, match="2 images of 16 tokens.*1 image"):
        model(input_ids=ids, pixel_values=torch.randn(1, 3, *cfg.input_size))
    with pytest.raises(ValueError, match="0 image"):
        model(input_ids=torch.tensor([_prompt(cfg)]))
    partial = torch.tensor([[1, 2] + [cfg.image_token_id] * 5])
    with pytest.raises(ValueError, match="exactly 16 tokens"):
        model(input_ids=partial, pixel_values=torch.randn(1, 3, *cfg.input_size))


def test_text_only_forward(tiny):
    model, _ = tiny
    out = model(input_ids=torch.tensor([[1, 5, 6, 7]]))
    assert out.logits.shape == (1, 4, 300)


# ---------------------------------------------------------------- generation
def test_kv_cache_generation_equals_no_cache(tiny):
    model, cfg = tiny
    ids = torch.tensor([_prompt(cfg)])
    px = torch.randn(1, 3, *cfg.input_size)
    with torch.no_grad():
        a = model.generate(input_ids=ids, pixel_values=px, max_new_tokens=6, do_sample=False)
        b = model.generate(input_ids=ids, pixel_values=px, max_new_tokens=6, do_sample=False, use_cache=False)
        # and a manual greedy loop through forward()
        seq = ids
        for _ in range(6):
            nxt = model(input_ids=seq, pixel_values=px).logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], 1)
    assert torch.equal(a, b)
    assert torch.equal(a, seq)


def test_batched_left_padded_generation_equals_one_by_one(tiny):
    model, cfg = tiny
    prompts = [_prompt(cfg, pre=(1, 11)), _prompt(cfg, pre=(1, 21, 22, 23, 24, 25), post=(9,))]
    px = torch.randn(2, 3, *cfg.input_size)
    L = max(map(len, prompts))
    ids = torch.tensor([[0] * (L - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (L - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        batched = model.generate(input_ids=ids, attention_mask=mask, pixel_values=px, max_new_tokens=5,
                                 do_sample=False)
        for b, p in enumerate(prompts):
            single = model.generate(input_ids=torch.tensor([p]), pixel_values=px[b:b + 1], max_new_tokens=5,
                                    do_sample=False)
            assert batched[b, L:].tolist() == single[0, len(p):].tolist()


def test_precomputed_image_features_give_the_same_logits(tiny):
    model, cfg = tiny
    ids = torch.tensor([_prompt(cfg)])
    px = torch.randn(1, 3, *cfg.input_size)
    with torch.no_grad():
        a = model(input_ids=ids, pixel_values=px).logits
        b = model(input_ids=ids, image_features=model.image_tokens(px)).logits
    assert torch.equal(a, b)


# ---------------------------------------------------------------- save / load
def test_save_pretrained_round_trip_and_auto_classes(tiny, tmp_path):
    model, cfg = tiny
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    assert isinstance(AutoConfig.from_pretrained(tmp_path), InfLlavaConfig)
    for loader in (InfLlavaForConditionalGeneration, AutoModelForImageTextToText):
        loaded = loader.from_pretrained(tmp_path).eval()
        assert isinstance(loaded, InfLlavaForConditionalGeneration)
        ids = torch.tensor([_prompt(cfg)])
        px = torch.randn(1, 3, *cfg.input_size)
        with torch.no_grad():
            assert torch.equal(model(input_ids=ids, pixel_values=px).logits,
                               loaded(input_ids=ids, pixel_values=px).logits)
    assert loaded.config.grid == cfg.grid and loaded.config.dem_num_heads == cfg.dem_num_heads


def test_tied_embeddings_round_trip(tmp_path):
    cfg = tiny_config(text_config=dict(tiny_config().text_config.to_dict(), tie_word_embeddings=True))
    model = InfLlavaForConditionalGeneration(cfg)
    assert model.lm_head.weight.data_ptr() == model.language_model.embed_tokens.weight.data_ptr()
    model.save_pretrained(tmp_path)
    loaded = InfLlavaForConditionalGeneration.from_pretrained(tmp_path)
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)
    assert loaded.lm_head.weight.data_ptr() == loaded.language_model.embed_tokens.weight.data_ptr()  # still tied


@pytest.mark.parametrize("views, crops_per_image", [("full", 10), ("thumbnail", 1), ("local", 10), ("global", 9)])
def test_view_ablations(views, crops_per_image):
    torch.manual_seed(0)
    cfg = tiny_config(views=views)
    model = InfLlavaForConditionalGeneration(cfg).eval()
    seen = []
    hook = model.vision_tower.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    px = torch.randn(2, 3, *cfg.input_size)
    with torch.no_grad():
        out = model.encode_images(px)
        tower = lambda imgs: model.vision_tower(imgs).view(imgs.shape[0], 4, 4, -1)  # noqa: E731
        thumb = tower(px[..., 1::3, 1::3])
        if views == "thumbnail":
            expected = thumb
        elif views == "local":
            L = tile_local(torch.stack([tower(c) for c in local_crops(px, (3, 3)).unbind(1)], 1), (3, 3))
            pooled = F.avg_pool2d(L.permute(0, 3, 1, 2), 3).permute(0, 2, 3, 1)
            expected = (thumb + pooled) / 2
        elif views == "global":
            G = interleave_global(torch.stack([tower(c) for c in global_crops(px, (3, 3)).unbind(1)], 1), (3, 3))
            pooled = F.avg_pool2d(G.permute(0, 3, 1, 2), 3).permute(0, 2, 3, 1)
            expected = (thumb + pooled) / 2
    hook.remove()
    assert seen[0] == 2 * crops_per_image
    if views != "full":
        assert (out - expected.flatten(1, 2)).abs().max() < 1e-5


@pytest.mark.parametrize("text", [
    dict(model_type="gpt2", vocab_size=300, n_embd=64, n_layer=2, n_head=4, n_positions=512, bos_token_id=1,
         eos_token_id=2),
    dict(model_type="qwen2", vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
         num_attention_heads=4, num_key_value_heads=2),
], ids=["gpt2", "qwen2"])
def test_other_causal_lms(text, tmp_path):
    """Any transformers causal LM: generation with and without KV cache agree, save/load round trip."""
    torch.manual_seed(0)
    cfg = tiny_config(text_config=text)
    model = InfLlavaForConditionalGeneration(cfg).eval()
    ids = torch.tensor([[1, 5] + [cfg.image_token_id] * cfg.num_image_tokens + [7]])
    px = torch.randn(1, 3, *cfg.input_size)
    with torch.no_grad():
        a = model.generate(input_ids=ids, pixel_values=px, max_new_tokens=4, do_sample=False)
        b = model.generate(input_ids=ids, pixel_values=px, max_new_tokens=4, do_sample=False, use_cache=False)
    assert torch.equal(a, b)
    model.save_pretrained(tmp_path)
    loaded = InfLlavaForConditionalGeneration.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids, pixel_values=px).logits, loaded(input_ids=ids, pixel_values=px).logits)


def test_mlpavg_downsample_starts_as_avgpool_and_shares_one_mlp():
    """dem_downsample "mlpavg" (ours): at init the same features as avgpool (zero last layer, also after
    the model's weight init); with weights, the mean over each cell of x + MLP(x), one MLP for all
    positions."""
    _, ours, cfg = paired_models(dem_downsample="avgpool")
    ml = InfLlavaForConditionalGeneration(tiny_config(dem_downsample="mlpavg")).eval()
    missing, unexpected = ml.load_state_dict(ours.state_dict(), strict=False)
    assert not unexpected and sorted(missing) == ["model.dem.cell_mlp.0.bias", "model.dem.cell_mlp.0.weight",
                                                  "model.dem.cell_mlp.2.bias", "model.dem.cell_mlp.2.weight"]
    assert ml.dem.cell_mlp[2].weight.abs().max() == 0
    px = torch.randn(2, 3, *cfg.input_size)
    with torch.no_grad():
        assert (ml.image_tokens(px) - ours.image_tokens(px)).abs().max() <= TOL
        ml.dem.cell_mlp[2].weight.normal_(0, 0.2)
        assert (ml.image_tokens(px) - ours.image_tokens(px)).abs().max() > 100 * TOL
        # the tokens are the mean over each cell of x + MLP(x), x the fused map at the cell's positions
        seen = {}
        h1 = ml.dem.cell_mlp.register_forward_hook(lambda m, i, o: seen.update(x=i[0]))
        h2 = ml.dem.register_forward_hook(lambda m, i, o: seen.update(out=o))
        ml.image_tokens(px)
        h1.remove(), h2.remove()
        x = seen["x"]  # (B, O, h, w, d): O = all n_h*n_w positions of a cell
        assert x.shape[1] == 9
        assert (seen["out"] - (x + ml.dem.cell_mlp(x)).mean(1)).abs().max() <= 1e-5
