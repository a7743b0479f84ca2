"""The DEM's downsampling variants are one registry (`infllava.model.dem.DOWNSAMPLERS`): every entry builds,
computes the right shapes, starts where it says, and round-trips; a new variant is one entry."""

from __future__ import annotations

import pytest
import torch

from infllava import InfLlavaForConditionalGeneration, tiny_config
from infllava.model.dem import DOWNSAMPLERS, Downsample, register_downsample

VARIANTS = list(DOWNSAMPLERS)


@pytest.mark.parametrize("name", VARIANTS)
def test_every_variant_builds_runs_and_round_trips(name, tmp_path):
    cfg = tiny_config(dem_downsample=name)
    torch.manual_seed(0)
    model = InfLlavaForConditionalGeneration(cfg).eval()
    px = torch.randn(2, 3, *cfg.input_size)
    with torch.no_grad():
        out = model.image_tokens(px)
    assert out.shape == (2, cfg.num_image_tokens, cfg.text_config.hidden_size) and torch.isfinite(out).all()
    reads_all = DOWNSAMPLERS[name].reads_all
    assert len(model.dem.sample_offsets) == (9 if reads_all else 1)
    model.save_pretrained(tmp_path)
    back = InfLlavaForConditionalGeneration.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(back.image_tokens(px), out)


@pytest.mark.parametrize("name", [n for n in VARIANTS if DOWNSAMPLERS[n].build is not None])
def test_learned_variants_start_as_avgpool(name):
    """unshuffle / mlpavg add weights initialised so that the model starts as the average over each cell."""
    torch.manual_seed(0)
    avg = InfLlavaForConditionalGeneration(tiny_config(dem_downsample="avgpool")).eval()
    learned = InfLlavaForConditionalGeneration(tiny_config(dem_downsample=name)).eval()
    missing, unexpected = learned.load_state_dict(avg.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("model.dem.") for k in missing)
    px = torch.randn(1, 3, *avg.config.input_size)
    with torch.no_grad():
        torch.testing.assert_close(learned.image_tokens(px), avg.image_tokens(px), rtol=1e-4, atol=1e-5)


def test_a_new_variant_is_one_entry(monkeypatch):
    name = "test-first-offset"
    for module in ("infllava.model.dem",):  # the entry goes with the test
        monkeypatch.setattr(f"{module}.DOWNSAMPLERS", dict(DOWNSAMPLERS))
    register_downsample(Downsample(name, reads_all=True, combine=lambda _, fused, __: fused[:, 0]))
    from infllava.training.config import load_config

    cfg = tiny_config(dem_downsample=name)
    model = InfLlavaForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        assert model.image_tokens(torch.randn(1, 3, *cfg.input_size)).shape[1] == cfg.num_image_tokens
    run = load_config("configs/tiny_cpu.yaml", ["data.path=x", f"model.dem_downsample={name}"])
    assert run.model.dem_downsample == name
    with pytest.raises(ValueError, match="dem_downsample must be one of .*test-first-offset"):
        tiny_config(dem_downsample="nope")
