"""Simple scenes beside HR-VQA v2: a broader training mixture and a held-out generalisation split.

INF-LLaVA-mini was trained only on HR-VQA v2 scenes (one gray paper background, 672 x 672, seven
colours, three shapes, a dozen fixed question texts) and fails on simple pictures from elsewhere.
This module generates the simple pictures: a few shapes on varied backgrounds, at varied sizes and
aspect ratios, asked about in many phrasings. HR-VQA itself is untouched (its generator is only read).

Scenes (`make_simple_scene(split, index)` -> `SimpleScene`; `render_simple_scene` draws it). Each has
a ``style``, the trait it was drawn to exercise:

* ``plain``: a flat light or dark background; ``pastel``: a flat pastel one; ``textured``: smooth
  coloured noise, stripes, or HR-VQA's gray paper (`rendering._background`); 1-5 shapes each;
* ``single``: one shape of any size, from tiny (4% of the short side, >= 10 px) to filling most of
  the frame, anywhere (half of them placed well inside one of the five position regions);
* ``several``: 2-6 shapes, one clearly the largest (>= 1.5x the area of any other);
* ``upscaled``: 1-4 shapes drawn on a 48-128 px canvas, resized up (nearest or bilinear) to 336-672;
* held out, never in the training splits: ``gradient`` (a two-tone linear gradient background) and
  ``outlined`` (shapes drawn as thick outlines).

Every image is 224-896 px per side with an aspect ratio up to 2:1 either way (upscaled: 336-672).
Shapes: `MIXTURE_SHAPES` (HR-VQA's circle, square, triangle plus rectangle, diamond, star,
pentagon); colours: `MIXTURE_COLORS` (HR-VQA's seven plus pink, brown, gray, white, cyan). The
background contrasts with every object colour (RGB distance >= `MIN_CONTRAST` everywhere on it, and
never the same hue family: a pale blue background never holds a blue shape); (colour, shape) pairs
are unique per image.

Questions (kind ``simple``; ``subtype`` below; answers are one word from `MIXTURE_ANSWERS`):

* ``color`` / ``shape``: of the only shape, or of the largest when there are several;
* ``presence``: "Is there a red circle?", yes or no with equal odds; an absent target is a present
  shape in another colour, a present colour on another shape, or some other pair;
* ``count``: how many shapes (1-5, all large; asked on a third of the one-shape images);
* ``position``: of the only shape: left, right, top, bottom or center, asked only when its centre
  lies well inside one of those regions (corners and borderline places are not asked).

Every subtype has several phrasings (`TRAIN_PHRASINGS`); a disjoint set (`HELD_OUT_PHRASINGS`) is
used only by the held-out split. Splits (`MIXTURE_SPLIT_SEEDS`, seeds distinct from HR-VQA's):
``mixture-train`` and ``mixture-val`` (train styles and phrasings) and ``generalise`` (half held-out
styles, half train styles, held-out phrasings only: scored once, never trained or selected on).

Everything is a pure function of (split, index): `random.Random(f"mixture-{seed}-{index}")` and
numpy generators seeded from it. `write_mixture` writes a split like HR-VQA's `write_split`
(mixture-train: one multi-turn record per image; the others: one record per question);
`write_mixture_splits` writes the splits asked for and mixture.json (`infllava hrvqa OUT --mixture N
--mixture-val N --generalise N`).
"""

from __future__ import annotations

import colorsys
import json
import math
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from .rendering import _background, _shape_mask
from .scenes import COLORS, PROMPT_SUFFIX, SHAPES
from .scoring import iter_questions
from .writing import _human, write_caption_records, write_samples

__all__ = [
    "MIXTURE_VERSION",
    "MIXTURE_SPLIT_SEEDS",
    "TRAIN_SPLITS",
    "HELD_OUT_SPLIT",
    "KIND",
    "SUBTYPES",
    "MIXTURE_COLORS",
    "MIXTURE_SHAPES",
    "POSITIONS",
    "MIXTURE_ANSWERS",
    "MIXTURE_VOCABULARY",
    "TRAIN_STYLES",
    "HELD_OUT_STYLES",
    "TRAIN_PHRASINGS",
    "HELD_OUT_PHRASINGS",
    "MIN_CONTRAST",
    "SimpleObject",
    "SimpleScene",
    "check_mixture_args",
    "make_simple_scene",
    "render_simple_scene",
    "make_simple_sample",
    "write_mixture",
    "write_mixture_captions",
    "write_mixture_splits",
]

MIXTURE_VERSION = 1
#: The 50,000th, 60,000th and 70,000th primes (HR-VQA's splits use the 10,000th-40,000th).
MIXTURE_SPLIT_SEEDS = {"mixture-train": 611_953, "mixture-val": 746_773, "generalise": 882_377}
TRAIN_SPLITS = ("mixture-train", "mixture-val")
HELD_OUT_SPLIT = "generalise"
KIND = "simple"
SUBTYPES = ("color", "shape", "presence", "count", "position")

