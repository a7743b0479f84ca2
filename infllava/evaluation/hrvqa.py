"""HR-VQA: a procedural high-resolution VQA benchmark that shows what the dual perspective buys.

A small INF-LLaVA (tower input S = 224, grid n = 3) sees a 672 x 672 image three ways: 3 x 3 local
crops (contiguous 224-px tiles, full detail of one region each), 3 x 3 global crops (strided pixel
sampling, each a coarse view of the whole scene) and a 224-px thumbnail. The benchmark asks two
kinds of question about synthetic scenes so that each perspective is needed:

* **detail** (subtypes ``color``, ``shape``, ``digit``): about an object 10-16 px across at 672 px,
  i.e. 3-5 px in any single 224-px view of the whole image. "What color is the small shape?",
  "What shape is the small colored object?", "What digit is written in the small white box?". Every
  image holds exactly one small colored shape and one small white box (16 px) holding a ~10-px
  digit, so each detail question names its target without needing the LM to bind attributes (the
  question text is the same for every image: a fixed readout, like "the largest shape"). At 224 px
  the small shape is a colored blob of ~4 px (its shape is gone) and the digit a gray smudge; in the
  local crop that holds them they are drawn at full resolution. Small things never straddle a
  local-tile border (they keep >= 3 px from it, about a third of them sit within 16 px of one);
  their tile is recorded in the question metadata (``tile`` = [row, col], ``local_crop`` index).
  Version 1 (``HRVQA_VERSION`` 1) had 2-3 small shapes and asked "What color is the small square?",
  which needs the LM to bind a shape to a colour among several blobs: SmolLM2-135M trained on 1000
  such questions stayed at chance even with full-resolution tokens (docs/inf-llava-mini.md, "HR-VQA v1"), so the
  benchmark measured the LM's binding, not what the image views show.
* **global** (subtypes ``count``, ``relation``, ``higher``, ``largest``): need the whole scene.
  "How many large circles are there?" (1-6 of them spread over the image), "Is the red square to
  the left of the blue circle?" / "... above ..." (yes/no, centers >= 0.15 * size apart on that
  axis, far-apart pairs preferred), "Which is higher, the red square or the green triangle?"
  (answer: a color), "What color is the largest shape?" (the largest has >= 1.5x the area and
  >= 1.25x the side of any other). Large shapes are 48-110 px (the largest 135-165 px) and stay
  clearly visible in the thumbnail, but they straddle tile borders freely, so no single local
  crop sees the scene.

Scenes: a lightly textured gray background (smooth blotches), 3-10 large shapes
(circle / square / triangle, each (color, shape) pair at most once per image, so "the red square"
is unique), the small shape and the digit box in free space. Every image carries 2-4 questions
that alternate kinds (the first kind alternates with the index), so both kinds are balanced over a
split. ``every_subtype=True`` (train data, ``--train-every-subtype``) adds one question of every
subtype the image lacks (7 in all), drawn from a separate random stream, so the scene and its 2-4
questions stay the same. Answers come from a closed vocabulary (`VOCABULARY`; `ANSWERS` per subtype) and are scored
by normalized exact match (`normalize_answer`, `score`).

Everything is a pure function of (split, index, size): `random.Random(f"hrvqa-{seed}-{index}")`
and a numpy generator seeded from it; no global random state. Changing the generator changes the
data, so `HRVQA_VERSION` is written next to the data.

    python -m infllava.evaluation.hrvqa OUT --train 2000 --val 200 --test 1000 [--size 672]

writes OUT/images/{split}/{index:06d}.png, OUT/{split}.jsonl (LLaVA conversation records, one per
question by default) and OUT/hrvqa.json (version, sizes, vocabulary).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "write_subtype",
    "HRVQA_VERSION",
    "SPLIT_SEEDS",
    "GRID",
    "REFERENCE_SIZE",
    "KINDS",
    "DETAIL_SUBTYPES",
    "GLOBAL_SUBTYPES",
    "COLORS",
    "SHAPES",
    "ANSWERS",
    "VOCABULARY",
    "PROMPT_SUFFIX",
    "SceneObject",
    "Scene",
    "make_scene",
    "render_scene",
    "make_sample",
    "regions",
    "caption",
    "write_captions",
    "write_split",
    "load_jsonl",
    "iter_questions",
    "normalize_answer",
    "score",
    "main",
]

HRVQA_VERSION = 2
SPLIT_SEEDS = {"train": 104_729, "val": 224_737, "test": 350_377}
GRID = 3  # local/global crop grid the benchmark is designed for (n = 3)
REFERENCE_SIZE = 672  # all pixel sizes below are given at this image size and scale with `size`

KINDS = ("detail", "global")
DETAIL_SUBTYPES = ("color", "shape", "digit")
GLOBAL_SUBTYPES = ("count", "relation", "higher", "largest")

#: Saturated colors that stay distinct from each other and from the gray background after resizing.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (35, 155, 60),
    "blue": (35, 75, 215),
    "yellow": (235, 200, 20),
    "purple": (135, 55, 175),
    "orange": (240, 130, 25),
    "black": (25, 25, 25),
}
SHAPES = ("circle", "square", "triangle")
_AREA_FACTOR = {"circle": math.pi / 4, "square": 1.0, "triangle": 0.5}  # area / side**2

_DIGITS = tuple(str(d) for d in range(10))
_COUNTS = tuple(str(d) for d in range(1, 10))
ANSWERS: dict[str, tuple[str, ...]] = {
    "color": tuple(COLORS),
    "shape": SHAPES,
    "digit": _DIGITS,
    "count": _COUNTS,
    "relation": ("yes", "no"),
    "higher": tuple(COLORS),
    "largest": tuple(COLORS),
}
VOCABULARY: tuple[str, ...] = tuple(sorted({a for answers in ANSWERS.values() for a in answers}))

PROMPT_SUFFIX = " Answer with one word."

# Sizes in px at REFERENCE_SIZE.
_LARGE_SIDE = (48, 110)
_LARGEST_SIDE = (135, 165)
_SMALL_SIDE = (10, 12)  # the small shape (the box: _BOX_SIDE)
_BOX_SIDE = 16
_DIGIT_HEIGHT = 10
_LARGE_GAP = 8
_SMALL_GAP = 6
_EDGE = 6  # keep everything this far from the image edge
_TILE_MARGIN = 3  # small things keep this far from local-tile borders
_NEAR_BORDER = 16  # "near a border" placements sit within this distance of one
_NEAR_BORDER_P = 0.35
_MIN_SEPARATION = 0.15  # relation / higher: centers this far apart (fraction of size) on the axis


@dataclass(frozen=True)
class SceneObject:
    """One drawn object. ``kind``: "large", "small" or "box" (the digit box). bbox: x0, y0, x1, y1
    with x1, y1 exclusive. For the box, shape is "box", color "white" and ``digit`` is set."""

    kind: str
    shape: str
    color: str
    bbox: tuple[int, int, int, int]
    digit: int | None = None

    @property
    def side(self) -> int:
        return self.bbox[2] - self.bbox[0]

    @property
    def center(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.bbox
        return (x0 + x1) / 2, (y0 + y1) / 2

    @property
    def area(self) -> float:
        return _AREA_FACTOR.get(self.shape, 1.0) * self.side**2

    def describe(self) -> str:
        return f"{self.color} {self.shape}"


@dataclass
class Scene:
    """A scene and its questions: everything needed to render the image and check the answers."""

    split: str
    index: int
    size: int
    objects: list[SceneObject]
    questions: list[dict[str, Any]]
    background_level: int
    background_seed: int
    tile_borders: tuple[int, ...] = field(default=())

    def of_kind(self, kind: str) -> list[SceneObject]:
        return [o for o in self.objects if o.kind == kind]


# --------------------------------------------------------------------------------------------------
# Scene generation


def _px(value: float, u: float) -> int:
    return max(1, int(round(value * u)))


def _overlaps(box: tuple[int, int, int, int], others: Iterable[tuple[int, int, int, int]], gap: int) -> bool:
    x0, y0, x1, y1 = box
    for a0, b0, a1, b1 in others:
        if x0 < a1 + gap and a0 < x1 + gap and y0 < b1 + gap and b0 < y1 + gap:
            return True
    return False


def _tile_of(lo: int, hi: int, borders: tuple[int, ...], margin: int) -> int | None:
    """The tile index along one axis holding pixels lo..hi-1 with `margin` px to spare, else None."""
    for b in borders:
        if lo - margin < b < hi + margin:
            return None
    return sum(1 for b in borders if b <= lo)


def _place_large(rng: random.Random, side: int, size: int, occupied: list, u: float) -> tuple | None:
    edge = _px(_EDGE, u)
    hi = size - edge - side
    if hi < edge:
        return None
    gap = _px(_LARGE_GAP, u)
    for _ in range(300):
        x0, y0 = rng.randint(edge, hi), rng.randint(edge, hi)
        box = (x0, y0, x0 + side, y0 + side)
        if not _overlaps(box, occupied, gap):
            return box
    return None


def _place_small(rng: random.Random, side: int, size: int, occupied: list, borders: tuple[int, ...],
                 u: float) -> tuple[int, int, int, int]:
    edge, gap, margin = _px(_EDGE, u), _px(_SMALL_GAP, u), _px(_TILE_MARGIN, u)
    near = max(margin + 1, _px(_NEAR_BORDER, u))
    hi = size - edge - side
    for attempt in range(2000):
        x0, y0 = rng.randint(edge, hi), rng.randint(edge, hi)
        if attempt < 1500 and rng.random() < _NEAR_BORDER_P:  # hug a tile border from one side
            b = rng.choice(borders)
            offset = rng.randint(margin, near)
            start = b + offset if rng.random() < 0.5 else b - offset - side
            if rng.random() < 0.5:
                x0 = start
            else:
                y0 = start
            if not (edge <= x0 <= hi and edge <= y0 <= hi):
                continue
        box = (x0, y0, x0 + side, y0 + side)
        if _tile_of(x0, x0 + side, borders, margin) is None or _tile_of(y0, y0 + side, borders, margin) is None:
            continue
        if not _overlaps(box, occupied, gap):
            return box
    raise RuntimeError("hrvqa: could not place a small object (scene too crowded for this size)")


def _large_objects(rng: random.Random, size: int, u: float) -> tuple[list[SceneObject], str]:
    """3-10 large shapes with distinct (color, shape) pairs and one clearly largest. Returns them and
    the shape that count questions ask about (1-6 of it)."""
    count_shape = rng.choice(SHAPES)
    counts = {s: (rng.randint(1, 6) if s == count_shape else rng.randint(0, 2)) for s in SHAPES}
    while sum(counts.values()) < 3:
        counts[rng.choice([s for s in SHAPES if s != count_shape])] += 1
    specs = []  # (shape, color)
    for s in SHAPES:
        specs += [(s, c) for c in rng.sample(list(COLORS), counts[s])]
    rng.shuffle(specs)

    big = rng.randrange(len(specs))
    big_side = int(round(rng.uniform(*_LARGEST_SIDE) * u))
    big_area = _AREA_FACTOR[specs[big][0]] * big_side**2
    sides = []
    for i, (s, _) in enumerate(specs):
        if i == big:
            sides.append(big_side)
            continue
        cap = min(0.8 * big_side, math.sqrt(big_area / 1.5 / _AREA_FACTOR[s]), _LARGE_SIDE[1] * u)
        lo = min(_LARGE_SIDE[0] * u, cap)
        sides.append(int(rng.uniform(lo, cap)))  # floor: keeps the area ratio strict

    order = sorted(range(len(specs)), key=lambda i: -sides[i])  # biggest first: it always fits
    placed: dict[int, tuple] = {}
    for i in order:
        side = sides[i]
        box = _place_large(rng, side, size, list(placed.values()), u)
        while box is None and side > 0.6 * _LARGE_SIDE[0] * u and i != big:
            side = int(side * 0.9)
            box = _place_large(rng, side, size, list(placed.values()), u)
        if box is not None:  # a shape that cannot fit is left out; answers follow what is drawn
            placed[i] = box
    objs = [SceneObject("large", specs[i][0], specs[i][1], placed[i]) for i in sorted(placed)]
    return objs, count_shape


def _small_spec(rng: random.Random, used: set[tuple[str, str]]) -> tuple[str, str]:
    """The (shape, color) of the one small shape: a pair no large shape has."""
    for _ in range(200):
        shape, color = rng.choice(SHAPES), rng.choice(list(COLORS))
        if (color, shape) not in used:
            return shape, color
    raise RuntimeError("hrvqa: no free (color, shape) pair for the small shape")


def _detail_meta(obj: SceneObject, size: int, borders: tuple[int, ...]) -> dict[str, Any]:
    x0, y0, x1, y1 = obj.bbox
    row = sum(1 for b in borders if b <= y0)
    col = sum(1 for b in borders if b <= x0)
    return {"bbox": list(obj.bbox), "side": obj.side, "tile": [row, col], "local_crop": row * GRID + col,
            "target": obj.describe() if obj.kind != "box" else f"box {obj.digit}"}


def _obj_meta(obj: SceneObject) -> dict[str, Any]:
    return {"desc": obj.describe(), "bbox": list(obj.bbox), "center": list(obj.center)}


def _global_question(subtype: str, rng: random.Random, large: list[SceneObject], count_shape: str,
                     size: int) -> dict[str, Any] | None:
    if subtype == "count":
        members = [o for o in large if o.shape == count_shape]
        return {"question": f"How many large {count_shape}s are there?", "answer": str(len(members)),
                "meta": {"shape": count_shape, "bboxes": [list(o.bbox) for o in members]}}
    if subtype == "largest":
        top = max(large, key=lambda o: o.area)
        return {"question": "What color is the largest shape?", "answer": top.color, "meta": _obj_meta(top)}
    min_sep = _MIN_SEPARATION * size
    if subtype == "relation":
        axes = ["x", "y"]
        rng.shuffle(axes)
        want_yes = rng.random() < 0.5
        for axis in axes:
            k = 0 if axis == "x" else 1
            pairs = [(a, b) for a, b in combinations(large, 2) if abs(a.center[k] - b.center[k]) >= min_sep]
            far = [(a, b) for a, b in pairs if math.dist(a.center, b.center) >= size / 3]
            if not pairs:
                continue
            a, b = rng.choice(far or pairs)
            if (a.center[k] < b.center[k]) != want_yes:  # "a left of / above b" must read want_yes
                a, b = b, a
            rel = "to the left of" if axis == "x" else "above"
            return {"question": f"Is the {a.describe()} {rel} the {b.describe()}?",
                    "answer": "yes" if want_yes else "no",
                    "meta": {"axis": axis, "a": _obj_meta(a), "b": _obj_meta(b)}}
        return None
    if subtype == "higher":
        pairs = [(a, b) for a, b in combinations(large, 2)
                 if a.color != b.color and abs(a.center[1] - b.center[1]) >= min_sep]
        if not pairs:
            return None
        far = [(a, b) for a, b in pairs if math.dist(a.center, b.center) >= size / 3]
        a, b = rng.choice(far or pairs)
        if rng.random() < 0.5:
            a, b = b, a
        top = a if a.center[1] < b.center[1] else b
        return {"question": f"Which is higher, the {a.describe()} or the {b.describe()}?", "answer": top.color,
                "meta": {"a": _obj_meta(a), "b": _obj_meta(b)}}
    raise ValueError(f"unknown global subtype {subtype!r}")


def _check_args(split: str, index: int, size: int) -> None:
    if split not in SPLIT_SEEDS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLIT_SEEDS)}")
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    if size < 192 or size % GRID:
        raise ValueError(f"size must be a multiple of {GRID} and >= 192, got {size}")


def make_scene(split: str, index: int, size: int = REFERENCE_SIZE, every_subtype: bool = False) -> Scene:
    """The scene (objects, questions with metadata) for (split, index, size); deterministic.
    every_subtype: also ask one question of each subtype the 2-4 drawn ones lack (same scene)."""
    _check_args(split, index, size)
    rng = random.Random(f"hrvqa-{SPLIT_SEEDS[split]}-{index}")
    u = size / REFERENCE_SIZE
    borders = tuple(size * k // GRID for k in range(1, GRID))

    n_questions = rng.choice((2, 3, 4))
    kinds = [KINDS[(index + q) % 2] for q in range(n_questions)]
    detail_subtypes = rng.sample(DETAIL_SUBTYPES, kinds.count("detail"))
    global_subtypes = rng.sample(GLOBAL_SUBTYPES, kinds.count("global"))

    large, count_shape = _large_objects(rng, size, u)
    occupied = [o.bbox for o in large]
    shape, color = _small_spec(rng, {(o.color, o.shape) for o in large})
    box = _place_small(rng, _px(rng.randint(*_SMALL_SIDE), u), size, occupied, borders, u)
    occupied.append(box)
    small = SceneObject("small", shape, color, box)
    digit = rng.randrange(10)
    box = _place_small(rng, _px(_BOX_SIDE, u), size, occupied, borders, u)
    digit_box = SceneObject("box", "box", "white", box, digit=digit)

    def detail_question(subtype: str) -> dict[str, Any]:
        if subtype == "color":
            q = {"question": "What color is the small shape?", "answer": small.color}
        elif subtype == "shape":
            q = {"question": "What shape is the small colored object?", "answer": small.shape}
        else:
            q = {"question": "What digit is written in the small white box?", "answer": str(digit)}
        target = digit_box if subtype == "digit" else small
        q.update(kind="detail", subtype=subtype, meta=_detail_meta(target, size, borders))
        return q

    def global_question(subtype: str, rng: random.Random, spare: list[str]) -> dict[str, Any]:
        q = _global_question(subtype, rng, large, count_shape, size)
        while q is None:  # no qualifying pair: fall back to an unused subtype (count/largest always work)
            subtype = spare.pop()
            q = _global_question(subtype, rng, large, count_shape, size)
        q.update(kind="global", subtype=subtype)
        return q

    detail_q = [detail_question(s) for s in detail_subtypes]
    spare = [s for s in GLOBAL_SUBTYPES if s not in global_subtypes]
    rng.shuffle(spare)
    global_q = [global_question(s, rng, spare) for s in global_subtypes]
    questions = [(detail_q if k == "detail" else global_q).pop(0) for k in kinds]
    background_level, background_seed = rng.randint(190, 220), rng.getrandbits(63)
    if every_subtype:
        extra_rng = random.Random(f"hrvqa-{SPLIT_SEEDS[split]}-{index}-every")
        asked = {q["subtype"] for q in questions}
        for s in DETAIL_SUBTYPES + GLOBAL_SUBTYPES:
            if s in asked:
                continue
            if s in DETAIL_SUBTYPES:
                q = detail_question(s)
            else:
                q = _global_question(s, extra_rng, large, count_shape, size)
                if q is None:  # no qualifying pair in this scene: that subtype is left out
                    continue
                q.update(kind="global", subtype=s)
            questions.append(q)
    questions = [{k: q[k] for k in ("question", "answer", "kind", "subtype", "meta")} for q in questions]

    return Scene(split=split, index=index, size=size, objects=large + [small, digit_box], questions=questions,
                 background_level=background_level, background_seed=background_seed,
                 tile_borders=borders)


# --------------------------------------------------------------------------------------------------
# Rendering


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


# --------------------------------------------------------------------------------------------------
# Writing


def _human(question: str, first: bool) -> dict[str, str]:
    return {"from": "human", "value": ("<image>\n" if first else "") + question + PROMPT_SUFFIX}


def write_split(out_dir: str | os.PathLike, split: str, num_images: int, size: int = REFERENCE_SIZE,
                questions_per_record: str = "one", every_subtype: bool = False) -> Path:
    """Write `num_images` images of `split` to out_dir/images/{split}/ and their records to
    out_dir/{split}.jsonl; returns the jsonl path.

    questions_per_record="one": one single-turn record per question, id "{split}-{index}-{q}", with
    "kind", "subtype" and "meta". "all": one multi-turn record per image, id "{split}-{index}", with
    "kinds" and "subtypes" lists (the image placeholder only in the first turn); `iter_questions` and
    `score` expand such records back to the per-question ids. every_subtype: one question of every
    subtype per image (`make_scene`), for training data.
    """
    if questions_per_record not in ("one", "all"):
        raise ValueError(f"questions_per_record must be 'one' or 'all', got {questions_per_record!r}")
    _check_args(split, 0, size)
    out = Path(out_dir)
    (out / "images" / split).mkdir(parents=True, exist_ok=True)
    jsonl = out / f"{split}.jsonl"
    tmp = jsonl.with_name(jsonl.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for index in range(num_images):
            image, questions = make_sample(split, index, size, every_subtype)
            rel = f"images/{split}/{index:06d}.png"
            image.save(out / rel, format="PNG", compress_level=1)
            if questions_per_record == "one":
                for q, item in enumerate(questions):
                    rec = {"id": f"{split}-{index}-{q}", "image": rel,
                           "conversations": [_human(item["question"], True),
                                             {"from": "gpt", "value": item["answer"]}],
                           "kind": item["kind"], "subtype": item["subtype"], "meta": item["meta"]}
                    f.write(json.dumps(rec) + "\n")
            else:
                turns = []
                for q, item in enumerate(questions):
                    turns += [_human(item["question"], q == 0), {"from": "gpt", "value": item["answer"]}]
                rec = {"id": f"{split}-{index}", "image": rel, "conversations": turns,
                       "kinds": [q["kind"] for q in questions], "subtypes": [q["subtype"] for q in questions]}
                f.write(json.dumps(rec) + "\n")
    os.replace(tmp, jsonl)
    return jsonl


# --------------------------------------------------------------------------------------------------
# Captions (stage-1 alignment data, LLaVA's "image -> caption" pretraining)

_ROWS, _COLS = ("top", "middle", "bottom"), ("left", "center", "right")


def _where(obj: SceneObject, size: int) -> str:
    """The 3 x 3 region of the object's centre: "top left", "middle center", ..."""
    x, y = obj.center
    return f"{_ROWS[min(2, int(3 * y // size))]} {_COLS[min(2, int(3 * x // size))]}"


