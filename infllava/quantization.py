"""4/8-bit loading of the language model through bitsandbytes: `infllava.load(..., quantization="nf4")`.

Only the LM's linear layers (attention and MLP projections of `model.model.language_model`) are quantized:
`"nf4"` -> `bitsandbytes.nn.Linear4bit` (4-bit NormalFloat, blocks of 64, computing in the model's dtype),
`"int8"` -> `bitsandbytes.nn.Linear8bitLt` (LLM.int8(): int8 weights, outlier features above 6.0 in float).
The vision tower, the DEM, the projector, the token embeddings and `lm_head` keep their dtype: they are a
small part of the weights of a large LM, and the vision path is where INF-LLaVA's accuracy is made.

Quantizing happens after the weights are loaded, whatever the source (shipped parts, a full directory, a
converted release), on the CPU, before the model moves to its device. bitsandbytes 0.50 runs both on CPU
(its fast 4-bit CPU kernel comes from the hub, so offline it uses a slower path) and on CUDA. A quantized
model generates, evaluates and serves; it is not written back (`infllava export` writes full precision:
export the unquantized model and quantize at load time). For training, `train.lora.quantization: nf4`
trains LoRA factors over the 4-bit LM (QLoRA).
"""

from __future__ import annotations

import logging

import torch
import torch.nn as nn

QUANTIZATIONS = ("nf4", "int8")


class _DropCastNotice(logging.Filter):
    """LLM.int8() casts a float32 layer input to float16 by design; bitsandbytes logs that on every call."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("MatMul8bitLt: inputs will be cast")


def check_quantization(quantization: str | None) -> str | None:
    """`quantization` as given (None, "nf4" or "int8"; "none" means None); ValueError naming anything else,
    ImportError with the install command when bitsandbytes is missing."""
    if quantization in (None, "none", ""):
        return None
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"unknown quantization {quantization!r} (use {', '.join(QUANTIZATIONS)}, or none)")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ImportError(f"quantization {quantization!r} needs bitsandbytes: pip install 'infllava[quant]'") from None
    return quantization


def quantize_language_model(model: nn.Module, quantization: str, compute_dtype: torch.dtype | None = None) -> int:
    """Replace the linear layers of `model.model.language_model` by bitsandbytes layers, in place (weights on
    the CPU). Returns how many layers were replaced."""
    import bitsandbytes as bnb

    quantization = check_quantization(quantization)
    cast_log = logging.getLogger("bitsandbytes.autograd._functions")
    if not any(isinstance(f, _DropCastNotice) for f in cast_log.filters):
        cast_log.addFilter(_DropCastNotice())
    lm = model.model.language_model
    compute_dtype = compute_dtype or next(lm.parameters()).dtype
    replaced = 0
    for name, module in list(lm.named_modules()):
        for child_name, child in list(module.named_children()):
            if type(child) is not nn.Linear:
                continue
            weight = child.weight.data.to(torch.float32 if compute_dtype == torch.float32 else torch.float16)
            bias = child.bias is not None
            if quantization == "nf4":
                new = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=bias, compute_dtype=compute_dtype,
                                        quant_type="nf4", device="meta")
                new.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type="nf4")
            else:
                new = bnb.nn.Linear8bitLt(child.in_features, child.out_features, bias=bias, has_fp16_weights=False,
                                          threshold=6.0, device="meta")
                new.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
            if bias:
                new.bias = nn.Parameter(child.bias.data.to(compute_dtype), requires_grad=False)
            setattr(module, child_name, new.to("cpu"))  # moving to a device is what quantizes
            replaced += 1
    if not replaced:
        raise ValueError("the language model has no nn.Linear layers to quantize")
    model.infllava_quantization = quantization  # save_pretrained refuses a quantized model
    return replaced


def module_bytes(module: nn.Module) -> int:
    """Bytes of a module's weights as stored (a quantized layer: its packed weights and quantization state)."""
    return sum(t.numel() * t.element_size() for t in module.state_dict().values() if isinstance(t, torch.Tensor))