#: HR-VQA's seven colours plus five more; no two closer in RGB than HR-VQA's yellow and orange (70).
MIXTURE_COLORS: dict[str, tuple[int, int, int]] = {
    **COLORS,
    "pink": (245, 140, 190),
    "brown": (130, 80, 35),
    "gray": (128, 128, 128),
    "white": (250, 250, 250),
    "cyan": (40, 200, 215),
}
MIXTURE_SHAPES: tuple[str, ...] = SHAPES + ("rectangle", "diamond", "star", "pentagon")
POSITIONS = ("left", "right", "top", "bottom", "center")
MIXTURE_ANSWERS: dict[str, tuple[str, ...]] = {
    "color": tuple(MIXTURE_COLORS),
    "shape": MIXTURE_SHAPES,
    "presence": ("yes", "no"),
    "count": tuple(str(n) for n in range(1, 6)),
    "position": POSITIONS,
}
MIXTURE_VOCABULARY: tuple[str, ...] = tuple(sorted({a for answers in MIXTURE_ANSWERS.values() for a in answers}))

TRAIN_STYLES = ("plain", "pastel", "textured", "single", "several", "upscaled")
HELD_OUT_STYLES = ("gradient", "outlined")
_TRAIN_STYLE_WEIGHTS = (0.16, 0.14, 0.18, 0.2, 0.17, 0.15)
_HELD_OUT_STYLE_SHARE = 0.5  # of the generalise split's images

#: Question templates per phrasing group: "color"/"shape" ask about the only shape, "color-largest"/
#: "shape-largest" about the largest of several; "presence" fills {target} ("a red circle").
TRAIN_PHRASINGS: dict[str, tuple[str, ...]] = {
    "color": ("What colour is the shape?", "What color is the shape?", "What is the colour of the object?",
              "What is the color of the object?", "Which colour is the shape?", "Which color is the object?",
              "What color is it?", "What colour is the object in the image?"),
    "color-largest": ("What colour is the largest shape?", "What color is the biggest object?",
                      "What is the color of the largest object?", "Which colour is the biggest shape?",
                      "What color is the largest shape in the image?"),
    "shape": ("What shape is this?", "What is the shape in the picture?", "Which shape is shown?",
              "What shape is the object?", "What kind of shape is in the image?", "What shape do you see?"),
    "shape-largest": ("What shape is the largest object?", "Which shape is the biggest one?",
                      "What is the shape of the largest object?", "What kind of shape is the biggest object?"),
    "presence": ("Is there {target}?", "Does the image contain {target}?", "Is {target} present?",
                 "Can you see {target}?", "Is there {target} in the picture?"),
    "count": ("How many shapes are there?", "How many objects are in the image?", "Count the shapes.",
              "How many shapes do you see?", "What is the number of objects?"),
    "position": ("Where is the shape?", "In which part of the image is the shape?",
                 "Where is the object located?", "Where in the image is the object?"),
}
HELD_OUT_PHRASINGS: dict[str, tuple[str, ...]] = {
    "color": ("Tell me the colour of the shape.", "Name the color of the thing in this picture.",
              "What color does the figure have?"),
    "color-largest": ("Tell me the colour of the biggest figure.", "Name the color of the largest thing here."),
    "shape": ("Name the shape in this image.", "Which geometric figure is drawn here?",
              "Tell me what shape the figure has."),
    "shape-largest": ("Name the shape of the biggest figure.", "Which geometric figure is the largest one?"),
    "presence": ("Do you spot {target} anywhere here?", "Does this picture show {target}?",
                 "Is {target} drawn in this image?"),
    "count": ("How many things are drawn in this picture?", "Tell me how many figures the image shows."),
    "position": ("Where is the figure placed in this picture?", "In what region of the image does the object sit?"),
}

MIN_CONTRAST = 110.0  # RGB distance from every background tone to every object colour
_MIN_LUMA_CONTRAST = 20.0  # ... and brightness difference (Rec. 709 luma)
_BACKGROUND_TINT = 0.06  # a background with at least this HSV saturation has a hue family
# Hue families (upper bound of each hue range in degrees) for the "never the same colour family" rule.
_HUE_FAMILIES = (("red", 15), ("orange", 45), ("yellow", 70), ("green", 160), ("cyan", 200), ("blue", 255),
                 ("purple", 290), ("pink", 345), ("red", 361))
_TONES = {"light": ((0.0, 0.2), (0.82, 1.0)), "dark": ((0.0, 0.6), (0.08, 0.3)), "pastel": ((0.12, 0.3), (0.88, 1.0))}

_SIDE = (896, 224)  # the longest and the shortest image side
_UPSCALED_SIDE = (336, 672)  # upscaled images: each side in this range
_UPSCALED_CANVAS = (48, 128)  # ... drawn with the short side in this range
_MAX_RATIO = 2.0
_MIN_OBJECT_PX = 10  # the smallest shape side, canvas px
_MIN_UPSCALED_PX = 8  # ... on an upscaled scene's small canvas
_SINGLE_FRACTION = (0.04, 0.9)  # single shape: its side / the short side (log-uniform)
_LARGEST_FRACTION = (0.24, 0.42)  # several: the largest shape's side / the short side
_OTHER_FRACTION = 0.1  # several: the other shapes' smallest side / the short side
_LARGEST_AREA_RATIO = 1.5
_RECT_RATIO = (1.6, 2.2)  # rectangle: long / short side
_REGION_MARGIN = 0.05  # position: the centre keeps this far (fraction of the side) from the thirds' borders
_REGION_EXTENT = 0.45  # position left/right/top/bottom: the shape spans at most this much of that axis
_COUNT_SINGLE_P = 1 / 3
_OUTLINE = (0.12, 0.07)  # outlined style: the band's width / the shape's short side (other shapes, stars)


# --------------------------------------------------------------------------------------------------
# Scenes


