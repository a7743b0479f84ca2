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
        assert all(k.startswith(("model.language_model.", "lm_head.")) for k in missing), missing


COLORS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220), "yellow": (230, 210, 30)}


def make_toy_dataset(root, n: int = 16, kind: str = "caption", seed: int = 0, extra: list | None = None):
    """n LLaVA records with small coloured-square images under root/images; returns the .jsonl path.

    kind "caption": stage-1 style (`<image>\\n` + caption); "qa": two-turn stage-2 style; some
    text-only samples are mixed into "qa". `extra` records are appended verbatim.
    """
    import json
    import random
    from pathlib import Path

    from PIL import Image

    rng = random.Random(seed)
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    records = []
    names = list(COLORS)
    for i in range(n):
        colour = names[i % len(names)]
        img = Image.new("RGB", (30 + rng.randrange(20), 30), (250, 250, 250))
        img.paste(COLORS[colour], (5, 5, 25, 25))
        rel = f"images/{i:03d}.png"
        img.save(root / rel)
        if kind == "caption":
            conv = [{"from": "human", "value": "<image>\nDescribe the image."},
                    {"from": "gpt", "value": f"a {colour} square"}]
            records.append({"id": f"s{i}", "image": rel, "conversations": conv})
        elif i % 4 == 3:
            conv = [{"from": "human", "value": "Say hi."}, {"from": "gpt", "value": "hi"}]
            records.append({"id": f"t{i}", "conversations": conv})
        else:
            conv = [{"from": "human", "value": "<image>\nWhat colour is the square?"},
                    {"from": "gpt", "value": colour},
                    {"from": "human", "value": "Is it a circle?"}, {"from": "gpt", "value": "no"}]
            records.append({"id": f"q{i}", "image": rel, "conversations": conv})
    records += extra or []
    path = root / "data.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return path
