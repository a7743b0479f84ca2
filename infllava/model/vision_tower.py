"""Vision tower: a transformers vision model (CLIP, SigLIP, ...) or a CNN, returning patch features.

- `vision_config.model_type` "efficientnet_lite_tower" builds the EfficientNet-Lite CNN of
  `infllava.backbones`, cut after `vision_config.stage` (it has no CLS token and ignores
  `feature_layer`). Every other model type is a transformers ViT, for which the following holds.
- The selected hidden layer (`vision_feature_layer`, LLaVA's `mm_vision_select_layer`, default -2)
  is the tower's output: the layers after it are not built, hence never computed, and the final
  norm / pooling head are removed (LLaVA uses the raw hidden state).
- The CLS token is dropped for towers that have one (`mm_vision_select_feature: patch`).
- All crops of a batch go through the tower in one call, chunked to at most `chunk_size` crops.

Notation: N crops, S crop side, T = h * w patch tokens, d tower width.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from transformers import AutoModel, PreTrainedConfig

from ..backbones import EFFICIENTNET_LITE_MODEL_TYPE, EfficientNetLiteTower


class VisionTower(nn.Module):
    """Wraps a transformers vision model or the EfficientNet-Lite CNN. forward: (N, 3, S, S) -> (N, T, d)."""

    def __init__(self, vision_config: PreTrainedConfig, feature_layer: int = -2, drop_cls: bool = True,
                 chunk_size: int = 32):
        super().__init__()
        self.drop_cls = drop_cls
        self.chunk_size = chunk_size
        cfg = vision_config.__class__.from_dict(vision_config.to_dict())
        if cfg.model_type == EFFICIENTNET_LITE_MODEL_TYPE:  # CNN: weights from `self.model.load_pretrained()`
            if drop_cls:
                raise ValueError("drop_cls must be False for the EfficientNet tower (a CNN has no CLS token)")
            self.model = EfficientNetLiteTower(cfg)
            self.hidden_size = self.model.hidden_size
            return
        if hasattr(cfg, "vision_use_head"):
            cfg.vision_use_head = False  # SigLIP's attention-pooling head: unused
        total = int(cfg.num_hidden_layers)
        self.num_layers_used = feature_layer if feature_layer >= 0 else total + 1 + feature_layer
        self.model = AutoModel.from_config(cfg)
        transformer = _find_transformer(self.model)
        transformer.encoder.layers = transformer.encoder.layers[: self.num_layers_used]
        if hasattr(transformer, "post_layernorm"):
            transformer.post_layernorm = nn.Identity()
        self.hidden_size = int(cfg.hidden_size)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

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
        outs = []
        with torch.set_grad_enabled(grad):
            for chunk in pixel_values.split(self.chunk_size):
                if isinstance(self.model, EfficientNetLiteTower):
                    hidden = self.model(chunk)  # (n, T, d)
                else:
                    hidden = self.model(pixel_values=chunk).last_hidden_state  # (n, [1 +] T, d)
                outs.append(hidden[:, 1:] if self.drop_cls else hidden)
        return torch.cat(outs) if len(outs) > 1 else outs[0]


def _find_transformer(model: nn.Module) -> nn.Module:
    """The module holding `encoder.layers` (CLIPVisionModel itself, SiglipVisionModel.vision_model, ...)."""
    for module in model.modules():
        encoder = getattr(module, "encoder", None)
        if encoder is not None and isinstance(getattr(encoder, "layers", None), nn.ModuleList):
            return module
    raise ValueError(
        f"unsupported vision tower {type(model).__name__}: no `encoder.layers` found "
        "(supported: ViT-style transformers vision models such as CLIP and SigLIP)"
    )