@dataclass(frozen=True)
class SimpleObject:
    """One shape. bbox: x0, y0, x1, y1 (x1, y1 exclusive) in canvas pixels (`SimpleScene.canvas`)."""

    shape: str
    color: str
    bbox: tuple[int, int, int, int]

    @property
    def width(self) -> int:
        return self.bbox[2] - self.bbox[0]

    @property
    def height(self) -> int:
        return self.bbox[3] - self.bbox[1]

    @property
    def center(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.bbox
        return (x0 + x1) / 2, (y0 + y1) / 2

    @property
    def area(self) -> float:
        return _unit_area(self.shape) * self.width * self.height

    def describe(self) -> str:
        return f"{self.color} {self.shape}"


@dataclass
class SimpleScene:
    """A simple scene and its questions. ``size``: the image (width, height); ``canvas``: the (width,
    height) the shapes are drawn at (smaller than size only for style "upscaled", then resized up with
    ``resample``). ``background``: {"kind": flat | noise | stripes | paper | gradient, ...} (`_draw_background`)."""

    split: str
    index: int
    style: str
    size: tuple[int, int]
    canvas: tuple[int, int]
    resample: str | None
    background: dict[str, Any]
    outlined: bool
    objects: list[SimpleObject]
    questions: list[dict[str, Any]]

    def image_bbox(self, obj: SimpleObject) -> list[int]:
        """The object's bbox in image pixels (canvas pixels scaled to `size`)."""
        sx, sy = self.size[0] / self.canvas[0], self.size[1] / self.canvas[1]
        x0, y0, x1, y1 = obj.bbox
        return [int(round(x0 * sx)), int(round(y0 * sy)), int(round(x1 * sx)), int(round(y1 * sy))]


@lru_cache(maxsize=None)
def _unit_polygon(shape: str) -> tuple[tuple[float, float], ...]:
    """The shape's vertices in the unit box (spanning [0, 1] on both axes); circles have none."""
    if shape in ("square", "rectangle"):
        return ((0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0))
    if shape == "triangle":
        return ((0.0, 1.0), (1.0, 1.0), (0.5, 0.0))
    if shape == "diamond":
        return ((0.5, 0.0), (1.0, 0.5), (0.5, 1.0), (0.0, 0.5))
    if shape in ("pentagon", "star"):
        k = 5 if shape == "pentagon" else 10
        radii = [1.0 if shape == "pentagon" or i % 2 == 0 else 0.42 for i in range(k)]
        pts = [(r * math.sin(2 * math.pi * i / k), -r * math.cos(2 * math.pi * i / k)) for i, r in enumerate(radii)]
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        return tuple(((x - min(xs)) / (max(xs) - min(xs)), (y - min(ys)) / (max(ys) - min(ys))) for x, y in pts)
    if shape == "circle":
        return ()
    raise ValueError(f"unknown shape {shape!r}")


@lru_cache(maxsize=None)
def _unit_area(shape: str) -> float:
    """The fraction of its bounding box a shape fills."""
    if shape == "circle":
        return math.pi / 4
    pts = _unit_polygon(shape)
    return abs(sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(pts, pts[1:] + pts[:1]))) / 2


def _hue_family(rgb: Sequence[float], min_saturation: float = 0.15) -> str | None:
    """The hue family of a colour, None for an unsaturated (gray, white, black) one."""
    h, s, v = colorsys.rgb_to_hsv(*(c / 255 for c in rgb))
    if s < min_saturation or v < 0.12:
        return None
    deg = h * 360
    return next(name for name, upper in _HUE_FAMILIES if deg < upper)


def _luma(rgb: Sequence[float]) -> float:
    r, g, b = rgb
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def _contrasts(tone: Sequence[float], color: str) -> bool:
    """A background tone and an object colour are told apart: far in RGB, apart in brightness, and not
    of the same hue family (a background counts as tinted from a lower saturation than an object)."""
    rgb = MIXTURE_COLORS[color]
    family = _hue_family(tone, _BACKGROUND_TINT)
    return (math.dist(tone, rgb) >= MIN_CONTRAST and abs(_luma(tone) - _luma(rgb)) >= _MIN_LUMA_CONTRAST
            and (family is None or family != _hue_family(rgb)))


def _background_tones(bg: dict[str, Any]) -> list[tuple[float, float, float]]:
    """The colours a background takes (its extremes and, for gradients, points between), for the contrast check."""
    kind = bg["kind"]
    if kind == "flat":
        return [tuple(bg["colors"][0])]
    if kind == "noise":
        base, amp = bg["colors"][0], bg["amplitude"]
        return [tuple(min(255, max(0, c + d)) for c in base) for d in (-amp, 0, amp)]
    if kind == "stripes":
        a, b = bg["colors"]
        return [tuple(a), tuple(b), tuple((x + y) / 2 for x, y in zip(a, b))]
    if kind == "paper":  # rendering._background: gray level + 9 N(0, 1), tinted (+2, 0, -6)
        return [(lv + 2, lv, lv - 6) for lv in (bg["level"] - 30, bg["level"] + 30)]
    if kind == "gradient":
        a, b = bg["colors"]
        return [tuple(x + t * (y - x) for x, y in zip(a, b)) for t in (0.0, 0.25, 0.5, 0.75, 1.0)]
    raise ValueError(f"unknown background kind {kind!r}")


