"""HR-VQA scenes: the procedural generator (see the package docstring for the design).

`make_scene(split, index, size)` -> `Scene`: the objects (3-10 large shapes, one small shape, one
digit box) and the 2-4 questions with their answers and the metadata they were derived from; a pure
function of its arguments. `caption` and `regions` put a scene in words (the stage-1 and align data).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

__all__ = [
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
    "check_args",
    "make_scene",
    "caption",
    "regions",
]

HRVQA_VERSION = 2
#: The seed of each split (the 10,000th, 20,000th, 30,000th and 40,000th primes). "heldout" is kept for a
#: final check of choices made on val/test (the tables were chosen on the test split they report); it
#: is written only on request (`infllava hrvqa --heldout N`) and is never used to train or select.
SPLIT_SEEDS = {"train": 104_729, "val": 224_737, "test": 350_377, "heldout": 479_909}
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


def check_args(split: str, index: int, size: int) -> None:
    if split not in SPLIT_SEEDS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLIT_SEEDS)}")
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    if size < 192 or size % GRID:
        raise ValueError(f"size must be a multiple of {GRID} and >= 192, got {size}")


def make_scene(split: str, index: int, size: int = REFERENCE_SIZE, every_subtype: bool = False) -> Scene:
    """The scene (objects, questions with metadata) for (split, index, size); deterministic.
    every_subtype: also ask one question of each subtype the 2-4 drawn ones lack (same scene)."""
    check_args(split, index, size)
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
# A scene in words (stage-1 captions, LLaVA's "image -> caption" pretraining; the align stage's regions)

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
