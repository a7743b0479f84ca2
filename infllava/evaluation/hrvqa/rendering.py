"""HR-VQA rendering: a `Scene` drawn as an RGB image (textured background, anti-aliased shapes, the
digit in its white box)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .scenes import _DIGIT_HEIGHT, COLORS, REFERENCE_SIZE, Scene, _px, make_scene

__all__ = ["render_scene", "make_sample"]


def _background(size: int, level: int, seed: int) -> Image.Image:
    """Smooth light-gray blotches (an 8 x 8 random field, bicubic-upsampled): textured, but cheap to
    draw and to store as PNG (no per-pixel noise)."""
    gray = level + 9.0 * np.random.default_rng(seed).normal(0.0, 1.0, (8, 8))
    rgb = np.stack([gray + 2.0, gray, gray - 6.0], axis=-1)  # a slightly warm paper tone
    small = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    return small.resize((size, size), Image.Resampling.BICUBIC)


@lru_cache(maxsize=None)
def _shape_mask(shape: str, side: int, factor: int = 4) -> Image.Image:
    """Anti-aliased L mask of a shape filling a side x side box (drawn at `factor`x, box-filtered)."""
    big = side * factor
    m = Image.new("L", (big, big), 0)
    d = ImageDraw.Draw(m)
    if shape == "circle":
        d.ellipse((0, 0, big - 1, big - 1), fill=255)
    elif shape == "square":
        d.rectangle((0, 0, big - 1, big - 1), fill=255)
    elif shape == "triangle":
        d.polygon([(0, big - 1), (big - 1, big - 1), ((big - 1) / 2, 0)], fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return m.resize((side, side), Image.Resampling.BOX)


@lru_cache(maxsize=None)
def _digit_mask(digit: int, height: int) -> Image.Image:
    """An anti-aliased L mask of one digit, `height` px tall (rendered large, then reduced)."""
    try:
        font = ImageFont.load_default(size=8 * height)  # FreeType build: a scalable font
    except (TypeError, AttributeError, OSError, ImportError):  # no FreeType: the bitmap font
        font = ImageFont.load_default()
    text = str(digit)
    x0, y0, x1, y1 = font.getbbox(text)
    canvas = Image.new("L", (x1 - x0 + 4, y1 - y0 + 4), 0)
    ImageDraw.Draw(canvas).text((2 - x0, 2 - y0), text, fill=255, font=font)
    canvas = canvas.crop(canvas.getbbox())
    width = max(1, int(round(canvas.width * height / canvas.height)))
    return canvas.resize((width, height), Image.Resampling.LANCZOS)


def render_scene(scene: Scene) -> Image.Image:
    """The RGB image of a scene."""
    img = _background(scene.size, scene.background_level, scene.background_seed)
    u = scene.size / REFERENCE_SIZE
    draw = ImageDraw.Draw(img)
    for o in scene.objects:
        if o.kind == "box":
            x0, y0, x1, y1 = o.bbox
            draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=(255, 255, 255), outline=(20, 20, 20),
                           width=max(1, int(round(u))))
            glyph = _digit_mask(o.digit, _px(_DIGIT_HEIGHT, u))
            gx = x0 + (o.side - glyph.width) // 2
            gy = y0 + (o.side - glyph.height) // 2
            img.paste((10, 10, 10), (gx, gy, gx + glyph.width, gy + glyph.height), glyph)
        else:
            img.paste(COLORS[o.color], o.bbox, _shape_mask(o.shape, o.side))
    return img


def make_sample(split: str, index: int, size: int = REFERENCE_SIZE,
                every_subtype: bool = False) -> tuple[Image.Image, list[dict[str, Any]]]:
    """(image, questions) for (split, index). Each question: {question, answer, kind, subtype, meta};
    meta holds what the answer was derived from (detail: bbox, tile, local_crop; count: bboxes; ...)."""
    scene = make_scene(split, index, size, every_subtype)
    return render_scene(scene), scene.questions
