"""`InfLlavaImageProcessor`: images -> the model's high-resolution input, as the official training did.

A transformers image processor (`AutoImageProcessor` knows it once `infllava` is imported): pad the image
with the mean colour to the aspect ratio of the crop grid (LLaVA's `expand2square` for the official square
grid), PIL-bicubic-resize it to the model input (n_h * S, n_w * S), scale to [0, 1] and normalise with the
tower's mean/std. For a square grid this equals the official pipeline (expand2square, then
CLIPImageProcessor's shortest-edge resize + centre crop, a single bicubic resize of the uint8 image).

`size` is the model input {"height": n_h * S, "width": n_w * S} and `crop_size` one crop {"height": S,
"width": S}, as engines read them; `grid` is (n_h, n_w).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature

from .images import DEFAULT_MAX_PIXELS, ImageInput, expand_to_aspect, is_single_image, load_image, mean_fill_color

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class InfLlavaImageProcessor(BaseImageProcessor):
    """Images -> normalised float tensor [B, 3, n_h * S, n_w * S] (`pixel_values`).

    Args:
        crop_size: input side S of the vision tower (one crop), an int or {"height": S, "width": S}.
        grid: (n_h, n_w) crops per side; the output is n_h * S pixels high and n_w * S wide.
        image_mean, image_std: per-channel normalisation (of values in [0, 1]).
        aspect_mode: "pad" (official): pad with the mean colour to the grid's aspect ratio n_w:n_h, then
            bicubic resize; "resize": bicubic resize straight to the target, distorting the aspect ratio.
        pad_color: RGB pad colour; None -> `int(m * 255)` of image_mean, as LLaVA.
        max_pixels: passed to `load_image` (None: no limit of ours; Pillow's own bomb check remains).
        size: ignored when given (derived: crop_size x grid); an int is read as crop_size (the format
            `processor_config.json` had before this class was a transformers image processor).
    """

    model_input_names = ["pixel_values"]

    def __init__(
        self,
        crop_size: int | Mapping[str, int] | None = None,
        grid: Sequence[int] = (3, 3),
        image_mean: Sequence[float] = CLIP_MEAN,
        image_std: Sequence[float] = CLIP_STD,
        aspect_mode: Literal["pad", "resize"] = "pad",
        pad_color: Sequence[int] | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        size: int | Mapping[str, int] | None = None,
        **kwargs: Any,
    ) -> None:
        for stale in ("image_processor_type", "processor_class", "resample", "do_resize", "do_normalize"):
            kwargs.pop(stale, None)
        if kwargs:
            raise TypeError(f"InfLlavaImageProcessor got unknown settings {sorted(kwargs)}")
        super().__init__()
        if crop_size is None:
            if isinstance(size, Mapping) or size is None:
                raise ValueError("crop_size (the tower's input side S) is required")
            crop_size = size
        side = crop_size["height"] if isinstance(crop_size, Mapping) else crop_size
        if isinstance(crop_size, Mapping) and crop_size.get("width", side) != side:
            raise ValueError(f"crops must be square, got crop_size {dict(crop_size)}")
        self.crop_size = {"height": int(side), "width": int(side)}
        self.grid = [int(g) for g in grid]
        self.image_mean = [float(x) for x in image_mean]
        self.image_std = [float(x) for x in image_std]
        self.aspect_mode = aspect_mode
        self.pad_color = None if pad_color is None else [int(c) for c in pad_color]
        self.max_pixels = None if max_pixels is None else int(max_pixels)
        if int(side) < 1:
            raise ValueError(f"crop_size must be positive, got {side}")
        if len(self.grid) != 2 or min(self.grid) < 1:
            raise ValueError(f"grid must be two positive integers (n_h, n_w), got {grid!r}")
        if len(self.image_mean) != 3 or len(self.image_std) != 3 or min(self.image_std) <= 0:
            raise ValueError("image_mean and image_std must be 3 numbers each, std > 0")
        if aspect_mode not in ("pad", "resize"):
            raise ValueError(f"aspect_mode must be 'pad' or 'resize', got {aspect_mode!r}")
        if self.pad_color is not None and (len(self.pad_color) != 3 or not all(0 <= c <= 255 for c in self.pad_color)):
            raise ValueError(f"pad_color must be 3 integers in 0..255, got {pad_color!r}")
        if self.max_pixels is not None and self.max_pixels < 1:
            raise ValueError(f"max_pixels must be positive or None (no limit), got {max_pixels}")
        height, width = self.input_size
        self.size = {"height": height, "width": width}

    @classmethod
    def from_config(cls, config: Any, **overrides: Any) -> "InfLlavaImageProcessor":
        """Build from an `InfLlavaConfig` (tower size, grid, mean/std)."""
        kwargs: dict[str, Any] = dict(
            crop_size=config.tower_image_size,
            grid=tuple(config.grid),
            image_mean=tuple(config.image_mean),
            image_std=tuple(config.image_std),
        )
        kwargs.update(overrides)
        return cls(**kwargs)

    # ---- derived ----
    @property
    def tower_size(self) -> int:
        """S, the side of one crop."""
        return self.crop_size["height"]

    @property
    def input_size(self) -> tuple[int, int]:
        """(H, W) of the output: (n_h * S, n_w * S)."""
        return self.grid[0] * self.tower_size, self.grid[1] * self.tower_size

    @property
    def fill_color(self) -> tuple[int, int, int]:
        """RGB colour used by the "pad" aspect mode."""
        if self.pad_color is not None:
            return tuple(self.pad_color)  # type: ignore[return-value]
        return mean_fill_color(self.image_mean)

    # ---- processing ----
    def preprocess_pil(self, image: ImageInput) -> Image.Image:
        """Load one image and return the padded / resized uint8 RGB image of size (n_w*S, n_h*S)."""
        img = load_image(image, max_pixels=self.max_pixels)
        height, width = self.input_size
        if self.aspect_mode == "pad":
            img = expand_to_aspect(img, (self.grid[1], self.grid[0]), self.fill_color)
        return img.resize((width, height), Image.BICUBIC)

    def normalize_pil(self, img: Image.Image) -> torch.Tensor:
        """uint8 RGB PIL image -> float32 CHW tensor ((x / 255) - mean) / std."""
        arr = np.asarray(img, dtype=np.float32) / np.float32(255.0)
        mean = np.asarray(self.image_mean, dtype=np.float32)
        std = np.asarray(self.image_std, dtype=np.float32)
        arr = (arr - mean) / std
        return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))

    def pixels(self, images: ImageInput | Sequence[ImageInput]) -> torch.Tensor:
        """One image or a sequence of images -> float32 tensor [B, 3, n_h * S, n_w * S].

        An empty sequence gives a [0, 3, H, W] tensor. Raises ImageLoadError for a bad image.
        """
        if is_single_image(images):
            images = [images]  # type: ignore[list-item]
        tensors = [self.normalize_pil(self.preprocess_pil(im)) for im in images]  # type: ignore[union-attr]
        if not tensors:
            height, width = self.input_size
            return torch.empty(0, 3, height, width, dtype=torch.float32)
        return torch.stack(tensors)

    def preprocess(self, images: Any, return_tensors: str | None = "pt", **kwargs: Any) -> BatchFeature:
        """transformers' entry: images (nested lists are flattened in order) -> BatchFeature with
        `pixel_values` [N, 3, H, W]. Keyword arguments other processors take are accepted and unused."""
        if return_tensors not in (None, "pt"):
            raise ValueError(f"return_tensors must be 'pt' or None, got {return_tensors!r}")
        return BatchFeature({"pixel_values": self.pixels(flatten_images(images))})

    def __call__(self, images: Any, *args: Any, **kwargs: Any) -> BatchFeature:
        return self.preprocess(images, *args, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out.pop("size", None)  # derived
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.to_dict()})"


def flatten_images(images: Any) -> list[Any]:
    """An image, or (nested) lists of images, as one flat list in reading order."""
    if images is None:
        return []
    if is_single_image(images):
        return [images]
    if isinstance(images, (torch.Tensor, np.ndarray)):  # a batch (N, ...) of arrays
        return list(images)
    out: list[Any] = []
    for item in images:
        out.extend(flatten_images(item))
    return out
