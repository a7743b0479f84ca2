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
