"""Vision tower: any registered tower (`infllava.model.towers`: transformers ViTs such as CLIP and
SigLIP, the EfficientNet-Lite CNN), returning patch features.

- The tower is chosen by `vision_config.model_type` in the tower registry; this module never looks at
  which kind it got. For a ViT the selected hidden layer (`feature_layer`, LLaVA's
  `mm_vision_select_layer`, default -2) is the output and later layers are not built (see towers/vit.py).
- The CLS token is dropped for towers that have one (`mm_vision_select_feature: patch`).
- All crops of a batch go through the tower in one call, chunked to at most `chunk_size` crops.

Notation: N crops, S crop side, T = h * w patch tokens, d tower width.
"""

from __future__ import annotations

import os

import torch
import torch.nn as nn
from transformers import PreTrainedConfig

from .towers import Tower, build_tower


class VisionTower(nn.Module):
    """Wraps the registered tower of `vision_config`. forward: (N, 3, S, S) -> (N, T, d).

    The tower's weights are `self.model` (its own module: state-dict keys `model.*` as the tower names
    them); `self.tower` is its `Tower` interface."""

    def __init__(self, vision_config: PreTrainedConfig, feature_layer: int = -2, drop_cls: bool = True,
                 chunk_size: int = 32):
        super().__init__()
        self.drop_cls = drop_cls
        self.chunk_size = chunk_size
        cfg = vision_config.__class__.from_dict(vision_config.to_dict())
        tower = build_tower(cfg, feature_layer)
        if drop_cls and not tower.has_cls:
            raise ValueError(f"drop_cls must be False for the {cfg.model_type!r} tower ({type(tower).__name__}): "
                             "it has no CLS token")
        self.model = tower.module
        # the interface, kept out of the module tree: a tower that is its own module is registered once, as `model`
        self.__dict__["tower"] = tower
        self.hidden_size = tower.hidden_size

    tower: Tower

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def load_pretrained(self, path: str | os.PathLike | None = None) -> "VisionTower":
        """Fill the tower from the pip package that ships its weights (or `path`); see `Tower.load_pretrained`."""
        self.tower.load_pretrained(path)
        return self

    # Optional `FeatureCache` (model/feature_cache.py), set by the trainer (`train.feature_cache`):
    # used only while the tower is frozen. A plain attribute: not part of the state dict.
    feature_cache = None

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        pixel_values = pixel_values.to(self.dtype)
        # a frozen tower (every stage of the official recipe) keeps no activations for backward
        grad = torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())
        if self.feature_cache is not None and not grad:
            return self.feature_cache.get_or_compute(pixel_values, lambda x: self._run(x, False))
        return self._run(pixel_values, grad)

    def _run(self, pixel_values: torch.Tensor, grad: bool) -> torch.Tensor:
        run = self.tower.forward_features if self.drop_cls else self.tower.forward_tokens  # (n, T, d) / (n, [1 +] T, d)
        outs = []
        with torch.set_grad_enabled(grad):
            for chunk in pixel_values.split(self.chunk_size):
                outs.append(run(chunk))
        return torch.cat(outs) if len(outs) > 1 else outs[0]
