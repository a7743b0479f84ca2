"""Shared builders for tests: a tiny official-style reference and our model on the same weights."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM

from infllava import InfLlavaForConditionalGeneration, tiny_config
from infllava.checkpoints import map_key

from reference_official import OfficialReference


def paired_models(seed: int = 0, **config_overrides):
    """(reference, ours, config): the official computation and ours on identical random weights."""
    config = tiny_config(**config_overrides)
    torch.manual_seed(seed)
    lm = AutoModelForCausalLM.from_config(config.text_config)
    ref = OfficialReference(config, lm).eval()
    ours = InfLlavaForConditionalGeneration(config).eval()
    load_official_into(ours, ref.official_state_dict())
    return ref, ours, config


def load_official_into(model, official_sd: dict[str, torch.Tensor], strict: bool = True) -> None:
    """Map official keys with the converter's key map and load (dropping unused tower parts).

    strict=False allows a reference without a language model (vision-path comparisons)."""
    expected = model.state_dict()
    sd = {}
    for k, v in official_sd.items():
        target = map_key(k)
        if target is not None and target in expected:
            sd[target] = v
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not unexpected, unexpected
    if strict:
        assert not missing, missing
    else:
        assert all(k.startswith("language_model.") for k in missing), missing
