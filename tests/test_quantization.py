"""4/8-bit loading (bitsandbytes, on CPU): only the LM's linear layers are quantized, the model still
computes what the full-precision one does (within quantization error), and the commands take it."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn as nn

import infllava
from infllava.quantization import check_quantization, module_bytes
from infllava.tiny import build_tiny_model

import bitsandbytes as bnb  # noqa: E402,F401  (the `quant` extra, which make installs)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("quant") / "tiny")


def _inputs(processor):
    from PIL import Image

    img = Image.new("RGB", (96, 80), (200, 30, 30))
    return processor(images=img, text="<image>\nWhat colour is it?")


@pytest.mark.parametrize("quantization, layer, rel_tol", [("nf4", "Linear4bit", 0.25), ("int8", "Linear8bitLt", 0.05)])
def test_only_the_language_model_linears_are_quantized(tiny, quantization, layer, rel_tol):
    ref, processor = infllava.load(tiny, device="cpu")
    model, _ = infllava.load(tiny, device="cpu", quantization=quantization)
    lm = model.model.language_model
    kinds = {type(m).__name__ for m in lm.modules()}
    assert layer in kinds and "Linear" not in kinds  # every linear of the LM, none left
    for part in (model.model.vision_tower, model.model.dem, model.model.projector):
        assert not any(type(m).__module__.startswith("bitsandbytes") for m in part.modules())
        assert all(p.dtype == torch.float32 for p in part.parameters())
    assert type(model.lm_head) is nn.Linear and model.lm_head.weight.dtype == torch.float32
    assert module_bytes(lm) < module_bytes(ref.model.language_model)
    enc = _inputs(processor)
    with torch.no_grad():
        want = ref(**enc).logits
        got = model(**enc).logits
    rel = ((got - want).abs().mean() / want.abs().mean()).item()
    assert rel < rel_tol, rel
    assert rel > 0  # it is really quantized
    out = model.generate(**enc, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > enc["input_ids"].shape[1]


def test_a_quantized_model_is_not_saved(tiny, tmp_path):
    model, _ = infllava.load(tiny, device="cpu", quantization="nf4")
    with pytest.raises(ValueError, match="nf4-quantized and cannot be saved"):
        model.save_pretrained(tmp_path / "out")


def test_bad_quantization_values_are_named(monkeypatch):
    with pytest.raises(ValueError, match="unknown quantization 'int4'"):
        check_quantization("int4")
    assert check_quantization("none") is None
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as if not installed
    with pytest.raises(ImportError, match=r"pip install 'infllava\[quant\]'"):
        check_quantization("nf4")


def test_eval_and_chat_take_quantization(tiny, tmp_path):
    from infllava.evaluation.hrvqa.writing import write_benchmark

    write_benchmark(tmp_path, train=0, val=0, test=2, log=lambda *_: None)
    cli = [sys.executable, "-m", "infllava_cli"]
    r = subprocess.run(cli + ["eval", str(tiny), "--data", str(tmp_path / "test.jsonl"), "--images", str(tmp_path),
                              "--quantization", "int8", "--device", "cpu"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "language model int8" in r.stdout and "s per question" in r.stdout
    r = subprocess.run(cli + ["chat", str(tiny), "--quantization", "nf4", "--device", "cpu", "hello"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run(cli + ["chat", str(tiny), "--quantization", "int4", "hello"], capture_output=True, text=True)
    assert r.returncode == 2 and "int4" in r.stderr


@pytest.mark.slow
@pytest.mark.parametrize("quantization", ["nf4", "int8"])
def test_quantized_mini_answers_the_example(quantization):
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "examples"
    spec = json.loads((root / "hrvqa-example.json").read_text())
    model, processor = infllava.load("inf-llava-mini", device="cpu", quantization=quantization)
    right = sum(infllava.answer(model, processor, root / spec["image"], q["question"], max_new_tokens=8).lower()
                == q["answer"] for q in spec["questions"])
    assert right >= len(spec["questions"]) - 1, right


# ---------------------------------------------------------------- QLoRA
def test_qlora_trains_factors_over_a_4bit_lm_and_saves_it_merged_in_full_precision(tmp_path):
    from pathlib import Path

    from safetensors.torch import load_file

    from helpers import make_toy_dataset
    from infllava.parts import _merge_lora
    from infllava.training.build import apply_stage, build_model
    from infllava.training.config import ConfigError, load_config
    from infllava.training.trainer import _starting_model, train

    tiny_cfg = Path(__file__).resolve().parents[1] / "configs" / "tiny_cpu.yaml"
    with pytest.raises(ConfigError, match="train.lora.quantization needs train.lora.enabled"):
        load_config(tiny_cfg, ["data.path=x", "train.stage=finetune", "train.lora.quantization=nf4"])
    with pytest.raises(ConfigError, match="unknown 'fp4'"):
        load_config(tiny_cfg, ["data.path=x", "train.stage=finetune", "train.lora.enabled=true",
                               "train.lora.quantization=fp4"])
    data = make_toy_dataset(tmp_path / "data", n=8, kind="qa")
    cfg = load_config(tiny_cfg, [f"data.path={data}", f"data.images={data.parent}", f"train.output_dir={tmp_path / 'run'}",
                                 "train.stage=finetune", "train.lora.enabled=true", "train.lora.quantization=nf4",
                                 "train.lr=1e-2", "train.max_steps=2", "train.freeze_mm=true"])
    model, _, _ = build_model(cfg)
    apply_stage(model, cfg)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert any(type(m).__name__ == "Linear4bit" for m in model.model.language_model.modules())

    final = train(cfg)
    factors = load_file(str(final / "lora.safetensors"))
    assert any(k.endswith("lora_B") and v.abs().max() > 0 for k, v in factors.items())  # the LM did train
    saved, _ = infllava.load(final, device="cpu")  # full precision, no bitsandbytes layer
    assert not any(type(m).__module__.startswith("bitsandbytes") for m in saved.modules())
    # = the full-precision start with the factors merged (not a de-quantized 4-bit LM)
    start = _starting_model(cfg)
    import json

    _merge_lora(start.model.language_model, factors, json.loads((final / "lora.json").read_text()))
    for (name, a), (_, b) in zip(sorted(start.model.language_model.state_dict().items()),
                                 sorted(saved.model.language_model.state_dict().items())):
        assert torch.allclose(a, b, atol=1e-6), name