def caption(scene: Scene) -> str:
    """A dense, deterministic description of every object, in reading order of its region:
    "large: red square top left, blue circle middle center. small: green triangle top right.
    box: digit 7 bottom left." Every content word is something the image shows; small objects and
    the digit are only legible at full resolution."""
    def listing(kind: str) -> str:
        objs = sorted(scene.of_kind(kind), key=lambda o: (o.center[1] * 3 // scene.size, o.center[0]))
        return ", ".join((f"digit {o.digit}" if kind == "box" else o.describe()) + " " + _where(o, scene.size)
                         for o in objs)

    parts = [f"{name}: {listing(kind)}." for name, kind in (("large", "large"), ("small", "small"), ("box", "box"))
             if scene.of_kind(kind)]
    return " ".join(parts)


def regions(scene: Scene) -> list[dict[str, Any]]:
    """Grounded phrases of every object (the align stage's data, `infllava.training.align`):
    [{"bbox": [x0, y0, x1, y1], "phrase": "large red square" | "small blue circle" | "digit 7"}]."""
    return [{"bbox": list(o.bbox),
             "phrase": f"digit {o.digit}" if o.kind == "box" else f"{o.kind} {o.describe()}"}
            for o in scene.objects]


def write_captions(out_dir: str | os.PathLike, split: str, num_images: int, size: int = REFERENCE_SIZE) -> Path:
    """out_dir/{split}_captions.jsonl: one "<image>" -> caption record per image of the split, with the
    objects' grounded phrases in "regions" (the images themselves are those `write_split` writes; only
    the scenes are regenerated here)."""
    _check_args(split, 0, size)
    path = Path(out_dir) / f"{split}_captions.jsonl"
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for index in range(num_images):
            scene = make_scene(split, index, size)
            rec = {"id": f"{split}-{index}-caption", "image": f"images/{split}/{index:06d}.png",
                   "conversations": [{"from": "human", "value": "<image>"},
                                     {"from": "gpt", "value": caption(scene)}],
                   "regions": regions(scene)}
            f.write(json.dumps(rec) + "\n")
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------------------------------
# Scoring

_NUMBER_WORDS = {w: str(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve".split())}
_ARTICLES = {"a", "an", "the"}


def normalize_answer(text: str) -> str:
    """Lowercase, punctuation to spaces, whitespace collapsed, leading articles dropped, number words
    to digits ("Three." -> "3", "the Red" -> "red")."""
    words = re.sub(r"[^\w\s]|_", " ", str(text).lower()).split()
    while words and words[0] in _ARTICLES:
        words.pop(0)
    return " ".join(_NUMBER_WORDS.get(w, w) for w in words)


def load_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _strip_prompt(value: str) -> str:
    value = value.replace("<image>", "").strip()
    return value[: -len(PROMPT_SUFFIX)].rstrip() if value.endswith(PROMPT_SUFFIX.strip()) else value


def iter_questions(records: Iterable[Mapping[str, Any]] | str | os.PathLike
                   ) -> Iterator[dict[str, Any]]:
    """One {id, image, question, prompt, answer, kind, subtype} per question of the records (a list
    or a jsonl path), in either `write_split` layout; prompt is the human turn as written (with the
    image placeholder and answer instruction), question is the bare question."""
    if isinstance(records, (str, os.PathLike)):
        records = load_jsonl(records)
    for rec in records:
        turns = rec["conversations"]
        humans = [t["value"] for t in turns if t.get("from") == "human"]
        answers = [t["value"] for t in turns if t.get("from") == "gpt"]
        if len(humans) == 1:
            ids, kinds, subtypes = [rec["id"]], [rec.get("kind")], [rec.get("subtype")]
        else:
            ids = [f"{rec['id']}-{q}" for q in range(len(humans))]
            kinds = rec.get("kinds") or [None] * len(humans)
            subtypes = rec.get("subtypes") or [None] * len(humans)
        for qid, prompt, answer, kind, subtype in zip(ids, humans, answers, kinds, subtypes):
            yield {"id": qid, "image": rec.get("image"), "question": _strip_prompt(prompt), "prompt": prompt,
                   "answer": answer, "kind": kind, "subtype": subtype}


def write_subtype(src: str | os.PathLike, subtypes: str | Iterable[str], out: str | os.PathLike) -> int:
    """Write the questions of `subtypes` from a split file (either layout) as single-turn records, each
    with the image placeholder, to `out`; returns how many. The data of a curriculum stage (the
    subtypes learned so far, scripts/train_mini.sh S2_CURRICULUM) and of experiments/mini_one_subtype.py."""
    wanted = {subtypes} if isinstance(subtypes, str) else set(subtypes)
    unknown = wanted - set(DETAIL_SUBTYPES + GLOBAL_SUBTYPES)
    if unknown:
        raise ValueError(f"unknown HR-VQA subtype(s) {sorted(unknown)}; expected some of "
                         f"{list(DETAIL_SUBTYPES + GLOBAL_SUBTYPES)}")
    rows = []
    for q in iter_questions(src):
        if q["subtype"] in wanted:
            prompt = q["prompt"] if q["prompt"].startswith("<image>") else "<image>\n" + q["prompt"]
            rows.append(json.dumps({"id": q["id"], "image": q["image"], "kind": q["kind"], "subtype": q["subtype"],
                                    "conversations": [{"from": "human", "value": prompt},
                                                      {"from": "gpt", "value": q["answer"]}]}) + "\n")
    if not rows:
        raise ValueError(f"{src}: no questions of subtype(s) {sorted(wanted)}")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text("".join(rows), encoding="utf-8")
    return len(rows)


def _acc(correct: int, total: int) -> dict[str, Any]:
    return {"accuracy": correct / total if total else 0.0, "correct": correct, "total": total}


def score(predictions: Mapping[str, str], records: Iterable[Mapping[str, Any]] | str | os.PathLike
          ) -> dict[str, Any]:
    """Normalized exact-match accuracy of `predictions` (question id -> answer text) on `records`.

    Returns {"accuracy", "correct", "total", "missing", "by_kind": {kind: {"accuracy", "correct",
    "total"}}, "by_subtype": {...}}. A question without a prediction counts as wrong (and as missing).
    """
    tally: dict[str, list[int]] = {}
    kinds: dict[str, list[int]] = {}
    subtypes: dict[str, list[int]] = {}
    missing = 0
    for item in iter_questions(records):
        pred = predictions.get(item["id"])
        missing += pred is None
        ok = int(pred is not None and normalize_answer(pred) == normalize_answer(item["answer"]))
        for table, key in ((tally, "all"), (kinds, item["kind"]), (subtypes, item["subtype"])):
            entry = table.setdefault(str(key), [0, 0])
            entry[0] += ok
            entry[1] += 1
    c, t = tally.get("all", [0, 0])
    return {**_acc(c, t), "missing": missing,
            "by_kind": {k: _acc(*v) for k, v in sorted(kinds.items())},
            "by_subtype": {k: _acc(*v) for k, v in sorted(subtypes.items())}}


# --------------------------------------------------------------------------------------------------
# Command line


def main(argv: list[str] | None = None) -> int:
    """python -m infllava.evaluation.hrvqa OUT --train 2000 --val 200 --test 1000 [--size 672]"""
    p = argparse.ArgumentParser(prog="python -m infllava.evaluation.hrvqa",
                                description="Write the procedural high-resolution VQA benchmark (HR-VQA).")
    p.add_argument("out", help="output directory")
    p.add_argument("--train", type=int, default=2000, help="train images (default 2000)")
    p.add_argument("--val", type=int, default=200, help="val images (default 200)")
    p.add_argument("--test", type=int, default=1000, help="test images (default 1000)")
    p.add_argument("--size", type=int, default=REFERENCE_SIZE, help="image side in px (default 672 = 3 x 224)")
    p.add_argument("--train-format", choices=("one", "all"), default="one",
                   help="train records: one per question (default) or one multi-turn record per image; "
                        "val/test are always one per question")
    p.add_argument("--train-every-subtype", action="store_true",
                   help="train images carry one question of every subtype (7) instead of the 2-4 that "
                        "val/test images carry: ~2.4x the supervision per image for the same tower work")
    p.add_argument("--captions", action="store_true",
                   help="also write train_captions.jsonl (image -> dense scene caption, for stage-1 alignment)")
    args = p.parse_args(argv)
    for name in ("train", "val", "test"):
        if getattr(args, name) < 0:
            p.error(f"--{name} must be >= 0")
    try:
        _check_args("test", 0, args.size)
    except ValueError as e:
        p.error(str(e))

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for split in ("train", "val", "test"):
        n = getattr(args, split)
        if n == 0:
            continue
        fmt = args.train_format if split == "train" else "one"
        path = write_split(out, split, n, size=args.size, questions_per_record=fmt,
                           every_subtype=args.train_every_subtype and split == "train")
        n_questions = sum(1 for _ in iter_questions(path))
        written[split] = {"images": n, "questions": n_questions, "records": str(path.name)}
        print(f"{split}: {n} images, {n_questions} questions -> {path}")
        if split == "train" and args.captions:
            cap = write_captions(out, split, n, size=args.size)
            written[split]["captions"] = cap.name
            print(f"{split}: {n} captions -> {cap}")
    info = {"benchmark": "hrvqa", "version": HRVQA_VERSION, "size": args.size, "grid": GRID,
            "split_seeds": SPLIT_SEEDS, "splits": written,
            "train_every_subtype": bool(args.train_every_subtype), "prompt_suffix": PROMPT_SUFFIX,
            "answers": {k: list(v) for k, v in ANSWERS.items()}}
    (out / "hrvqa.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
