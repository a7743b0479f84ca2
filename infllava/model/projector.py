"""Vision-language projector (LLaVA's `mm_projector`): linear or mlp{N}x_gelu."""

from __future__ import annotations

import torch
import torch.nn as nn

from ..config import _parse_mlp_depth


class Projector(nn.Module):
    """(.., d_vision) -> (.., d_text). `layers` mirrors the official nn.Sequential indices (0, 2, ...)."""

    def __init__(self, projector_type: str, vision_dim: int, text_dim: int):
        super().__init__()
        depth = 1 if projector_type == "linear" else _parse_mlp_depth(projector_type)
        if depth < 1:
            raise ValueError(f"unknown projector_type {projector_type!r}")
        layers: list[nn.Module] = [nn.Linear(vision_dim, text_dim)]
        for _ in range(depth - 1):
            layers += [nn.GELU(), nn.Linear(text_dim, text_dim)]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
