"""Dual-perspective Cropping Module (DCM, paper Sec. 3.2) and its inverses, as pure tensor functions.

A high-resolution image of (n_h * S) x (n_w * S) pixels is cut two ways into n_h * n_w sub-images of
S x S, the tower's input size:
  - local perspective: contiguous tiles, row-major (details, continuous content);
  - global perspective: strided sampling `x[..., i::n_h, j::n_w]` (index i * n_w + j): every sub-image
    sees the whole scene at a coarser sampling.
The two differ only in axis order:  local  (gh h) (gw w) -> gh gw h w,
                                    global (h gh) (w gw) -> gh gw h w.
The same rearrangements, inverted, put sub-image *feature maps* back at their 2D positions (DEM).

Notation used for tensor shapes:
  B batch, C channels (3 for pixels), K = n_h * n_w crops, S crop side in pixels,
  h, w feature grid of one crop, d feature width, gh = n_h, gw = n_w.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def local_crops(x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Contiguous tiles. x: (B, C, gh*S, gw*S) -> (B, K, C, S, S), crop k = row k // gw, col k % gw."""
    gh, gw = grid
    B, C, H, W = x.shape
    _check_divisible(H, W, grid)
    x = x.view(B, C, gh, H // gh, gw, W // gw)  # (B, C, gh, S, gw, S)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(B, gh * gw, C, H // gh, W // gw)


def global_crops(x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Strided sub-images. x: (B, C, S*gh, S*gw) -> (B, K, C, S, S); crop i*gw+j == x[..., i::gh, j::gw]."""
    gh, gw = grid
    B, C, H, W = x.shape
    _check_divisible(H, W, grid)
    x = x.view(B, C, H // gh, gh, W // gw, gw)  # (B, C, S, gh, S, gw)
    return x.permute(0, 3, 5, 1, 2, 4).reshape(B, gh * gw, C, H // gh, W // gw)


def global_crop(x: torch.Tensor, grid: tuple[int, int], i: int, j: int) -> torch.Tensor:
    """One strided sub-image, (B, C, S, S): x[..., i::gh, j::gw]."""
    _check_divisible(x.shape[-2], x.shape[-1], grid)
    return x[..., i :: grid[0], j :: grid[1]]


def tile_local(feats: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Inverse of local cropping on feature maps. (B, K, h, w, d) -> (B, gh*h, gw*w, d)."""
    gh, gw = grid
    B, K, h, w, d = feats.shape
    feats = feats.view(B, gh, gw, h, w, d).permute(0, 1, 3, 2, 4, 5)  # (B, gh, h, gw, w, d)
    return feats.reshape(B, gh * h, gw * w, d)


def interleave_global(feats: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Inverse of global cropping on feature maps: out[:, i::gh, j::gw] = feats[:, i*gw+j].

    (B, K, h, w, d) -> (B, h*gh, w*gw, d)."""
    gh, gw = grid
    B, K, h, w, d = feats.shape
    feats = feats.view(B, gh, gw, h, w, d).permute(0, 3, 1, 4, 2, 5)  # (B, h, gh, w, gw, d)
    return feats.reshape(B, h * gh, w * gw, d)


def thumbnail(x: torch.Tensor, size: int) -> torch.Tensor:
    """The low-resolution view, exactly as the official code: bicubic, align_corners=False, no antialias."""
    return F.interpolate(x.float(), (size, size), mode="bicubic", align_corners=False).to(x.dtype)


def resize_input(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bring pixel_values to the model's input size (the official code's first bicubic resize)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x.float(), size, mode="bicubic", align_corners=False).to(x.dtype)


def _check_divisible(H: int, W: int, grid: tuple[int, int]) -> None:
    if H % grid[0] or W % grid[1]:
        raise ValueError(f"image of {H}x{W} pixels cannot be cut into a {grid[0]}x{grid[1]} grid")