def _tone(rng: random.Random, tone: str) -> list[int]:
    """A random colour of a tone class: "light", "dark" or "pastel"."""
    (s0, s1), (v0, v1) = _TONES[tone]
    rgb = colorsys.hsv_to_rgb(rng.random(), rng.uniform(s0, s1), rng.uniform(v0, v1))
    return [int(round(255 * c)) for c in rgb]


def _contrasting_colors(bg: dict[str, Any]) -> list[str]:
    """The `MIXTURE_COLORS` that contrast with every tone of the background (presence's absent targets)."""
    tones = _background_tones(bg)
    return [c for c in MIXTURE_COLORS if all(_contrasts(t, c) for t in tones)]


def _sample_background(rng: random.Random, style: str) -> dict[str, Any]:
    """A background for the style (its colours unchecked; `_make_background` checks the contrast)."""
    if style in ("single", "several", "outlined"):
        style = rng.choices(("plain", "pastel", "textured"), (0.35, 0.25, 0.4))[0]
    elif style == "upscaled":
        style = rng.choice(("plain", "pastel"))
    if style == "plain":
        return {"kind": "flat", "colors": [_tone(rng, "light" if rng.random() < 0.6 else "dark")]}
    if style == "pastel":
        return {"kind": "flat", "colors": [_tone(rng, "pastel")]}
    if style == "gradient":
        tone = rng.choice(("light", "dark", "pastel"))
        return {"kind": "gradient", "colors": [_tone(rng, tone), _tone(rng, tone)], "angle": rng.randrange(0, 360, 15)}
    if style != "textured":
        raise ValueError(f"unknown style {style!r}")
    kind = rng.choices(("noise", "stripes", "paper"), (0.4, 0.35, 0.25))[0]
    if kind == "paper":
        return {"kind": "paper", "level": rng.randint(185, 225), "seed": rng.getrandbits(63)}
    tone = rng.choice(("light", "dark", "pastel"))
    base = _tone(rng, tone)
    if kind == "noise":
        return {"kind": "noise", "colors": [base], "amplitude": rng.randint(10, 25), "seed": rng.getrandbits(63)}
    shift = rng.randint(18, 40) * (1 if tone == "dark" else -1)
    other = [min(255, max(0, c + shift)) for c in base]
    return {"kind": "stripes", "colors": [base, other], "period": rng.randint(8, 40),
            "angle": rng.choice((0, 45, 90, 135))}


def _make_background(rng: random.Random, style: str, colors: set[str]) -> dict[str, Any] | None:
    """A background contrasting with every colour in `colors` (60 tries), else None."""
    for _ in range(60):
        bg = _sample_background(rng, style)
        tones = _background_tones(bg)
        if all(_contrasts(t, c) for t in tones for c in colors):
            return bg
    return None


def _image_size(rng: random.Random, upscaled: bool) -> tuple[tuple[int, int], tuple[int, int]]:
    """(size, canvas): the image's (width, height) and the one its shapes are drawn at."""
    if upscaled:
        lo, hi = _UPSCALED_SIDE
        short = rng.randint(lo, hi)
        long = rng.randint(short, min(hi, int(short * _MAX_RATIO))) if rng.random() < 0.6 else short
    else:
        short = rng.randint(_SIDE[1], 672)
        ratio = 1.0 if rng.random() < 0.4 else rng.uniform(1.15, _MAX_RATIO)
        long = min(_SIDE[0], int(round(short * ratio)))
    size = (long, short) if rng.random() < 0.5 else (short, long)
    if not upscaled:
        return size, size
    factor = rng.uniform(max(2.5, short / _UPSCALED_CANVAS[1]), short / _UPSCALED_CANVAS[0])
    return size, (max(1, int(round(size[0] / factor))), max(1, int(round(size[1] / factor))))


def _dims(rng: random.Random, shape: str, side: float) -> tuple[int, int]:
    """(width, height) of a shape whose longer side is `side` (rectangles: 1.6-2.2 : 1, either way)."""
    side = max(1, int(side))
    if shape != "rectangle":
        return side, side
    other = max(1, int(round(side / rng.uniform(*_RECT_RATIO))))
    return (side, other) if rng.random() < 0.5 else (other, side)


def _overlaps(box: tuple[int, int, int, int], others: Sequence[tuple[int, int, int, int]], gap: int) -> bool:
    x0, y0, x1, y1 = box
    return any(x0 < a1 + gap and a0 < x1 + gap and y0 < b1 + gap and b0 < y1 + gap for a0, b0, a1, b1 in others)


def _place(rng: random.Random, dims: tuple[int, int], canvas: tuple[int, int], occupied: list, gap: int,
           edge: int) -> tuple[int, int, int, int] | None:
    """A free box of `dims` inside the canvas (300 tries), else None."""
    (w, h), (cw, ch) = dims, canvas
    if cw - 2 * edge < w or ch - 2 * edge < h:
        return None
    for _ in range(300):
        x0, y0 = rng.randint(edge, cw - edge - w), rng.randint(edge, ch - edge - h)
        box = (x0, y0, x0 + w, y0 + h)
        if not _overlaps(box, occupied, gap):
            return box
    return None


# The five position regions as (x range, y range) of the centre, in fractions of the image.
_REGIONS = {"left": ((0.08, 0.27), (0.39, 0.61)), "right": ((0.73, 0.92), (0.39, 0.61)),
            "top": ((0.39, 0.61), (0.08, 0.27)), "bottom": ((0.39, 0.61), (0.73, 0.92)),
            "center": ((0.39, 0.61), (0.39, 0.61))}


