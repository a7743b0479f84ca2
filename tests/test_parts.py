"""Shipping small deltas (DEM, projector, LoRA) over the packaged EfficientNet-Lite0 + SmolLM2."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import infllava
from infllava import InfLlavaForConditionalGeneration
from infllava.evaluation.hrvqa.writing import write_split
from infllava.parts import PartsError, combine_lora, export_parts, is_parts_dir
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
        "train.save_full_model=true",  # the merged model too, to compare the parts with
    ])
    return train(cfg), root


def test_combined_lora_factors_merge_like_the_runs_in_turn():
    g = torch.Generator().manual_seed(0)

    def run(r, modules):
        f = {}
        for m in modules:
            f[f"{m}.lora_A"], f[f"{m}.lora_B"] = torch.randn(r, 5, generator=g), torch.randn(6, r, generator=g)
        return f, {"r": r, "alpha": 2 * r + 1}

    first, second = run(3, ["q", "v"]), run(2, ["q", "k"])
    factors, meta = combine_lora(first, second)
    assert meta == {"r": 5, "alpha": 5, "runs": 2, "ranks": [3, 2]}
    for m in ("q", "v", "k"):
        want = sum(f[1]["alpha"] / f[1]["r"] * f[0][f"{m}.lora_B"] @ f[0][f"{m}.lora_A"]
                   for f in (first, second) if f"{m}.lora_A" in f[0])
        torch.testing.assert_close(factors[f"{m}.lora_B"] @ factors[f"{m}.lora_A"] * meta["alpha"] / meta["r"], want)
    assert factors["q.lora_A"].shape == (5, 5) and factors["v.lora_A"].shape == (3, 5)
    assert combine_lora(first, ({}, {})) is first  # a run that trained no LoRA keeps its base's
    third = combine_lora((factors, meta), run(1, ["q"]))  # a third run stacks again
    assert third[1]["runs"] == 3 and third[0]["q.lora_A"].shape == (6, 5)


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


def _continue(final, root, out, lora=True, full=True):
    return train(load_config(None, [
        f"model.base={final}", f"data.path={root / 'bench' / 'train.jsonl'}", f"data.images={root / 'bench'}",
        "data.max_length=512", "data.num_workers=0", "train.stage=finetune", f"train.output_dir={out}",
        "train.max_steps=1", "train.global_batch_size=2", "train.micro_batch_size=2", "train.lr=1e-2",
        "train.warmup_ratio=0", "train.precision=fp32", "train.save_every=0", f"train.lora.enabled={str(lora).lower()}",
        "train.lora.r=2", "train.lora.alpha=8", f"train.save_full_model={str(full).lower()}",
    ]))


@pytest.mark.slow
def test_a_final_over_packaged_backbones_is_parts_and_serves_as_a_base(trained_mini, tmp_path):
    """By default a LoRA run over the packaged backbones writes only its parts (no 0.5 GB model.safetensors);
    the next stage builds on that directory exactly as on the full merged one."""
    final, root = trained_mini
    compact = _continue(final, root, tmp_path / "compact", full=False)
    assert is_parts_dir(compact) and not (compact / "model.safetensors").exists()
    assert sum(f.stat().st_size for f in compact.iterdir()) < 60e6
    assert json.loads((compact / "parts.json").read_text())["lora"]["runs"] == 2
    same = _continue(final, root, tmp_path / "same")  # the same run, full model written too
    enc_model, processor = infllava.load(compact, device="cpu")
    enc = processor.apply_chat([{"role": "user", "content": "What shape is the small object?"}],
                               images=[str(root / "bench" / "images" / "train" / "000000.png")])
    with torch.no_grad():
        a = enc_model(**enc).logits
        b = InfLlavaForConditionalGeneration.from_pretrained(same).eval()(**enc).logits
    assert torch.equal(a, b)  # run-by-run merging of power-of-two-scaled factors: the merged chain exactly
    third = _continue(compact, root, tmp_path / "third")  # model.base = a parts directory
    meta = json.loads((third / "lora.json").read_text())
    assert meta["runs"] == 3 and meta["r"] == 8
    merged = InfLlavaForConditionalGeneration.from_pretrained(third).eval()
    model, _ = infllava.load(third, device="cpu")  # parts.json present: assembled from the parts
    with torch.no_grad():
        assert torch.equal(merged(**enc).logits, model(**enc).logits)


@pytest.mark.slow
def test_a_run_from_a_lora_merged_base_exports_both_deltas(trained_mini, tmp_path):
    """Stage 2 continued from a LoRA stage 2 (model.base = its final/, a curriculum): the saved LM holds the
    first delta merged and the second trained over it; lora.safetensors stacks both (rank 4 + 2, scales
    folded), so the parts over the packaged LM reassemble the merged model."""
    final, root = trained_mini
    more = _continue(final, root, tmp_path / "more")
    assert not (more / "lm_delta.json").exists()
    meta = json.loads((more / "lora.json").read_text())
    assert meta["r"] == 6 and meta["alpha"] == 6 and meta["runs"] == 2
    first, second = load_file(str(final / "lora.safetensors")), load_file(str(more / "lora.safetensors"))
    key = next(k for k in first if k.endswith("lora_A"))
    assert first[key].shape[0] == 4 and second[key].shape[0] == 6
    torch.testing.assert_close(second[key][:4], first[key] * 2)  # alpha 8 / r 4 folded into A
    parts = export_parts(more, tmp_path / "parts")
    merged = InfLlavaForConditionalGeneration.from_pretrained(more).eval()
    model, processor = infllava.load(parts, device="cpu")
    enc = processor.apply_chat([{"role": "user", "content": "What shape is the small object?"}],
                               images=[str(root / "bench" / "images" / "train" / "000000.png")])
    with torch.no_grad():
        a, b = merged(**enc).logits, model(**enc).logits
        before = InfLlavaForConditionalGeneration.from_pretrained(final).eval()(**enc).logits
    assert torch.equal(a, b)  # merged run by run, in the order the chain merged them
    assert (a - before).abs().max() > 1e-2  # the second run did change the LM


@pytest.mark.slow
def test_a_fully_fine_tuned_lm_is_not_exported_as_parts(trained_mini, tmp_path):
    """Without LoRA the LM trains in full: no factors hold that, so the model is marked and export refuses;
    so is a LoRA run from such a base."""
    final, root = trained_mini
    full = _continue(final, root, tmp_path / "full", lora=False)
    assert "fine-tuned in full" in json.loads((full / "lm_delta.json").read_text())["reason"]
    with pytest.raises(PartsError, match="fine-tuned in full"):
        export_parts(full, tmp_path / "parts")
    after = _continue(full, root, tmp_path / "after")
    assert (after / "lm_delta.json").exists()
    with pytest.raises(PartsError, match="differs from the packaged one"):
        export_parts(after, tmp_path / "parts2")
