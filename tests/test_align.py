"""The align stage (training/align.py): grounded phrases -> visual-token targets, no LM pass."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import make_toy_dataset
from infllava.training.align import align_targets, phrase_embedding, region_cells, region_problem
from infllava.training.build import build_model
from infllava.training.config import ConfigError, load_config
from infllava.training.trainer import train

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny_cpu.yaml"


def test_region_cells_square_image():
    r = [{"bbox": [0, 0, 20, 20], "phrase": "a"}, {"bbox": [660, 660, 672, 672], "phrase": "b"},
         {"bbox": [330, 330, 342, 342], "phrase": "c"}, {"bbox": [10, 10, 30, 30], "phrase": "d"}]
    cells = region_cells(r, (672, 672), (3, 3), (7, 7))
    assert cells == {0: ["a", "d"], 48: ["b"], 24: ["c"]}


def test_region_cells_follow_the_padding_or_the_stretch():
    r = [{"bbox": [90, 0, 110, 20], "phrase": "top middle"}]
    # 200 x 100 padded (centred) to 200 x 200: the box centre y=10 lands at 60 of 200 -> row 2 of 7
    assert region_cells(r, (200, 100), (3, 3), (7, 7), "pad") == {2 * 7 + 3: ["top middle"]}
    # stretched instead: y = 10 of 100 -> row 0
    assert region_cells(r, (200, 100), (3, 3), (7, 7), "resize") == {3: ["top middle"]}
    with pytest.raises(ValueError, match="outside the 200x100 image"):
        region_cells([{"bbox": [300, 0, 310, 10], "phrase": "x"}], (200, 100), (3, 3), (7, 7))


def test_a_covering_region_names_every_cell_inside_its_box():
    # 7 x 7 tokens over 672 px: cell centres at 48 + 96 k; the box [0, 0, 200, 100] holds the centres of
    # columns 0-1 (48, 144) in row 0 (48); its own centre (100, 50) lies in cell 1
    r = [{"bbox": [0, 0, 200, 100], "phrase": "big", "cover": True}, {"bbox": [0, 0, 200, 100], "phrase": "c"}]
    assert region_cells(r, (672, 672), (3, 3), (7, 7)) == {0: ["big"], 1: ["big", "c"]}
    # a box smaller than a cell still names the cell of its centre
    tiny = [{"bbox": [100, 100, 110, 110], "phrase": "tiny", "cover": True}]
    assert region_cells(tiny, (672, 672), (3, 3), (7, 7)) == {8: ["tiny"]}
    # padded: 200 x 100 -> 200 x 200 (50 px rows above); the whole image covers the middle rows 2-4 only
    whole = [{"bbox": [0, 0, 200, 100], "phrase": "all", "cover": True}]
    assert sorted(region_cells(whole, (200, 100), (3, 3), (7, 7), "pad")) == list(range(14, 35))


@pytest.mark.parametrize("regions, message", [
    (None, "non-empty list"), ([], "non-empty list"), (["x"], "not an object"),
    ([{"bbox": [0, 0, 1], "phrase": "a"}], "4 numbers"), ([{"bbox": [5, 0, 1, 1], "phrase": "a"}], "x1 < x0"),
    ([{"bbox": [0, 0, 1, 1], "phrase": " "}], "phrase"), ([{"bbox": [0, 0, float("nan"), 1], "phrase": "a"}], "4 numbers"),
    ([{"bbox": [0, 0, 1, 1], "phrase": "a", "cover": "yes"}], "cover must be true or false"),
])
def test_region_problems_are_named(regions, message):
    assert message in region_problem(regions)


def test_region_problem_accepts_good_regions():
    assert region_problem([{"bbox": [0, 0, 1.5, 2], "phrase": "a red square"}]) is None
    assert region_problem([{"bbox": [0, 0, 1.5, 2], "phrase": "a red square", "cover": True}]) is None


def test_targets_are_phrase_embeddings_in_their_cells():
    model, proc, _ = build_model(load_config(TINY, ["data.path=x"]))
    T = model.config.num_image_tokens
    emb = model.get_input_embeddings().weight.detach()
    cells = [{0: ["red square"], T - 1: ["blue", "circle"]}]
    y = align_targets(model, proc.tokenizer, cells, "background")
    assert y.shape == (1, T, emb.shape[1])
    ids = proc.tokenizer("red square", add_special_tokens=False)["input_ids"]
    torch.testing.assert_close(y[0, 0], emb[ids].mean(0))
    ids = [i for p in ("blue", "circle") for i in proc.tokenizer(p, add_special_tokens=False)["input_ids"]]
    torch.testing.assert_close(y[0, T - 1], emb[ids].mean(0))
    bg = phrase_embedding(emb, proc.tokenizer, ["background"])
    for t in range(1, T - 1):
        torch.testing.assert_close(y[0, t], bg)


@pytest.mark.parametrize("views", ["full", "thumbnail", "local", "global"])
def test_crops_then_merge_is_encode_images(views):
    from infllava import InfLlavaForConditionalGeneration, tiny_config

    torch.manual_seed(0)
    model = InfLlavaForConditionalGeneration(tiny_config(views=views)).eval()
    H, W = model.config.input_size
    for shape in ((2, 3, H, W), (1, 3, H + 5, W - 3)):  # at the input size, and resized (own thumbnail)
        x = torch.randn(*shape)
        crops = model.image_crops(x)
        feats = model.vision_tower(crops.flatten(0, 1)).view(*crops.shape[:2], -1, model.config.vision_config.hidden_size)
        merged = model.merge_crop_features(feats, thumb_is_crop=tuple(shape[-2:]) == (H, W))
        torch.testing.assert_close(merged, model.encode_images(x))


def _grounded(tmp_path, n=12, extra=None):
    """The toy dataset (a coloured square at (5, 5)-(25, 25) of each image) with its region."""
    path = make_toy_dataset(tmp_path / "data", n=n)
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    for r in recs:
        r["regions"] = [{"bbox": [5, 5, 25, 25], "phrase": r["conversations"][1]["value"]}]
    recs += extra or []
    path.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    return path


def test_align_stage_learns_skips_bad_records_and_feeds_pretrain(tmp_path):
    bad = [{"id": "noregions", "image": "images/000.png", "conversations": [
                {"from": "human", "value": "<image>"}, {"from": "gpt", "value": "x"}]},
           {"id": "outside", "image": "images/001.png", "regions": [{"bbox": [500, 500, 510, 510], "phrase": "x"}],
            "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "x"}]},
           {"id": "gone", "image": "images/nope.png", "regions": [{"bbox": [0, 0, 1, 1], "phrase": "x"}],
            "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "x"}]}]
    data = _grounded(tmp_path, extra=bad)
    out = tmp_path / "align"
    cfg = load_config(TINY, [f"data.path={data}", f"data.images={data.parent}", "train.stage=align",
                             f"train.output_dir={out}", "train.max_steps=40", "train.global_batch_size=4",
                             "train.lr=3e-3", "train.log_every=1"])
    final = train(cfg)
    log = [json.loads(line) for line in (out / "train.log").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert len(losses) == 40 and losses[-1] < 0.7 * losses[0]
    skips = {r["id"]: r["reason"] for r in log if r.get("event") == "skip"}
    assert set(skips) == {"noregions", "outside", "gone"}
    assert "regions must be" in skips["noregions"] and "outside" in skips["outside"]
    adapter = load_file(str(final / "adapter.safetensors"))
    assert any(k.startswith("projector.") for k in adapter)
    # done runs are not run again; the adapter starts stage 1
    assert train(cfg) == final
    pre = load_config(TINY, [f"data.path={data}", f"data.images={data.parent}", f"model.adapter={final}",
                             f"train.output_dir={tmp_path / 'pre'}", "train.max_steps=1"])
    model, _, _ = build_model(pre)
    own = model.model.state_dict()  # the adapter is keyed relative to InfLlavaModel
    for k in ("projector.layers.0.weight", "dem.fuse_norm.weight"):
        torch.testing.assert_close(own[k], adapter[k])
    # a choice that holds no weights must match the adapter's, or it would silently compute something else
    saved = json.loads((final / "config.json").read_text())["dem_downsample"]
    other = next(d for d in ("bilinear", "avgpool", "maxpool") if d != saved)
    wrong = load_config(TINY, [f"data.path={data}", f"data.images={data.parent}", f"model.adapter={final}",
                               f"model.dem_downsample={other}", f"train.output_dir={tmp_path / 'pre2'}"])
    with pytest.raises(ConfigError, match=f"dem_downsample={saved!r}.*set model.dem_downsample={saved}"):
        build_model(wrong)
    summed = load_config(TINY, [f"data.path={data}", f"data.images={data.parent}", f"model.adapter={final}",
                                "model.thumbnail_merge=sum", f"train.output_dir={tmp_path / 'pre3'}"])
    with pytest.raises(ConfigError, match="thumbnail_merge='mean'.*set model.thumbnail_merge=mean"):
        build_model(summed)
    summed = load_config(TINY, [f"data.path={data}", f"data.images={data.parent}", "model.thumbnail_merge=sum",
                                f"train.output_dir={tmp_path / 'pre3'}"])
    assert build_model(summed)[0].config.thumbnail_merge == "sum"

def test_align_without_any_grounded_record_says_so(tmp_path):
    data = make_toy_dataset(tmp_path / "data", n=4)
    cfg = load_config(TINY, [f"data.path={data}", f"data.images={data.parent}", "train.stage=align",
                             f"train.output_dir={tmp_path / 'a'}"])
    with pytest.raises(ConfigError, match="no record has an image and valid regions"):
        train(cfg)


def test_align_background_must_be_a_phrase():
    with pytest.raises(ConfigError, match="align_background"):
        load_config(TINY, ["data.path=x", "train.stage=align", "train.align_background= "])


def test_word_targets_are_bags_of_phrase_tokens():
    from infllava.training.align import word_targets

    _, proc, _ = build_model(load_config(TINY, ["data.path=x"]))
    tok = proc.tokenizer
    cand, dist = word_targets(tok, [{0: ["red square"]}, {1: ["blue"]}], "background", 3)
    ids = lambda p: tok(p, add_special_tokens=False)["input_ids"]  # noqa: E731
    assert set(cand.tolist()) == set(ids("red square") + ids("blue") + ids("background"))
    assert dist.shape == (2, 3, len(cand))
    torch.testing.assert_close(dist.sum(-1), torch.ones(2, 3))
    col = {int(c): k for k, c in enumerate(cand)}
    for i in ids("red square"):
        assert dist[0, 0, col[i]] > 0
    blue = ids("blue")  # a bag of the phrase's tokens, each 1/len (the tiny tokenizer spells words out)
    assert abs(sum(float(dist[1, 1, col[i]]) for i in set(blue)) - 1.0) < 1e-6
    assert float(dist[1, 1, col[blue[0]]]) == blue.count(blue[0]) / len(blue)


def test_word_cross_entropy_tells_words_apart_where_the_distance_barely_does():
    from infllava.training.align import align_loss

    torch.manual_seed(0)
    cand = torch.randn(3, 16)
    shared = 4 * torch.randn(16)  # a word every phrase has ("digit"), much larger than the telling ones
    target = shared + cand[0]  # "digit 0"
    right, wrong = shared + cand[0], shared + cand[1]
    dist = torch.tensor([[[1.0, 0.0, 0.0]]])
    scale = torch.tensor(1.0)
    d_right, ce_right = align_loss(right[None, None], target[None, None], dist, cand + shared, scale, 0.05)
    d_wrong, ce_wrong = align_loss(wrong[None, None], target[None, None], dist, cand + shared, scale, 0.05)
    assert d_right == 0 and d_wrong > 0
    assert ce_wrong > ce_right + 0.5


def test_region_weight_weighs_the_tokens_that_hold_a_region():
    """align_loss with (B, T) weights is the weighted mean of the per-token losses: a region token of
    weight 10 among background tokens of weight 1 counts 10 times (train.align_region_weight)."""
    from infllava.training.align import align_loss

    torch.manual_seed(0)
    cand = torch.randn(4, 8)
    x, target = torch.randn(1, 3, 8), torch.randn(1, 3, 8)
    dist = torch.softmax(torch.randn(1, 3, 4), -1)
    scale = torch.tensor(2.0)
    per_token = [align_loss(x[:, t:t + 1], target[:, t:t + 1], dist[:, t:t + 1], cand, scale, 0.1) for t in range(3)]
    w = torch.tensor([[10.0, 1.0, 1.0]])
    mse, ce = align_loss(x, target, dist, cand, scale, 0.1, w)
    for k, got in enumerate((mse, ce)):
        want = (10 * per_token[0][k] + per_token[1][k] + per_token[2][k]) / 12
        torch.testing.assert_close(got, want)
    mse1, ce1 = align_loss(x, target, dist, cand, scale, 0.1)  # no weights: the plain mean
    torch.testing.assert_close(mse1, sum(p[0] for p in per_token) / 3)
    assert abs(float(mse - mse1)) > 1e-4  # the weights change it


def test_region_weight_must_be_positive():
    from infllava.training.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="align_region_weight"):
        load_config("configs/mini/align.yaml", ["train.align_region_weight=0"])
