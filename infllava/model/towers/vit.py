"""Transformers ViTs (CLIP, SigLIP, any vision model with `encoder.layers`) as towers.

- The selected hidden layer (`feature_layer`, LLaVA's `mm_vision_select_layer`, default -2) is the
  tower's output: the layers after it are not built, hence never computed, and the final norm /
  pooling head are removed (LLaVA uses the raw hidden state).
- `module` is the transformers model itself (`AutoModel.from_config`), so its state-dict keys and
  weight init are transformers' own and `AutoModel.from_pretrained(...).state_dict()` loads into it.
- CLIP outputs a CLS token first; SigLIP has none. A model_type nobody registered is taken as a ViT
  without CLS (its output length is checked against the patch grid on every call).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from transformers import AutoModel, PreTrainedConfig

from . import Tower, register_tower

# model types whose first output token is CLS (LLaVA's `mm_vision_select_feature: patch` drops it)
_WITH_CLS = {"clip_vision_model"}


@register_tower("clip_vision_model", "siglip_vision_model", fallback=True)
class ViTTower(Tower):
    """A transformers vision model cut after `feature_layer`. forward_tokens: (N, 3, S, S) -> (N, [1 +] T, d)."""

    def __init__(self, config: PreTrainedConfig, feature_layer: int = -2):
        cfg = config.__class__.from_dict(config.to_dict())
        if hasattr(cfg, "vision_use_head"):
            cfg.vision_use_head = False  # SigLIP's attention-pooling head: unused
        total = int(cfg.num_hidden_layers)
        self.config = cfg
        self.num_layers_used = feature_layer if feature_layer >= 0 else total + 1 + feature_layer
        self._model = AutoModel.from_config(cfg)
        transformer = _find_transformer(self._model)
        transformer.encoder.layers = transformer.encoder.layers[: self.num_layers_used]
        if hasattr(transformer, "post_layernorm"):
            transformer.post_layernorm = nn.Identity()
        self.hidden_size = int(cfg.hidden_size)
        self.patch_size = int(cfg.patch_size)

    @property
    def module(self) -> nn.Module:
        return self._model

    @classmethod
    def config_has_cls(cls, config: PreTrainedConfig) -> bool:
        return config.model_type in _WITH_CLS

    def load_pretrained(self, path=None):
        """Weights from a local transformers directory of this vision model (or of a model holding it, e.g.
        a CLIP checkpoint with its text tower): the layers this tower keeps, checked by name and shape."""
        if path is None:
            return super().load_pretrained(path)
        source = AutoModel.from_pretrained(str(path), dtype=torch.float32)
        src = {k.removeprefix("vision_model."): v for k, v in source.state_dict().items()}
        wanted = self._model.state_dict()
        absent = sorted(set(wanted) - set(src))
        if absent:
            raise ValueError(f"{path}: the tower's weights lack {absent[:5]} ({len(absent)} missing)")
        for k, v in wanted.items():
            if src[k].shape != v.shape:
                raise ValueError(f"{path}: {k} has shape {tuple(src[k].shape)}, the tower expects {tuple(v.shape)}")
        self._model.load_state_dict({k: src[k] for k in wanted})
        return self

    def forward_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden = self._model(pixel_values=pixel_values).last_hidden_state  # (N, [1 +] T, d)
        patches = (pixel_values.shape[-2] // self.patch_size) * (pixel_values.shape[-1] // self.patch_size)
        if hidden.shape[1] != patches + self.has_cls:
            raise ValueError(
                f"the {self.config.model_type!r} tower returned {hidden.shape[1]} tokens for {patches} patches "
                f"(expected {patches + self.has_cls}): if its output starts with a CLS token, add the model_type "
                "to infllava.model.towers.vit._WITH_CLS"
            )
        return hidden


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
