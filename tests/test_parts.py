"""Shipping small deltas (DEM, projector, LoRA) over the packaged EfficientNet-Lite0 + SmolLM2."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import infllava
from infllava import InfLlavaForConditionalGeneration
from infllava.evaluation.hrvqa import write_split
from infllava.parts import PartsError, export_parts
from infllava.training.config import load_config
from infllava.training.trainer import train


@pytest.fixture(scope="module")
def trained_mini(tmp_path_factory):
    root = tmp_path_factory.mktemp("mini")
    data = write_split(root / "bench", "train", 2)
    cfg = load_config(None, [
        "model.vision_tower=efficientnet-lite0", "model.language_model=smollm2", "model.vision_stage=8",
        f"data.path={data}", f"data.images={root / 'bench'}", "data.max_length=512", "data.num_workers=0",
        "train.stage=finetune", f"train.output_dir={root / 'run'}", "train.max_steps=1", "train.global_batch_size=2",
        "train.micro_batch_size=2", "train.lr=1e-2", "train.warmup_ratio=0", "train.precision=fp32",
        "train.save_every=0", "train.lora.enabled=true", "train.lora.r=4", "train.lora.alpha=8",
    ])
    return train(cfg), root


@pytest.mark.slow
def test_parts_reassemble_the_trained_model(trained_mini, tmp_path):
    final, root = trained_mini
    lora = load_file(str(final / "lora.safetensors"))
    assert lora and any(k.endswith("lora_B") and v.abs().max() > 0 for k, v in lora.items())
    parts = export_parts(final, tmp_path / "parts")
    assert not (parts / "model.safetensors").exists()
    full = InfLlavaForConditionalGeneration.from_pretrained(final).eval()
    model, processor = infllava.load(parts, device="cpu")
    enc = processor.apply_chat([{"role": "user", "content": "What colour is the small square?"}],
                               images=[str(root / "bench" / "images" / "train" / "000000.png")])
    with torch.no_grad():
        assert (full(**enc).logits - model(**enc).logits).abs().max() < 1e-4


@pytest.mark.slow
def test_corrupt_shipped_weights_are_named(trained_mini, tmp_path):
    parts = export_parts(trained_mini[0], tmp_path / "parts")
    with open(parts / "adapter.safetensors", "r+b") as f:
        f.seek(200)
        f.write(b"\x00\x01\x02")
    with pytest.raises(PartsError, match="adapter.safetensors is corrupt"):
        infllava.load(parts, device="cpu")
    spec = json.loads((parts / "parts.json").read_text())
    spec["format"] = "other"
    (parts / "parts.json").write_text(json.dumps(spec))
    with pytest.raises(PartsError, match="unknown format"):
        infllava.load(parts, device="cpu")


@pytest.mark.slow
def test_half_precision_parts_are_half_the_size_and_load_in_float32(trained_mini, tmp_path):
    final, root = trained_mini
    full = export_parts(final, tmp_path / "fp32")
    half = export_parts(final, tmp_path / "fp16", dtype=torch.float16)
    for name in ("adapter.safetensors", "lora.safetensors"):
        assert (half / name).stat().st_size < 0.6 * (full / name).stat().st_size
        assert all(v.dtype == torch.float16 for v in load_file(str(half / name)).values())
    m32, processor = infllava.load(full, device="cpu")
    m16, _ = infllava.load(half, device="cpu")
    assert next(m16.parameters()).dtype == torch.float32
    enc = processor.apply_chat([{"role": "user", "content": "What digit is written in the small white box?"}],
                               images=[str(root / "bench" / "images" / "train" / "000001.png")])
    with torch.no_grad():
        a, b = m32(**enc).logits[0, -1], m16(**enc).logits[0, -1]
    assert (a - b).abs().max() < 0.05 * a.abs().max()
    assert a.argmax() == b.argmax()


@pytest.mark.slow
def test_a_run_from_a_lora_merged_base_is_not_exported_without_its_base_delta(trained_mini, tmp_path):
    """Stage 2 continued from a LoRA stage 2 (model.base = its final/): the saved LM holds the first delta
    merged, the new lora.safetensors only the second; parts over the packaged LM would silently drop the
    first, so the export refuses, naming the base."""
    final, root = trained_mini
    cfg = load_config(None, [
        f"model.base={final}", f"data.path={root / 'bench' / 'train.jsonl'}", f"data.images={root / 'bench'}",
        "data.max_length=512", "data.num_workers=0", "train.stage=finetune", f"train.output_dir={tmp_path / 'more'}",
        "train.max_steps=1", "train.global_batch_size=2", "train.micro_batch_size=2", "train.lr=1e-2",
        "train.warmup_ratio=0", "train.precision=fp32", "train.save_every=0", "train.lora.enabled=true",
        "train.lora.r=4", "train.lora.alpha=8",
    ])
    more = train(cfg)
    assert json.loads((more / "lm_delta.json").read_text())["merged_from"] == str(final)
    with pytest.raises(PartsError, match="merged LoRA delta of its base"):
        export_parts(more, tmp_path / "parts")
    assert not (final / "lm_delta.json").exists()  # the first run's base (packaged LM) had no delta
