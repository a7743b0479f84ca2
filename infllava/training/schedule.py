"""The learning-rate schedule of every training stage (the loop in `trainer` and the align stage)."""

from __future__ import annotations

import math

__all__ = ["lr_lambda"]


def lr_lambda(step: int, warmup: int, total: int, kind: str) -> float:
    """The LR factor at `step` (for `torch.optim.lr_scheduler.LambdaLR`): linear warmup over `warmup`
    steps, then constant (`kind` "constant") or cosine decay to 0 at `total` (any other `kind`)."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