def _single_box(rng: random.Random, shape: str, canvas: tuple[int, int], min_px: int) -> tuple[int, int, int, int]:
    """The box of a lone shape: any size from tiny to most of the frame; half of them centred well inside
    one of the five position regions, the others anywhere."""
    cw, ch = canvas
    short = min(cw, ch)
    lo, hi = max(min_px, _SINGLE_FRACTION[0] * short), _SINGLE_FRACTION[1] * short
    side = math.exp(rng.uniform(math.log(lo), math.log(max(lo, hi))))
    region = rng.choice(POSITIONS) if rng.random() < 0.5 else None
    if region not in (None, "center"):
        side = min(side, max(lo, 0.35 * short))
    w, h = _dims(rng, shape, side)
    w, h = min(w, cw), min(h, ch)
    if region is None:
        x0, y0 = rng.randint(0, cw - w), rng.randint(0, ch - h)
    else:
        (fx0, fx1), (fy0, fy1) = _REGIONS[region]
        cx, cy = rng.uniform(fx0, fx1) * cw, rng.uniform(fy0, fy1) * ch
        x0 = min(max(0, int(round(cx - w / 2))), cw - w)
        y0 = min(max(0, int(round(cy - h / 2))), ch - h)
    return x0, y0, x0 + w, y0 + h


def _several_boxes(rng: random.Random, shapes: list[str], canvas: tuple[int, int], min_px: int
                   ) -> list[tuple[int, int, int, int] | None]:
    """Boxes of 2-6 shapes, the first clearly the largest (>= 1.5x the area of any other); a shape that
    does not fit gets None (it is left out)."""
    short = min(canvas)
    gap, edge = max(3, int(0.03 * short)), max(2, int(0.02 * short))
    big = _dims(rng, shapes[0], rng.uniform(*_LARGEST_FRACTION) * short)
    big_area = _unit_area(shapes[0]) * big[0] * big[1]
    dims = [big]
    for shape in shapes[1:]:
        lo = max(min_px, _OTHER_FRACTION * short)
        aspect = 1 / rng.uniform(*_RECT_RATIO) if shape == "rectangle" else 1.0  # short / long side
        cap = min(0.75 * max(big), math.sqrt(big_area / _LARGEST_AREA_RATIO / _unit_area(shape) / aspect))
        side = int(rng.uniform(min(lo, cap), cap))  # floor: keeps the area ratio strict
        other = max(1, int(side * aspect))
        dims.append((side, other) if rng.random() < 0.5 else (other, side))
    boxes: list[tuple[int, int, int, int] | None] = []
    for i, d in enumerate(dims):
        box = _place(rng, d, canvas, [b for b in boxes if b], gap, edge)
        while box is None and i > 0 and min(d) * 0.9 >= min_px:  # shrink the smaller shapes to fit
            d = (max(1, int(d[0] * 0.9)), max(1, int(d[1] * 0.9)))
            box = _place(rng, d, canvas, [b for b in boxes if b], gap, edge)
        boxes.append(box)
    return boxes


def _specs(rng: random.Random, n: int) -> list[tuple[str, str]]:
    """n distinct (shape, colour) pairs."""
    pairs: list[tuple[str, str]] = []
    while len(pairs) < n:
        pair = (rng.choice(MIXTURE_SHAPES), rng.choice(list(MIXTURE_COLORS)))
        if pair not in pairs:
            pairs.append(pair)
    return pairs


def _object_count(rng: random.Random, style: str) -> int:
    if style == "single":
        return 1
    if style == "several":
        return rng.randint(2, 6)
    if style == "upscaled":
        return rng.choices((1, 2, 3, 4), (0.4, 0.2, 0.2, 0.2))[0]
    return rng.choices((1, 2, 3, 4, 5), (0.3, 0.175, 0.175, 0.175, 0.175))[0]


def _position(scene_size: tuple[int, int], box: Sequence[float]) -> str | None:
    """left / right / top / bottom / center when the box's centre lies well inside that region of a
    3 x 3 grid (middle row or column; corners are not asked), else None."""
    (w, h), (x0, y0, x1, y1) = scene_size, box
    cells = []
    for lo, hi, extent in ((x0, x1, w), (y0, y1, h)):
        f = (lo + hi) / 2 / extent
        if min(abs(f - 1 / 3), abs(f - 2 / 3)) < _REGION_MARGIN:
            return None
        cells.append(int(f * 3))
    col, row = cells
    if (row, col) == (1, 1):
        return "center"
    name = {(1, 0): "left", (1, 2): "right", (0, 1): "top", (2, 1): "bottom"}.get((row, col))
    if name in ("left", "right") and (x1 - x0) / w > _REGION_EXTENT:
        return None
    if name in ("top", "bottom") and (y1 - y0) / h > _REGION_EXTENT:
        return None
    return name


def _article(words: str) -> str:
    return ("an " if words[0] in "aeiou" else "a ") + words


