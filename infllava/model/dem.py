"""Dual-perspective Enhancement Module (DEM, paper Sec. 3.3), as the released weights compute it.

The sub-image features are put back at their 2D positions: the local crops tile a map L, the global
crops interleave into a map G (both (n_h*h) x (n_w*w)). Then the two perspectives enhance each other
with cross-attention on matching sub-grids, never over the whole map:
  a (global-perspective enhancement): for each contiguous h x w block k, queries G[block k] attend to
    keys/values L[block k] (= local crop k);
  c (local-perspective enhancement): for each strided sub-grid (i, j), queries L[i::n_h, j::n_w] attend
    to keys/values G[i::n_h, j::n_w] (= global crop (i, j)).
Attention (official `MultiHeadedAttention`): q/k/v/out Linear(d, d) with bias, softmax(q k^T / sqrt(d/H)),
then `LayerNorm(out(x) + q_input)`; one module serves both directions unless `dem_share_attention` is off.
Fusion: `LayerNorm(cat[ffn_local(c), ffn_global(a)] + a + c)`, each ffn Linear(d, d/r)-GELU-Linear(d/r, d/2).
Finally the (n_h*h) x (n_w*w) map returns to h x w:
  "bilinear" (official): `F.interpolate(bilinear, align_corners=False)` at an exact ratio n samples source
    position n*p + (n-1)/2: for odd n one position per cell (a strided subsample), for even n the mean of
    the two middle positions;
  "avgpool" (paper): the mean over each n_h x n_w cell;
  "maxpool" (ours): the per-channel maximum over each cell (keeps a one-position response undiluted);
  "unshuffle" (ours): the cell's positions concatenated, then a learned Linear(n_h*n_w*d, d) (`downsample`),
    initialised to the mean so that it starts as avgpool;
  "mlpavg" (ours): the mean over each cell of x + MLP(x), one MLP shared by all positions (`cell_mlp`,
    its last layer zero-initialised so that it starts as avgpool).
With `dem_local_residual` (ours) the map before the downsampling is L + g * rms(L) * fused, g a per-channel
gate initialised to zero (`local_gate`), rms(L) the local feature's root mean square over its channels at
that position (detached): the module starts as the local view's average and learns how much of the
two-perspective fusion to add, g = 1 adding it at the local features' own magnitude (the fusion is
LayerNorm-ed; a CNN's features are not: EfficientNet-Lite0 stage 6 has RMS ~5, and a gate the optimiser
moves by ~lr per step would otherwise stay negligible).
Everything after the attention is per position, so only the positions the downsampling reads are
computed: the cells' offsets (i, j) in `sample_offsets`, their a-queries, their c-sub-grids, and only
the global crops at those offsets are needed at all. For the official 3x3 grid: 1 of 9 global crops,
576 of 5184 attention queries per direction, output identical to float rounding.

Notation: B batch, K = n_h*n_w local crops, O sampled offsets, h x w crop feature grid, d width,
M queries per block.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

if TYPE_CHECKING:  # the config asks this module for its variants: no import at run time
    from ..config import InfLlavaConfig
from .crops import tile_local


class DEMAttention(nn.Module):
    """Cross-attention with a post-residual LayerNorm (official `MultiHeadedAttention`)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.o_proj = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, query: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """query (X, Mq, d), context (X, Mk, d) -> (X, Mq, d)."""
        X, Mq, d = query.shape
        H = self.num_heads
        q = self.q_proj(query).view(X, Mq, H, d // H).transpose(1, 2)  # (X, H, Mq, d/H)
        k = self.k_proj(context).view(X, -1, H, d // H).transpose(1, 2)  # (X, H, Mk, d/H)
        v = self.v_proj(context).view(X, -1, H, d // H).transpose(1, 2)
        x = F.scaled_dot_product_attention(q, k, v)  # scale 1/sqrt(d/H), as the official code
        x = x.transpose(1, 2).reshape(X, Mq, d)
        return self.norm(self.o_proj(x) + query)


class BottleneckFFN(nn.Module):
    """Linear(d, d/r) - GELU - Linear(d/r, d/2) (official ffn_crop / ffn_stride)."""

    def __init__(self, dim: int, ratio: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, dim // ratio)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(dim // ratio, dim // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


# ---------------------------------------------------------------------------------------------------
# Downsampling variants: one registry entry each (the model, the configs and the tests ask it)
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Downsample:
    """How the fused (B, O, h, w, d) map at the sampled cell offsets returns to (B, h, w, d).

    name: the `InfLlavaConfig.dem_downsample` value.
    reads_all: the output reads every position of each n_h x n_w cell; else only bilinear's sample points
        (so only those offsets' global crops and attention queries are computed).
    combine(weights_module, fused, sample_weights) -> (B, h, w, d).
    build(O, d) -> the module holding its weights (None: none), stored on the DEM as `attr` (its
        state-dict name). A submodule that needs its own initialisation carries it as `_infllava_init`
        (`with_init`): the DEM applies it when built, the model's weight init whenever it initialises.
    """

    name: str
    reads_all: bool
    combine: Callable[[nn.Module | None, torch.Tensor, list[float]], torch.Tensor]
    build: Callable[[int, int], nn.Module] | None = None
    attr: str = "downsample"
    description: str = ""


DOWNSAMPLERS: dict[str, Downsample] = {}


def register_downsample(variant: Downsample) -> Downsample:
    if variant.name in DOWNSAMPLERS:
        raise ValueError(f"dem_downsample {variant.name!r} is already registered")
    DOWNSAMPLERS[variant.name] = variant
    return variant


def get_downsample(name: str) -> Downsample:
    try:
        return DOWNSAMPLERS[name]
    except (KeyError, TypeError):
        raise ValueError(f"dem_downsample must be one of {', '.join(DOWNSAMPLERS)}, got {name!r}") from None


def _weighted_mean(_, fused: torch.Tensor, weights: list[float]) -> torch.Tensor:
    w = torch.tensor(weights, dtype=torch.float32, device=fused.device)
    return (fused.float() * w.view(1, -1, 1, 1, 1)).sum(1).to(fused.dtype)


def with_init(module: nn.Module, init: Callable[[nn.Module], None]) -> nn.Module:
    """Mark `module` with its own initialisation (applied now, and by the model's `_init_weights`)."""
    module._infllava_init = init
    init(module)
    return module


def _init_mean_of_cells(linear: nn.Module) -> None:
    """Linear(n*d, d) := the mean of its n d-wide input blocks ([I/n, ..., I/n], zero bias)."""
    d = linear.out_features
    n = linear.in_features // d
    with torch.no_grad():
        linear.weight.copy_(torch.eye(d, dtype=linear.weight.dtype).repeat(1, n) / n)
        linear.bias.zero_()


def _unshuffle(linear: nn.Module, fused: torch.Tensor, _) -> torch.Tensor:
    B, O, h, w, d = fused.shape  # (B, O, h, w, d) -> (B, h, w, O*d), offsets in row-major order
    return linear(fused.permute(0, 2, 3, 1, 4).reshape(B, h, w, O * d))


def _zero(linear: nn.Module) -> None:
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)


def _cell_mlp(O: int, d: int) -> nn.Module:
    return nn.Sequential(nn.Linear(d, d), nn.GELU(), with_init(nn.Linear(d, d), _zero))  # starts as avgpool


def _mlpavg(mlp: nn.Module, fused: torch.Tensor, _) -> torch.Tensor:
    return (fused + mlp(fused)).mean(1)


register_downsample(Downsample(
    "bilinear", reads_all=False, combine=_weighted_mean,
    description="official: F.interpolate(bilinear, align_corners=False), a strided subsample for odd grids"))
register_downsample(Downsample(
    "avgpool", reads_all=True, combine=_weighted_mean, description="the paper's average over each cell"))
register_downsample(Downsample(
    "maxpool", reads_all=True, combine=lambda _, fused, __: fused.amax(1),
    description="ours: the per-channel maximum over each cell"))
register_downsample(Downsample(
    "unshuffle", reads_all=True, combine=_unshuffle, build=lambda O, d: with_init(nn.Linear(O * d, d), _init_mean_of_cells),
    description="ours: the cell's positions concatenated, a learned Linear back to d (starts as avgpool)"))
register_downsample(Downsample(
    "mlpavg", reads_all=True, combine=_mlpavg, attr="cell_mlp", build=_cell_mlp,
    description="ours: the mean over each cell of x + MLP(x), one MLP for every position (starts as avgpool)"))


def axis_samples(n: int, mode: str) -> tuple[list[int], list[float]]:
    """Offsets inside a cell of n positions that the downsampling reads, and their weights."""
    if get_downsample(mode).reads_all:
        return list(range(n)), [1.0 / n] * n
    if n % 2:  # bilinear, align_corners=False, ratio n: source n*p + (n-1)/2 exactly
        return [(n - 1) // 2], [1.0]
    return [n // 2 - 1, n // 2], [0.5, 0.5]


class DualPerspectiveEnhancement(nn.Module):
    """forward(local (B, K, h, w, d), global_at_offsets (B, O, h, w, d)) -> (B, h, w, d)."""

    def __init__(self, config: InfLlavaConfig):
        super().__init__()
        d = config.vision_config.hidden_size
        self.grid = tuple(config.grid)
        self.attn = DEMAttention(d, config.dem_num_heads)
        self.local_attn = None if config.dem_share_attention else DEMAttention(d, config.dem_num_heads)
        self.ffn_local = BottleneckFFN(d, config.dem_ffn_ratio)
        self.ffn_global = BottleneckFFN(d, config.dem_ffn_ratio)
        self.fuse_norm = nn.LayerNorm(d)
        self.local_gate = nn.Parameter(torch.zeros(d)) if config.dem_local_residual else None
        self.variant = get_downsample(config.dem_downsample)
        rows, row_w = axis_samples(self.grid[0], config.dem_downsample)
        cols, col_w = axis_samples(self.grid[1], config.dem_downsample)
        # (i, j) offsets of the sampled positions inside each n_h x n_w cell, row-major, and weights
        self.sample_offsets = [(i, j) for i in rows for j in cols]
        self.sample_weights = [wi * wj for wi in row_w for wj in col_w]
        if self.variant.build is not None:
            setattr(self, self.variant.attr, self.variant.build(len(self.sample_offsets), d))

    @property
    def downsample_module(self) -> nn.Module | None:
        return getattr(self, self.variant.attr, None) if self.variant.build is not None else None

    def forward(self, local_feats: torch.Tensor, global_feats: torch.Tensor) -> torch.Tensor:
        B, K, h, w, d = local_feats.shape
        O = len(self.sample_offsets)
        if global_feats.shape != (B, O, h, w, d):
            raise ValueError(
                f"DEM expects global features at {O} offsets, shape {(B, O, h, w, d)}, "
                f"got {tuple(global_feats.shape)}"
            )
        gh, gw = self.grid
        local_attn = self.local_attn if self.local_attn is not None else self.attn

        # a: queries G at the sampled positions, grouped by the local crop (block) they fall in.
        idx, inv = _block_groups(self.grid, h, w, tuple(self.sample_offsets))
        idx, inv = idx.to(local_feats.device), inv.to(local_feats.device)
        K_, M = idx.shape
        queries = global_feats.reshape(B, O * h * w, d)[:, idx.flatten()]  # (B, K*M, d)
        a = self.attn(queries.view(B * K, M, d), local_feats.reshape(B * K, h * w, d))  # (B*K, M, d)
        a = a.view(B, K * M, d)[:, inv].view(B, O, h, w, d)

        # c: queries L on strided sub-grid (i, j) attend to global crop (i, j).
        L = tile_local(local_feats, self.grid)  # (B, gh*h, gw*w, d)
        local_at = torch.stack([L[:, i::gh, j::gw] for i, j in self.sample_offsets], 1)  # (B, O, h, w, d)
        c = local_attn(local_at.reshape(B * O, h * w, d), global_feats.reshape(B * O, h * w, d))
        c = c.view(B, O, h, w, d)

        fused = self.fuse_norm(torch.cat([self.ffn_local(c), self.ffn_global(a)], -1) + a + c)
        if self.local_gate is not None:  # the local map itself, plus as much of the fusion as is learned,
            # at the local features' own scale (the fusion is LayerNorm-ed, a CNN's features are not)
            scale = local_at.detach().float().pow(2).mean(-1, keepdim=True).sqrt().to(fused.dtype)
            fused = local_at + self.local_gate * scale * fused
        if O == 1 and self.variant.build is None:
            return fused[:, 0]
        return self.variant.combine(self.downsample_module, fused, self.sample_weights)


@lru_cache(maxsize=64)
def _block_groups(grid: tuple[int, int], h: int, w: int, offsets: tuple[tuple[int, int], ...]):
    """Group the a-branch queries by block.

    Query t = o*h*w + p*w + q sits at map position (n_h*p + i, n_w*q + j) for offset o = (i, j); its
    block is the local crop covering that position. Returns idx (K, M): the queries of each block,
    padded by repeating one (padded results are never read), and inv (O*h*w): where query t's result
    lies in the flattened (K*M) output. Built outside inference mode: the cache outlives the call, and an
    inference tensor cannot serve a later forward that autograd tracks.
    """
    with torch.inference_mode(False):
        return _block_groups_uncached(grid, h, w, offsets)


def _block_groups_uncached(grid, h, w, offsets):
    gh, gw = grid
    groups: list[list[int]] = [[] for _ in range(gh * gw)]
    for o, (i, j) in enumerate(offsets):
        for p in range(h):
            for q in range(w):
                block = ((gh * p + i) // h) * gw + (gw * q + j) // w
                groups[block].append(o * h * w + p * w + q)
    M = max(len(g) for g in groups)
    idx = torch.zeros(len(groups), M, dtype=torch.long)
    inv = torch.empty(len(offsets) * h * w, dtype=torch.long)
    for k, g in enumerate(groups):
        if g:
            idx[k, : len(g)] = torch.tensor(g)
            idx[k, len(g):] = g[0]
            inv[torch.tensor(g)] = k * M + torch.arange(len(g))
    return idx, inv
