"""The final model directory of a training run (`OUTPUT/final`), written by every stage (the loop in
`trainer` and the align stage): the model or its parts, the processor, the adapter weights and the
LoRA factors."""

from __future__ import annotations

import json
from pathlib import Path

from ..loading import Provenance
from ..templates import default_template_for, get_template
from ..parts import LM_DELTA_FILE, combine_lora, lora_factors, write_manifest
from .build import ADAPTER_FILE, adapter_state_dict, merge_lora

__all__ = ["save_final"]


def save_final(model, processor, final: Path, provenance: Provenance, gathered: dict | None = None,
               save_full_model: bool = True, rebuild=None) -> None:
    """Write the trained `model` and its `processor` to `final`. provenance: what the run started from
    (`build_model`, updated by `apply_stage`). gathered: the full state dict, from the shards of a sharded
    run. save_full_model False: over packaged backbones whose LM changed by LoRA factors at most, only the
    parts (config, adapter, LoRA factors, manifest). rebuild: () -> the run's starting model in full precision,
    for a QLoRA run (its LM is quantized): the full model written is that one with the trained adapter and
    this run's LoRA factors merged into its full-precision LM, as QLoRA models are merged."""
    from safetensors.torch import save_file

    if gathered is not None:  # sharded training: the full weights were gathered from the shards
        result = model.load_state_dict(gathered, strict=False)
        missing = [k for k in result.missing_keys if k in dict(model.named_parameters())]
        if missing or result.unexpected_keys:
            raise ValueError(f"the gathered weights do not match the model: missing {missing[:5]}, "
                             f"unexpected {result.unexpected_keys[:5]}")
    final.mkdir(parents=True, exist_ok=True)
    factors, lora_meta = lora_factors(model.language_model)
    if provenance.lm_lora is not None:  # the base's LM holds its factors merged: keep both
        factors, lora_meta = combine_lora(provenance.lm_lora, (factors, lora_meta))
    if factors:  # the small LM delta, for shipping over packaged backbones (infllava.parts)
        save_file(factors, str(final / "lora.safetensors"))
        (final / "lora.json").write_text(json.dumps(lora_meta))
    if get_template(processor.template).training_only:  # chat in the template the model had before, or the default
        chat = provenance.template if provenance.template and not get_template(provenance.template).training_only \
            else default_template_for(processor.tokenizer)
        processor.template = model.config.template = chat
    # Over packaged backbones whose LM changed by LoRA factors at most, the parts (config, adapter, LoRA
    # factors) are the whole model: a few MB instead of the frozen backbones' hundreds.
    packaged = None if provenance.lm_delta else provenance.packaged
    if (packaged is None or save_full_model) and getattr(model, "infllava_quantization", None):
        if rebuild is None:
            raise ValueError("a model with a quantized LM is saved from its full-precision start (rebuild)")
        model = _merged_full_precision(model, rebuild(), processor)
    if packaged is None or save_full_model:
        merge_lora(model)
        if provenance.lm_delta:
            (final / LM_DELTA_FILE).write_text(json.dumps(provenance.lm_delta))
        model.requires_grad_(False)
        model.save_pretrained(final)
    else:
        model.config.save_pretrained(final)
    processor.save_pretrained(final)
    save_file(adapter_state_dict(model), str(final / ADAPTER_FILE))
    if packaged is not None:
        write_manifest(final, packaged["vision_tower"], packaged["language_model"], lora_meta if factors else None)


def _merged_full_precision(trained, start, processor):
    """`start` (the run's starting model, full precision) with `trained`'s adapter and this run's LoRA
    factors merged into its LM: what a QLoRA run saves."""
    from ..parts import _merge_lora

    own, meta = lora_factors(trained.language_model)
    start.model.load_state_dict(adapter_state_dict(trained), strict=False)
    if own:
        _merge_lora(start.model.language_model, own, meta)
    start.config.template = processor.template
    return start