def _presence(rng: random.Random, objects: list[SimpleObject], colors: list[str]) -> tuple[str, bool, str | None]:
    """(target "red circle", present, how an absent target was chosen). Absent targets: a present shape
    in another colour, a present colour on another shape, or another pair; colours from `colors` (those
    that contrast with the background)."""
    if rng.random() < 0.5:
        return rng.choice(objects).describe(), True, None
    present = {(o.color, o.shape) for o in objects}
    options = {
        "other color": [(c, o.shape) for o in objects for c in colors if (c, o.shape) not in present],
        "other shape": [(o.color, s) for o in objects for s in MIXTURE_SHAPES if (o.color, s) not in present],
        "other pair": [(c, s) for c in colors for s in MIXTURE_SHAPES
                       if c not in {o.color for o in objects} and s not in {o.shape for o in objects}],
    }
    modes = ["other color", "other shape", "other pair"]
    first = rng.choices(modes, (0.4, 0.4, 0.2))[0]
    for mode in [first] + [m for m in modes if m != first]:
        if options[mode]:
            color, shape = rng.choice(sorted(set(options[mode])))
            return f"{color} {shape}", False, mode
    raise RuntimeError("mixture: no absent target")  # unreachable: some other shape is always absent


def _questions(rng: random.Random, scene: SimpleScene, phrasings: dict[str, tuple[str, ...]],
               colors: list[str]) -> list[dict[str, Any]]:
    """The scene's questions: colour, shape, presence, and count / position where they apply, in a random order."""
    objs = scene.objects
    n = len(objs)
    out: list[dict[str, Any]] = []

    def ask(subtype: str, group: str, answer: str, meta: dict[str, Any], **fill: str) -> None:
        template = rng.choice(phrasings[group])
        out.append({"question": template.format(**fill), "answer": answer, "kind": KIND, "subtype": subtype,
                    "meta": {"style": scene.style, "template": template, **meta}})

    def about(obj: SimpleObject) -> dict[str, Any]:
        return {"target": obj.describe(), "bbox": scene.image_bbox(obj)}

    target = objs[0] if n == 1 else max(objs, key=lambda o: o.area)
    others = sorted(o.area for o in objs if o is not target)
    if n == 1 or others[-1] * _LARGEST_AREA_RATIO <= target.area:
        group = "" if n == 1 else "-largest"
        ask("color", "color" + group, target.color, about(target) | {"largest": n > 1})
        ask("shape", "shape" + group, target.shape, about(target) | {"largest": n > 1})
    desc, present, absent = _presence(rng, objs, colors)
    ask("presence", "presence", "yes" if present else "no", {"target": desc, "present": present, "absent": absent},
        target=_article(desc))
    if n <= 5 and (n > 1 or rng.random() < _COUNT_SINGLE_P):
        ask("count", "count", str(n), {"bboxes": [scene.image_bbox(o) for o in objs]})
    if n == 1:
        where = _position(scene.size, scene.image_bbox(objs[0]))
        if where is not None:
            ask("position", "position", where, about(objs[0]))
    rng.shuffle(out)
    return out


def check_mixture_args(split: str, index: int) -> None:
    if split not in MIXTURE_SPLIT_SEEDS:
        raise ValueError(f"unknown mixture split {split!r}; expected one of {sorted(MIXTURE_SPLIT_SEEDS)}")
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")


def _style(rng: random.Random, split: str) -> str:
    if split == HELD_OUT_SPLIT and rng.random() < _HELD_OUT_STYLE_SHARE:
        return rng.choice(HELD_OUT_STYLES)
    return rng.choices(TRAIN_STYLES, _TRAIN_STYLE_WEIGHTS)[0]


def make_simple_scene(split: str, index: int) -> SimpleScene:
    """The simple scene (style, size, background, shapes, questions) of (split, index); deterministic.
    Training splits use `TRAIN_STYLES` and `TRAIN_PHRASINGS` only; "generalise" adds `HELD_OUT_STYLES`
    and uses `HELD_OUT_PHRASINGS` only."""
    check_mixture_args(split, index)
    rng = random.Random(f"mixture-{MIXTURE_SPLIT_SEEDS[split]}-{index}")
    style = _style(rng, split)
    upscaled = style == "upscaled"
    size, canvas = _image_size(rng, upscaled)
    min_px = _MIN_UPSCALED_PX if upscaled else _MIN_OBJECT_PX
    n = _object_count(rng, style)
    for _ in range(30):  # no background tells these colours apart: draw the shapes and colours again
        specs = _specs(rng, n)
        if n == 1:
            boxes: list = [_single_box(rng, specs[0][0], canvas, min_px)]
        else:
            boxes = _several_boxes(rng, [s for s, _ in specs], canvas, min_px)
        objects = [SimpleObject(shape, color, box) for (shape, color), box in zip(specs, boxes) if box]
        background = _make_background(rng, style, {o.color for o in objects})
        if background is not None:
            break
    else:
        raise RuntimeError(f"mixture: no background contrasts with the shapes of {split} {index}")
    colors = _contrasting_colors(background)
    scene = SimpleScene(split=split, index=index, style=style, size=size, canvas=canvas,
                        resample=rng.choice(("nearest", "bilinear")) if upscaled else None,
                        background=background, outlined=style == "outlined", objects=objects, questions=[])
    phrasings = HELD_OUT_PHRASINGS if split == HELD_OUT_SPLIT else TRAIN_PHRASINGS
    scene.questions = _questions(rng, scene, phrasings, colors)
    return scene


