"""The projector's fixed input standardisation (config.projector_input_norm): fitted once from the
training images' visual features before the first step, saved with the projector, never refitted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from accelerate.utils import set_seed
from safetensors.torch import load_file

from helpers import make_toy_dataset
from infllava import InfLlavaForConditionalGeneration
from infllava.model.projector import Projector
from infllava.processing import load_image
from infllava.training.build import build_model, load_adapter
from infllava.training.config import load_config
from infllava.training.trainer import train

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny_cpu.yaml"


def test_fitted_projector_standardises_its_input():
    torch.manual_seed(0)
    p = Projector("mlp2x_gelu", 6, 4, input_norm=True)
    x = torch.randn(200, 6) * torch.tensor([1.0, 2, 3, 4, 5, 0.5]) + torch.tensor([10.0, -3, 0, 1, 2, 7])
    assert p.needs_fit
    torch.testing.assert_close(p(x), p.layers(x))  # identity until fitted
    p.fit_input_norm(x.view(10, 20, 6))
    assert not p.needs_fit
    torch.testing.assert_close(p.input_mean, x.mean(0))
    torch.testing.assert_close(p.input_std, x.std(0))
    torch.testing.assert_close(p(x), p.layers((x - x.mean(0)) / x.std(0)))
    # a dead channel is not blown up
    x[:, 2] = 5.0
    p.fit_input_norm(x)
    assert float(p.input_std[2]) > 0 and torch.isfinite(p(x)).all()


@pytest.mark.parametrize("features, message", [(torch.ones(1, 6), ">= 2 feature vectors"),
                                               (torch.full((4, 6), float("nan")), "not finite")])
def test_fit_refuses_bad_features(features, message):
    with pytest.raises(ValueError, match=message):
        Projector("linear", 6, 4, input_norm=True).fit_input_norm(features)
    with pytest.raises(ValueError, match="no input normalisation"):
        Projector("linear", 6, 4).fit_input_norm(torch.randn(4, 6))


def _cfg(tmp_path, *overrides, kind="caption", n=12):
    data = make_toy_dataset(tmp_path / "data", n=n, kind=kind)
    return load_config(TINY, [f"data.path={data}", f"data.images={data.parent}", "model.projector_input_norm=true",
                              f"train.output_dir={tmp_path / 'run'}", *overrides]), data


def test_training_fits_the_statistics_once_and_stage_2_keeps_them(tmp_path):
    cfg, data = _cfg(tmp_path, "train.max_steps=2")
    final = train(cfg)
    adapter = load_file(str(final / "adapter.safetensors"))
    assert bool(adapter["projector.input_fitted"])
    # the same numbers from the run's initial model (same seed) over the dataset's 12 images
    set_seed(cfg.train.seed)
    model, processor, _ = build_model(cfg)
    records = [json.loads(line) for line in data.read_text().splitlines()]
    pixels = processor.image_processor.pixels([load_image(data.parent / r["image"]) for r in records])
    with torch.no_grad():
        feats = model.encode_images(pixels).flatten(0, 1)
    torch.testing.assert_close(adapter["projector.input_mean"], feats.mean(0), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(adapter["projector.input_std"], feats.std(0), atol=1e-5, rtol=1e-4)
    # saved with the model and with the adapter
    loaded = InfLlavaForConditionalGeneration.from_pretrained(final)
    torch.testing.assert_close(loaded.projector.input_mean, adapter["projector.input_mean"])
    fresh, _, _ = build_model(cfg)
    assert fresh.projector.needs_fit
    load_adapter(fresh, final)
    assert not fresh.projector.needs_fit
    # stage 2 from stage 1's output does not refit
    cfg2, _ = _cfg(tmp_path / "s2", "train.max_steps=1", "train.stage=finetune", "data.max_length=512", kind="qa")
    cfg2.model.preset, cfg2.model.base = None, str(final)
    final2 = train(cfg2)
    torch.testing.assert_close(load_file(str(final2 / "adapter.safetensors"))["projector.input_mean"],
                               adapter["projector.input_mean"])


def test_align_stage_fits_the_statistics(tmp_path):
    cfg, data = _cfg(tmp_path, "train.stage=align", "train.max_steps=2", "train.global_batch_size=4")
    recs = [json.loads(line) for line in data.read_text().splitlines()]
    for r in recs:
        r["regions"] = [{"bbox": [5, 5, 25, 25], "phrase": r["conversations"][1]["value"]}]
    data.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    final = train(cfg)
    model = InfLlavaForConditionalGeneration.from_pretrained(final)
    assert not model.projector.needs_fit
    std = model.projector.input_std
    assert torch.isfinite(std).all() and (std > 0).all() and not torch.equal(std, torch.ones_like(std))
