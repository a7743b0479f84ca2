"""Vision-language projector (LLaVA's `mm_projector`): linear or mlp{N}x_gelu."""

from __future__ import annotations

import torch
import torch.nn as nn

from ..config import _parse_mlp_depth


class Projector(nn.Module):
    """(.., d_vision) -> (.., d_text). `layers` mirrors the official nn.Sequential indices (0, 2, ...)."""

    def __init__(self, projector_type: str, vision_dim: int, text_dim: int, input_norm: bool = False):
        super().__init__()
        self.input_norm = bool(input_norm)
        if self.input_norm:  # fixed per-channel statistics (see `fit_input_norm`); identity until fitted
            self.register_buffer("input_mean", torch.zeros(vision_dim))
            self.register_buffer("input_std", torch.ones(vision_dim))
            self.register_buffer("input_fitted", torch.zeros((), dtype=torch.bool))
        depth = 1 if projector_type == "linear" else _parse_mlp_depth(projector_type)
        if depth < 1:
            raise ValueError(f"unknown projector_type {projector_type!r}")
        layers: list[nn.Module] = [nn.Linear(vision_dim, text_dim)]
        for _ in range(depth - 1):
            layers += [nn.GELU(), nn.Linear(text_dim, text_dim)]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_norm:
            x = (x - self.input_mean.to(x.dtype)) / self.input_std.to(x.dtype)
        return self.layers(x)

    @property
    def needs_fit(self) -> bool:
        return self.input_norm and not bool(self.input_fitted)

    @torch.no_grad()
    def fit_input_norm(self, features: torch.Tensor, eps: float = 1e-4) -> None:
        """Set the input statistics from visual features (.., d_vision) of training images: the mean
        and standard deviation of each channel over all tokens (std floored at `eps` x its median,
        so a dead channel is not blown up)."""
        if not self.input_norm:
            raise ValueError("this projector has no input normalisation (config.projector_input_norm is False)")
        x = features.detach().reshape(-1, features.shape[-1]).double()
        if x.shape[0] < 2:
            raise ValueError(f"fitting the projector's input statistics needs >= 2 feature vectors, got {x.shape[0]}")
        if not torch.isfinite(x).all():
            raise ValueError("visual features used to fit the projector's input statistics are not finite")
        mean, std = x.mean(0), x.std(0)
        std = std.clamp_min(max(float(std.median()) * eps, 1e-12))
        self.input_mean.copy_(mean.to(self.input_mean.dtype))
        self.input_std.copy_(std.to(self.input_std.dtype))
        self.input_fitted.fill_(True)