def presence_questions(split: str, index: int, n: int) -> list[dict[str, Any]]:
    """Up to `n` more presence questions about the scene of (split, index), for training: half the time a
    present object not yet asked about ("yes"), otherwise an absent target drawn as the scene's own presence
    question draws them (mostly a present shape in another colour or a present colour on another shape;
    "no"); none asked twice, none the scene's own, so a one-shape scene gets mostly "no" (over mixture-train
    with n = 3: ~41% "yes"). Deterministic; an rng of its own, so the scene and its
    questions stay as they are. Only for the training splits (the held-out split is never trained on)."""
    if split not in TRAIN_SPLITS:
        raise ValueError(f"presence_questions is for the training splits {TRAIN_SPLITS}, got {split!r}")
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be an integer >= 0, got {n!r}")
    scene = make_simple_scene(split, index)
    colors = _contrasting_colors(scene.background)
    rng = random.Random(f"mixture-presence-{MIXTURE_SPLIT_SEEDS[split]}-{index}")
    asked = {q["meta"]["target"] for q in scene.questions if q["subtype"] == "presence"}
    out: list[dict[str, Any]] = []
    for _ in range(20 * n):
        if len(out) == n:
            break
        unasked = [o.describe() for o in scene.objects if o.describe() not in asked]
        if unasked and rng.random() < 0.5:
            desc, present, absent = rng.choice(unasked), True, None
        else:
            desc, present, absent = _presence(rng, scene.objects, colors)
            if present or desc in asked:
                continue
        asked.add(desc)
        template = rng.choice(TRAIN_PHRASINGS["presence"])
        out.append({"question": template.format(target=_article(desc)), "answer": "yes" if present else "no",
                    "kind": KIND, "subtype": "presence",
                    "meta": {"style": scene.style, "template": template, "target": desc, "present": present,
                             "absent": absent}})
    return out


def with_presence_turns(rec: dict[str, Any], n: int) -> dict[str, Any]:
    """A multi-turn mixture-train record (id "mixture-train-INDEX") with up to n more presence turns
    (`presence_questions`) in front, asked before any answer of the record names a colour or a shape; any
    other record unchanged. For `writing.write_turns(..., extend=partial(with_presence_turns, n=N))`."""
    split, _, index = str(rec.get("id", "")).rpartition("-")
    if split != "mixture-train" or not index.isdigit() or "subtypes" not in rec:
        return rec
    extra = presence_questions(split, int(index), n)
    if not extra:
        return rec
    conv = [dict(t) for t in rec["conversations"]]
    conv[0]["value"] = conv[0]["value"].replace("<image>\n", "")
    turns = []
    for j, q in enumerate(extra):
        turns += [_human(q["question"], j == 0), {"from": "gpt", "value": q["answer"]}]
    return {**rec, "conversations": turns + conv, "kinds": [q["kind"] for q in extra] + rec["kinds"],
            "subtypes": [q["subtype"] for q in extra] + rec["subtypes"]}


# --------------------------------------------------------------------------------------------------
# Rendering


def _simple_mask(shape: str, width: int, height: int, outline: int = 0, factor: int = 4) -> Image.Image:
    """Anti-aliased L mask of a shape filling a width x height box; outline > 0: only a band that many px
    wide inside its edge. HR-VQA's shapes, filled in a square box, are drawn by `rendering._shape_mask`
    (uncached: the mixture's many sizes would grow its unbounded cache by up to ~0.5 GB)."""
    if not outline and width == height and shape in SHAPES:
        return _shape_mask.__wrapped__(shape, width, factor)
    big_w, big_h = width * factor, height * factor
    m = Image.new("L", (big_w, big_h), 0)
    d = ImageDraw.Draw(m)
    style = {"outline": 255, "width": outline * factor} if outline else {"fill": 255}
    if shape == "circle":
        d.ellipse((0, 0, big_w - 1, big_h - 1), **style)
    else:
        d.polygon([(x * (big_w - 1), y * (big_h - 1)) for x, y in _unit_polygon(shape)], **style)
    return m.resize((width, height), Image.Resampling.BOX)


def _field(width: int, height: int, seed: int) -> np.ndarray:
    """A smooth random field in [-1, 1] of shape (height, width): a coarse grid, bicubic-upsampled."""
    cells = (max(2, round(8 * width / min(width, height))), max(2, round(8 * height / min(width, height))))
    coarse = np.random.default_rng(seed).normal(0.0, 0.5, (cells[1], cells[0])).astype(np.float32)
    smooth = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
    return np.clip(np.asarray(smooth), -1.0, 1.0)


def _draw_background(bg: dict[str, Any], width: int, height: int) -> Image.Image:
    """The background image of a scene (`SimpleScene.background`)."""
    kind = bg["kind"]
    if kind == "paper":
        return _background(max(width, height), bg["level"], bg["seed"]).crop((0, 0, width, height))
    if kind == "flat":
        return Image.new("RGB", (width, height), tuple(bg["colors"][0]))
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    if kind == "noise":
        rgb = np.asarray(bg["colors"][0], np.float32) + bg["amplitude"] * _field(width, height, bg["seed"])[..., None]
    elif kind in ("stripes", "gradient"):
        a = math.radians(bg["angle"])
        t = xx * math.cos(a) + yy * math.sin(a)
        if kind == "stripes":
            weight = ((t // (bg["period"] / 2)) % 2)[..., None]
        else:
            weight = ((t - t.min()) / max(1e-6, float(t.max() - t.min())))[..., None]
        lo, hi = (np.asarray(c, np.float32) for c in bg["colors"])
        rgb = lo + weight * (hi - lo)
    else:
        raise ValueError(f"unknown background kind {kind!r}")
    return Image.fromarray(np.clip(np.round(rgb), 0, 255).astype(np.uint8))


def render_simple_scene(scene: SimpleScene) -> Image.Image:
    """The RGB image of a simple scene (drawn at `canvas`, resized up to `size` for upscaled scenes)."""
    img = _draw_background(scene.background, *scene.canvas)
    for o in scene.objects:
        outline = max(2, int(round(_OUTLINE[o.shape == "star"] * min(o.width, o.height)))) if scene.outlined else 0
        img.paste(MIXTURE_COLORS[o.color], o.bbox, _simple_mask(o.shape, o.width, o.height, outline))
    if scene.canvas != scene.size:
        method = Image.Resampling.NEAREST if scene.resample == "nearest" else Image.Resampling.BILINEAR
        img = img.resize(scene.size, method)
    return img


def make_simple_sample(split: str, index: int) -> tuple[Image.Image, list[dict[str, Any]]]:
    """(image, questions) of (split, index); each question {question, answer, kind, subtype, meta}."""
    scene = make_simple_scene(split, index)
    return render_simple_scene(scene), scene.questions


# --------------------------------------------------------------------------------------------------
# Writing


def write_mixture(out_dir: str | os.PathLike, split: str, num_images: int,
                  questions_per_record: str | None = None) -> Path:
    """Write `num_images` images of a mixture split to out_dir/images/{split}/ and their records to
    out_dir/{split}.jsonl, like HR-VQA's `write_split`; returns the jsonl path.

    questions_per_record (default: "all" for mixture-train, "one" for mixture-val and generalise):
    "one": a single-turn record per question, id "{split}-{index}-{q}", with "kind", "subtype",
    "meta" and "style"; "all": a multi-turn record per image, id "{split}-{index}", with "kinds",
    "subtypes" and "style" (the image placeholder only in the first turn).
    """
    check_mixture_args(split, 0)
    fmt = questions_per_record or ("all" if split == "mixture-train" else "one")
    if fmt not in ("one", "all"):
        raise ValueError(f"questions_per_record must be 'one' or 'all', got {questions_per_record!r}")
    if not isinstance(num_images, int) or num_images < 0:
        raise ValueError(f"num_images must be an integer >= 0, got {num_images!r}")

    def sample(index: int):
        scene = make_simple_scene(split, index)
        return render_simple_scene(scene), scene.questions, {"style": scene.style}

    return write_samples(out_dir, split, num_images, sample, fmt)


def write_mixture_captions(out_dir: str | os.PathLike, split: str, num_images: int) -> Path:
    """out_dir/{split}_captions.jsonl: one "<image>" -> caption record per image ("red star, blue
    circle.", largest first), with a grounded phrase per shape in "regions" marked ``"cover": true``: the
    align stage (`infllava.training.align.region_cells`) names every token whose cell centre lies in the
    shape's box, so a large shape is not pulled towards "background" away from its centre (the box's
    corners outside a star or triangle are named too). The images are those `write_mixture` writes."""
    check_mixture_args(split, 0)

    def describe(index: int):
        scene = make_simple_scene(split, index)
        objs = sorted(scene.objects, key=lambda o: -o.area)
        return (", ".join(o.describe() for o in objs) + ".",
                [{"bbox": scene.image_bbox(o), "phrase": o.describe(), "cover": True} for o in objs])

    return write_caption_records(out_dir, split, num_images, describe)


def write_mixture_splits(out: str | os.PathLike, train: int = 0, val: int = 0, generalise: int = 0,
                         log: Callable[[str], Any] = print, captions: bool = False) -> dict[str, Any]:
    """Write the mixture splits asked for (n images each; 0: not written) and out/mixture.json (version,
    seeds, styles, phrasings, answers; the splits written, with those an earlier call wrote there);
    captions: also mixture-train's caption records with covering regions (`write_mixture_captions`);
    returns what mixture.json holds."""
    counts = {"mixture-train": train, "mixture-val": val, "generalise": generalise}
    for name, n in counts.items():
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"{name} images must be an integer >= 0, got {n!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    try:  # splits an earlier call of this version wrote stay listed
        earlier = json.loads((out / "mixture.json").read_text(encoding="utf-8"))
        if earlier.get("version") == MIXTURE_VERSION:
            written = {k: v for k, v in earlier.get("splits", {}).items() if k in counts and not counts[k]}
    except (OSError, ValueError, AttributeError):
        pass
    for split, n in counts.items():
        if n == 0:
            continue
        path = write_mixture(out, split, n)
        n_questions = sum(1 for _ in iter_questions(path))
        written[split] = {"images": n, "questions": n_questions, "records": path.name}
        log(f"{split}: {n} images, {n_questions} questions -> {path}")
        if captions and split == "mixture-train":
            cap = write_mixture_captions(out, split, n)
            written[split]["captions"] = cap.name
            log(f"{split}: {n} captions -> {cap}")
    info = {"benchmark": "hrvqa-mixture", "version": MIXTURE_VERSION, "kind": KIND,
            "split_seeds": dict(MIXTURE_SPLIT_SEEDS), "splits": written,
            "styles": {"train": list(TRAIN_STYLES), "held_out": list(HELD_OUT_STYLES)},
            "phrasings": {"train": {k: list(v) for k, v in TRAIN_PHRASINGS.items()},
                          "held_out": {k: list(v) for k, v in HELD_OUT_PHRASINGS.items()}},
            "prompt_suffix": PROMPT_SUFFIX, "answers": {k: list(v) for k, v in MIXTURE_ANSWERS.items()}}
    (out / "mixture.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return info
