"""The simple-scene mixture beside HR-VQA: determinism, answers that match the drawn scene, held-out
phrasings and styles kept out of training, files, scoring, the command line, and HR-VQA v2 unchanged."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import re
from collections import Counter

import numpy as np
import PIL
import pytest
from PIL import Image

from infllava.data.records import load_records, to_messages
from infllava.evaluation.hrvqa.mixture import (
    HELD_OUT_PHRASINGS,
    HELD_OUT_STYLES,
    KIND,
    MIXTURE_ANSWERS,
    MIXTURE_COLORS,
    MIXTURE_SHAPES,
    MIXTURE_SPLIT_SEEDS,
    MIXTURE_VOCABULARY,
    MIN_CONTRAST,
    SUBTYPES,
    TRAIN_PHRASINGS,
    TRAIN_STYLES,
    make_simple_sample,
    make_simple_scene,
    presence_questions,
    with_presence_turns,
    render_simple_scene,
    write_mixture,
    write_mixture_captions,
    write_mixture_splits,
)
from infllava.evaluation.hrvqa.rendering import make_sample
from infllava.evaluation.hrvqa.scenes import COLORS, SHAPES, SPLIT_SEEDS, make_scene
from infllava.evaluation.hrvqa.scoring import iter_questions, normalize_answer, score
from infllava_cli import main as cli

N = 300  # scenes per split in the split-wide checks (generation only: ~0.2 s per 400)
SCENES = {split: [make_simple_scene(split, i) for i in range(N)] for split in MIXTURE_SPLIT_SEEDS}
TRAINING = ("mixture-train", "mixture-val")


def _questions(split):
    return [(s, q) for s in SCENES[split] for q in s.questions]


def _template_re(template: str) -> re.Pattern:
    return re.compile(re.escape(template).replace(re.escape("{target}"), "an? [a-z]+ [a-z]+"))


TRAIN_RE = [_template_re(t) for ts in TRAIN_PHRASINGS.values() for t in ts]
HELD_OUT_RE = [_template_re(t) for ts in HELD_OUT_PHRASINGS.values() for t in ts]


def _matches(question: str, patterns) -> bool:
    return any(p.fullmatch(question) for p in patterns)


# ------------------------------------------------------------------------------------------------
# Determinism, sizes, styles


def test_deterministic_per_split_and_index():
    a_img, a_q = make_simple_sample("mixture-train", 5)
    b_img, b_q = make_simple_sample("mixture-train", 5)
    assert a_q == b_q and a_img.tobytes() == b_img.tobytes()
    assert make_simple_scene("generalise", 9) == make_simple_scene("generalise", 9)
    c_img, _ = make_simple_sample("mixture-val", 5)
    d_img, _ = make_simple_sample("mixture-train", 6)
    assert a_img.tobytes() not in (c_img.tobytes(), d_img.tobytes())
    seeds = list(MIXTURE_SPLIT_SEEDS.values())
    assert len(set(seeds)) == 3 and not set(seeds) & set(SPLIT_SEEDS.values())
    with pytest.raises(ValueError, match="unknown mixture split"):
        make_simple_scene("train", 0)  # an HR-VQA split is not a mixture split
    with pytest.raises(ValueError):
        make_simple_scene("mixture-train", -1)


def test_sizes_aspect_ratios_and_styles():
    styles = Counter()
    for split in TRAINING:
        for s in SCENES[split]:
            w, h = s.size
            styles[s.style] += 1
            assert 224 <= min(w, h) and max(w, h) <= 896 and max(w, h) / min(w, h) <= 2.0 + 1e-9
            if s.style == "upscaled":
                assert 336 <= min(w, h) and max(w, h) <= 672
                assert 48 <= min(s.canvas) <= 130 and s.resample in ("nearest", "bilinear")
            else:
                assert s.canvas == s.size and s.resample is None
            n = len(s.objects)
            assert {"single": 1 <= n <= 1, "several": 2 <= n <= 6, "upscaled": 1 <= n <= 4}.get(s.style, 1 <= n <= 5)
            assert len({(o.color, o.shape) for o in s.objects}) == n
    assert set(styles) == set(TRAIN_STYLES)
    assert any(s.size[0] != s.size[1] for s in SCENES["mixture-train"])  # other aspect ratios occur
    for s in SCENES["mixture-train"][:12]:
        img = render_simple_scene(s)
        assert img.size == s.size and img.mode == "RGB"


def test_shapes_colours_and_single_sizes():
    objs = [(s, o) for split in TRAINING for s in SCENES[split] for o in s.objects]
    assert {o.shape for _, o in objs} == set(MIXTURE_SHAPES) and set(SHAPES) < set(MIXTURE_SHAPES)
    assert {o.color for _, o in objs} == set(MIXTURE_COLORS) and set(COLORS) < set(MIXTURE_COLORS)
    assert {"rectangle", "diamond", "star", "pentagon", "pink", "brown", "gray", "white", "cyan"} <= (
        set(MIXTURE_SHAPES) | set(MIXTURE_COLORS))
    fractions = [max(o.width, o.height) / min(s.canvas) for s, o in objs if s.style == "single"]
    assert min(fractions) < 0.07 and max(fractions) > 0.6  # tiny to filling most of the frame
    for _, o in objs:
        if o.shape == "rectangle":
            assert max(o.width, o.height) >= 1.45 * min(o.width, o.height)  # never mistaken for a square
        else:
            assert o.width == o.height


# ------------------------------------------------------------------------------------------------
# Held-out phrasings and styles


def test_phrasings_disjoint_and_many():
    assert set(TRAIN_PHRASINGS) == set(HELD_OUT_PHRASINGS)
    train = {t for ts in TRAIN_PHRASINGS.values() for t in ts}
    held = {t for ts in HELD_OUT_PHRASINGS.values() for t in ts}
    assert not train & held
    assert all(len(ts) >= 2 for ts in HELD_OUT_PHRASINGS.values())
    assert all(len(ts) >= 3 for ts in TRAIN_PHRASINGS.values())
    assert any("colour" in t for t in TRAIN_PHRASINGS["color"]) and any("color" in t for t in TRAIN_PHRASINGS["color"])
    # no question text can read as both a train and a held-out phrasing
    assert not any(_matches(t.format(target="a red circle"), HELD_OUT_RE) for t in train)
    assert not any(_matches(t.format(target="a red circle"), TRAIN_RE) for t in held)


def test_training_splits_never_use_held_out_phrasings_or_styles():
    for split in TRAINING:
        for s, q in _questions(split):
            assert s.style not in HELD_OUT_STYLES and not s.outlined and s.background["kind"] != "gradient"
            assert _matches(q["question"], TRAIN_RE) and not _matches(q["question"], HELD_OUT_RE), q["question"]
            assert q["meta"]["template"] in {t for ts in TRAIN_PHRASINGS.values() for t in ts}
    used = {q["meta"]["template"] for split in TRAINING for _, q in _questions(split)}
    assert len(used) >= 0.9 * sum(len(ts) for ts in TRAIN_PHRASINGS.values())  # the variety is used


def test_generalise_split_uses_held_out_phrasings_and_styles():
    styles = Counter(s.style for s in SCENES["generalise"])
    assert set(HELD_OUT_STYLES) <= set(styles) and set(styles) - set(HELD_OUT_STYLES)  # with normal styles too
    assert any(s.background["kind"] == "gradient" for s in SCENES["generalise"])
    assert all(s.outlined == (s.style == "outlined") for s in SCENES["generalise"])
    train_texts = {q["question"] for split in TRAINING for _, q in _questions(split)}
    for s, q in _questions("generalise"):
        assert _matches(q["question"], HELD_OUT_RE) and not _matches(q["question"], TRAIN_RE), q["question"]
        assert q["question"] not in train_texts
    assert {q["subtype"] for _, q in _questions("generalise")} == set(SUBTYPES)


# ------------------------------------------------------------------------------------------------
# Answers


def test_answers_one_word_in_vocabulary_and_balanced():
    for split in MIXTURE_SPLIT_SEEDS:
        answers = Counter()
        for _, q in _questions(split):
            assert set(q) == {"question", "answer", "kind", "subtype", "meta"} and q["kind"] == KIND
            assert q["answer"] in MIXTURE_ANSWERS[q["subtype"]] and q["answer"] in MIXTURE_VOCABULARY
            assert len(q["answer"].split()) == 1 and normalize_answer(q["answer"]) == q["answer"]
            answers[q["subtype"], q["answer"]] += 1
        assert {st for st, _ in answers} == set(SUBTYPES)
        yes, no = answers["presence", "yes"], answers["presence", "no"]
        assert abs(yes - no) <= 0.15 * (yes + no)
        assert {a for st, a in answers if st == "count"} == {"1", "2", "3", "4", "5"}
        assert {a for st, a in answers if st == "position"} == {"left", "right", "top", "bottom", "center"}


def test_answers_match_the_scene():
    for split in MIXTURE_SPLIT_SEEDS:
        for s, q in _questions(split):
            st, meta, objs = q["subtype"], q["meta"], s.objects
            if st in ("color", "shape"):
                target = max(objs, key=lambda o: o.area)
                assert meta["target"] == target.describe() and meta["bbox"] == s.image_bbox(target)
                assert all(o.area * 1.5 <= target.area for o in objs if o is not target)
                assert q["answer"] == (target.color if st == "color" else target.shape)
                assert meta["largest"] == (len(objs) > 1)
            elif st == "count":
                assert q["answer"] == str(len(objs)) and len(objs) <= 5
                assert sorted(meta["bboxes"]) == sorted(s.image_bbox(o) for o in objs)
            elif st == "presence":
                present = meta["target"] in {o.describe() for o in objs}
                assert q["answer"] == ("yes" if present else "no") and meta["present"] == present
                color, shape = meta["target"].split()
                assert color in MIXTURE_COLORS and shape in MIXTURE_SHAPES
                if meta["absent"] == "other color":
                    assert shape in {o.shape for o in objs}
                elif meta["absent"] == "other shape":
                    assert color in {o.color for o in objs}
            elif st == "position":
                assert len(objs) == 1
                x0, y0, x1, y1 = s.image_bbox(objs[0])
                fx, fy = (x0 + x1) / 2 / s.size[0], (y0 + y1) / 2 / s.size[1]
                for f in (fx, fy):  # well inside one third on both axes
                    assert min(abs(f - 1 / 3), abs(f - 2 / 3)) >= 0.05
                col, row = int(fx * 3), int(fy * 3)
                assert q["answer"] == {(1, 0): "left", (1, 2): "right", (0, 1): "top", (2, 1): "bottom",
                                       (1, 1): "center"}[row, col]


def test_absent_targets_include_near_misses():
    modes = Counter(q["meta"]["absent"] for split in MIXTURE_SPLIT_SEEDS for _, q in _questions(split)
                    if q["subtype"] == "presence" and not q["meta"]["present"])
    assert modes["other color"] > 0 and modes["other shape"] > 0


def _interior(o, box):
    """A pixel well inside a filled shape (a triangle is widest low)."""
    x0, y0, x1, y1 = box
    cy = (y0 + y1) // 2 + ((y1 - y0) // 4 if o.shape == "triangle" else 0)
    return (x0 + x1) // 2, cy


def test_drawn_colours_and_background_contrast():
    checked = Counter()
    for split in MIXTURE_SPLIT_SEEDS:
        for s in SCENES[split][:60]:
            arr = np.asarray(render_simple_scene(s)).astype(int)
            inside = np.zeros(arr.shape[:2], bool)
            for o in s.objects:
                box = s.image_bbox(o)
                inside[max(0, box[1] - 3):box[3] + 3, max(0, box[0] - 3):box[2] + 3] = True
                x, y = _interior(o, box)
                if min(box[2] - box[0], box[3] - box[1]) < 16:
                    continue
                pixel = arr[y, x]
                if s.outlined:  # a thick outline: the middle of a large shape is background
                    if min(o.width, o.height) >= 40 and o.shape != "star":
                        assert np.abs(pixel - MIXTURE_COLORS[o.color]).max() > 40
                        checked["outlined"] += 1
                else:
                    assert np.abs(pixel - MIXTURE_COLORS[o.color]).max() <= 40, (split, s.index, o)
                    checked["filled"] += 1
            background = arr[~inside][::7]
            for color in {o.color for o in s.objects}:
                dist = np.sqrt(((background - MIXTURE_COLORS[color]) ** 2).sum(-1))
                assert np.percentile(dist, 1) >= 0.8 * MIN_CONTRAST, (split, s.index, color)
    assert checked["filled"] > 100 and checked["outlined"] > 3


# ------------------------------------------------------------------------------------------------
# Files and scoring


def test_write_mixture_train_multi_turn_and_eval_one_per_question(tmp_path):
    train = write_mixture(tmp_path, "mixture-train", 3)
    assert train == tmp_path / "mixture-train.jsonl"
    recs = [json.loads(line) for line in train.read_text().splitlines()]
    assert [r["id"] for r in recs] == [f"mixture-train-{i}" for i in range(3)]
    for i, rec in enumerate(recs):
        scene = make_simple_scene("mixture-train", i)
        turns = rec["conversations"]
        assert [t["from"] for t in turns] == ["human", "gpt"] * len(scene.questions)
        assert turns[0]["value"].startswith("<image>\n") and sum(t["value"].count("<image>") for t in turns) == 1
        assert [t["value"] for t in turns[1::2]] == [q["answer"] for q in scene.questions]
        assert all(t["value"].endswith(" Answer with one word.") for t in turns[::2])
        assert rec["kinds"] == [KIND] * len(scene.questions)
        assert rec["subtypes"] == [q["subtype"] for q in scene.questions]
        assert rec["image"] == f"images/mixture-train/{i:06d}.png" and rec["style"] == scene.style
        assert Image.open(tmp_path / rec["image"]).size == scene.size
    for split in ("mixture-val", "generalise"):
        path = write_mixture(tmp_path, split, 2)
        recs = [json.loads(line) for line in path.read_text().splitlines()]
        expected = [q for i in range(2) for q in make_simple_scene(split, i).questions]
        assert len(recs) == len(expected)
        for rec, q in zip(recs, expected):
            human, gpt = rec["conversations"]
            assert human == {"from": "human", "value": "<image>\n" + q["question"] + " Answer with one word."}
            assert gpt == {"from": "gpt", "value": q["answer"]}
            assert (rec["kind"], rec["subtype"], rec["meta"]) == (KIND, q["subtype"], q["meta"])
            assert re.fullmatch(rf"{split}-\d+-\d+", rec["id"])
    for path in (train, tmp_path / "mixture-val.jsonl", tmp_path / "generalise.jsonl"):
        loaded, problems = load_records(path)
        assert problems == [] and loaded
        for rec in loaded:
            to_messages(rec)  # raises SampleError on a malformed record
    with pytest.raises(ValueError):
        write_mixture(tmp_path, "mixture-val", 1, questions_per_record="some")
    with pytest.raises(ValueError):
        write_mixture(tmp_path, "test", 1)


def test_written_splits_score(tmp_path):
    info = write_mixture_splits(tmp_path, train=2, val=2, generalise=2, log=lambda *_: None)
    assert set(info["splits"]) == {"mixture-train", "mixture-val", "generalise"}
    assert json.loads((tmp_path / "mixture.json").read_text()) == info
    for split, entry in info["splits"].items():
        path = tmp_path / entry["records"]
        items = list(iter_questions(path))
        assert len(items) == entry["questions"] == sum(len(make_simple_scene(split, i).questions) for i in range(2))
        perfect = score({q["id"]: q["answer"].capitalize() + "." for q in items}, path)
        assert perfect["accuracy"] == 1.0 and perfect["missing"] == 0
        assert set(perfect["by_kind"]) == {KIND} and set(perfect["by_subtype"]) <= set(SUBTYPES)
        assert score({}, path)["accuracy"] == 0.0


# ------------------------------------------------------------------------------------------------
# Command line


def test_cli_writes_the_mixture_only_when_asked(tmp_path, capsys):
    base, more = tmp_path / "base", tmp_path / "more"
    hrvqa = ["--train", "1", "--val", "0", "--test", "1", "--size", "336"]
    assert cli(["hrvqa", str(base), *hrvqa]) == 0
    assert not (base / "mixture.json").exists() and not list(base.glob("mixture-*")) and not (
        base / "generalise.jsonl").exists()
    assert cli(["hrvqa", str(more), *hrvqa, "--mixture", "2", "--mixture-val", "1", "--generalise", "2"]) == 0
    out = capsys.readouterr().out
    assert "mixture-train: 2 images" in out and "generalise: 2 images" in out
    for rel in ("hrvqa.json", "train.jsonl", "test.jsonl"):  # HR-VQA's files are the same either way
        assert (base / rel).read_bytes() == (more / rel).read_bytes()
    info = json.loads((more / "mixture.json").read_text())
    assert {k: v["images"] for k, v in info["splits"].items()} == {"mixture-train": 2, "mixture-val": 1,
                                                                   "generalise": 2}
    assert info["split_seeds"] == MIXTURE_SPLIT_SEEDS
    assert (more / "images" / "generalise" / "000001.png").is_file()
    # only the mixture: the HR-VQA splits set to 0
    only = tmp_path / "only"
    assert cli(["hrvqa", str(only), "--train", "0", "--val", "0", "--test", "0", "--generalise", "1"]) == 0
    assert (only / "generalise.jsonl").is_file() and not (only / "test.jsonl").exists()
    # ... beside an HR-VQA benchmark: its files and hrvqa.json are left as they were
    before = {rel: (more / rel).read_bytes() for rel in ("hrvqa.json", "train.jsonl", "test.jsonl")}
    assert cli(["hrvqa", str(more), "--train", "0", "--val", "0", "--test", "0", "--generalise", "3"]) == 0
    assert {rel: (more / rel).read_bytes() for rel in before} == before
    splits = json.loads((more / "mixture.json").read_text())["splits"]
    assert {k: v["images"] for k, v in splits.items()} == {"mixture-train": 2, "mixture-val": 1, "generalise": 3}


@pytest.mark.parametrize("option,value", [("--mixture", "-1"), ("--generalise", "x"), ("--mixture-val", "1.5")])
def test_cli_rejects_bad_counts_in_one_line(tmp_path, capsys, option, value):
    assert cli(["hrvqa", str(tmp_path / "x"), option, value]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and option in err
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------------------------------------
# HR-VQA v2 unchanged


def _scene_digest(split, index, size, every):
    asdict = dataclasses.asdict(make_scene(split, index, size, every))
    return hashlib.sha256(json.dumps(asdict, sort_keys=True).encode()).hexdigest()[:16]


def _sample_digest(split, index, size, every):
    img, questions = make_sample(split, index, size, every)
    h = hashlib.sha256(np.asarray(img).tobytes())
    h.update(json.dumps(questions, sort_keys=True).encode())
    return h.hexdigest()[:16]


HRVQA_CASES = [("train", 0, 672, False), ("train", 5, 336, True), ("val", 2, 336, False), ("test", 1, 672, False),
               ("heldout", 3, 336, False)]


def test_hrvqa_v2_scenes_unchanged():
    """Scenes (objects, questions, background seeds) computed before the mixture was added."""
    assert [_scene_digest(*c) for c in HRVQA_CASES] == [
        "e6308e9628abac2e", "4b9fac37bc2b4955", "1ce2a81fa2b16881", "1d49665fb77528e0", "992448aea4a8da03"]


@pytest.mark.skipif(PIL.__version__ != "12.3.0", reason="pixel digests were taken with the pinned Pillow 12.3.0")
def test_hrvqa_v2_images_unchanged():
    """Images and questions computed before the mixture was added (pixels depend on Pillow's drawing)."""
    assert [_sample_digest(*c) for c in HRVQA_CASES] == [
        "ea79ff40e02f3be5", "cf583a46cdbef4a9", "041d5efd4acf1ccc", "bab52601a4037343", "38f2e620b904b050"]


def test_write_subtype_takes_the_mixture_subtypes(tmp_path):
    """A broadening curriculum stage (scripts/train_mini_broad.sh) picks mixture question types by subtype."""
    from infllava.evaluation.hrvqa.writing import write_subtype

    src = write_mixture(tmp_path, "mixture-train", 6)
    want = [q for q in iter_questions(src) if q["subtype"] in ("color", "presence")]
    assert write_subtype(src, ["color", "presence"], tmp_path / "cur.jsonl") == len(want) > 6
    recs = [json.loads(line) for line in (tmp_path / "cur.jsonl").read_text().splitlines()]
    assert [(r["id"], r["subtype"]) for r in recs] == [(q["id"], q["subtype"]) for q in want]
    with pytest.raises(ValueError, match="unknown HR-VQA or mixture subtype"):
        write_subtype(src, "colour", tmp_path / "x.jsonl")


def test_mixture_captions_name_every_cell_a_large_shape_covers(tmp_path):
    """The align stage's data for simple scenes: one caption record per image, a covering region per shape."""
    from infllava.training.align import region_cells, region_problem

    n = 12
    write_mixture(tmp_path, "mixture-train", n)
    path = write_mixture_captions(tmp_path, "mixture-train", n)
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["image"] for r in recs] == [f"images/mixture-train/{i:06d}.png" for i in range(n)]
    covered_more = 0
    for i, r in enumerate(recs):
        scene = make_simple_scene("mixture-train", i)
        assert region_problem(r["regions"]) is None and all(x["cover"] for x in r["regions"])
        assert sorted(x["phrase"] for x in r["regions"]) == sorted(o.describe() for o in scene.objects)
        assert r["conversations"][1]["value"].startswith(max(scene.objects, key=lambda o: o.area).describe())
        with Image.open(tmp_path / r["image"]) as im:
            assert list(im.size) == list(scene.size)
        cells = region_cells(r["regions"], tuple(scene.size), (3, 3), (14, 14))
        centre_only = region_cells([{k: v for k, v in x.items() if k != "cover"} for x in r["regions"]],
                                   tuple(scene.size), (3, 3), (14, 14))
        assert set(centre_only) <= set(cells)
        covered_more += len(cells) > len(centre_only)
    assert covered_more >= n // 2  # most scenes have a shape larger than one token cell
    cli_dir = tmp_path / "cli"
    assert cli(["hrvqa", str(cli_dir), "--train", "0", "--val", "0", "--test", "0", "--mixture", "2", "--captions"]) == 0
    info = json.loads((cli_dir / "mixture.json").read_text())
    assert info["splits"]["mixture-train"]["captions"] == "mixture-train_captions.jsonl"
    assert len((cli_dir / "mixture-train_captions.jsonl").read_text().splitlines()) == 2


def test_write_curriculum_gives_the_new_types_their_share(tmp_path):
    """A rebalanced curriculum stage: every new question, and of the kept ones as many as the share asks."""
    from infllava.evaluation.hrvqa.writing import write_curriculum

    src = write_mixture(tmp_path, "mixture-train", 12)
    new = [q["id"] for q in iter_questions(src) if q["subtype"] == "presence"]
    old = [q["id"] for q in iter_questions(src) if q["subtype"] in ("color", "shape")]
    out = tmp_path / "cur.jsonl"
    assert write_curriculum([(src, "presence")], [(src, ["color", "shape"])], out, new_share=0.5) == (len(new), len(new))
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert ids[:len(new)] == new and set(ids[len(new):]) < set(old) and len(set(ids)) == len(ids)
    # a share of 1/3: twice as many kept, and never more than there are
    assert write_curriculum([(src, "presence")], [(src, ["color", "shape"])], out, new_share=1 / 3)[1] == min(2 * len(new), len(old))
    assert write_curriculum([(src, "presence")], [(src, ["color", "shape"])], out, new_share=0.01)[1] == len(old)
    with pytest.raises(ValueError, match="new_share"):
        write_curriculum([(src, "presence")], [], out, new_share=0)


def test_write_turns_keeps_the_chosen_turns_of_multi_turn_records(tmp_path):
    """Multi-turn records cut to some subtypes: the kept question-answer pairs in their order, the image
    placeholder on the first, the subtype lists matching; untouched records verbatim; a shuffled union."""
    from infllava.evaluation.hrvqa.writing import write_turns

    src = write_mixture(tmp_path, "mixture-train", 6)
    records = [json.loads(line) for line in src.read_text().splitlines()]
    out = tmp_path / "turns.jsonl"
    assert write_turns([(src, ["shape", "presence"])], out, seed=3) == sum(
        any(s in ("shape", "presence") for s in r["subtypes"]) for r in records)
    got = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    for r in records:
        keep = [i for i, s in enumerate(r["subtypes"]) if s in ("shape", "presence")]
        if not keep:
            continue
        g = got[r["id"]]
        assert g["subtypes"] == [r["subtypes"][i] for i in keep] and len(g["kinds"]) == len(keep)
        assert [t["value"] for t in g["conversations"][1::2]] == [r["conversations"][2 * i + 1]["value"] for i in keep]
        humans = [t["value"] for t in g["conversations"][0::2]]
        assert humans[0].startswith("<image>\n") and not any("<image>" in h for h in humans[1:])
        assert [h.replace("<image>\n", "") for h in humans] == [
            r["conversations"][2 * i]["value"].replace("<image>\n", "") for i in keep]
    # all turns: the records themselves, in another order; the same seed, the same file
    assert write_turns([(src, None)], out, seed=3) == len(records)
    lines = out.read_text().splitlines()
    assert sorted(lines) == sorted(json.dumps(r) for r in records)
    write_turns([(src, None)], tmp_path / "again.jsonl", seed=3)
    assert (tmp_path / "again.jsonl").read_text().splitlines() == lines
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x", "image": "a.png", "conversations": []}\n')
    with pytest.raises(ValueError, match="no subtype per question turn"):
        write_turns([(bad, None)], out)
    with pytest.raises(ValueError, match="no question turns"):
        write_turns([(src, "digit")], out)


def test_presence_questions_are_true_new_and_training_only():
    """More presence questions for training: each answer true of the scene, no target asked twice or the
    scene's own, both answers in use, the same ones every time, and never for the held-out split."""
    answers = Counter()
    for i in range(40):
        scene = make_simple_scene("mixture-train", i)
        there = {o.describe() for o in scene.objects}
        own = {q["meta"]["target"] for q in scene.questions if q["subtype"] == "presence"}
        qs = presence_questions("mixture-train", i, 3)
        assert qs == presence_questions("mixture-train", i, 3) and 1 <= len(qs) <= 3
        targets = [q["meta"]["target"] for q in qs]
        assert len(set(targets)) == len(targets) and not set(targets) & own
        for q in qs:
            assert q["answer"] == ("yes" if q["meta"]["target"] in there else "no") and q["subtype"] == "presence"
            assert q["meta"]["template"] in TRAIN_PHRASINGS["presence"]
            answers[q["answer"]] += 1
    assert answers["yes"] > 30 and answers["no"] > 30
    assert presence_questions("mixture-train", 0, 0) == []
    with pytest.raises(ValueError, match="training splits"):
        presence_questions("generalise", 0, 2)


def test_write_turns_puts_more_presence_turns_first(tmp_path):
    """extend=with_presence_turns(n=N): a mixture-train record gets up to N presence turns in front (the image placeholder on the
    first), its own turns after them unchanged; HR-VQA records stay as they were."""
    from infllava.evaluation.hrvqa.writing import write_turns

    src = write_mixture(tmp_path, "mixture-train", 5)
    hr = tmp_path / "hr.jsonl"
    hr_rec = {"id": "train-0", "image": "a.png", "subtypes": ["shape"], "kinds": ["detail"],
              "conversations": [{"from": "human", "value": "<image>\nWhat shape? Answer with one word."},
                                {"from": "gpt", "value": "circle"}]}
    hr.write_text(json.dumps(hr_rec) + "\n")
    out = tmp_path / "turns.jsonl"
    assert write_turns([(src, None), (hr, None)], out, extend=functools.partial(with_presence_turns, n=2)) == 6
    got = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert got["train-0"] == hr_rec
    for r in map(json.loads, src.read_text().splitlines()):
        g = got[r["id"]]
        extra = presence_questions("mixture-train", int(r["id"].rsplit("-", 1)[1]), 2)
        k = len(extra)
        assert g["subtypes"] == ["presence"] * k + r["subtypes"] and len(g["kinds"]) == len(g["subtypes"])
        assert [t["value"] for t in g["conversations"][1:2 * k:2]] == [q["answer"] for q in extra]
        assert g["conversations"][0]["value"].startswith("<image>\n" + extra[0]["question"])
        assert [t["value"] for t in g["conversations"][2 * k:]] == [
            t["value"].replace("<image>\n", "") if j == 0 else t["value"] for j, t in enumerate(r["conversations"])]
        assert sum("<image>" in t["value"] for t in g["conversations"]) == 1


def test_simple_breakdown_counts_scenes_styles_and_yes_answers(tmp_path):
    """experiments/mini_simple_breakdown.py splits a simple-scene score file by scene (one shape or the
    largest of several, its size) and style group, and counts "yes" answers; a file that is not a
    simple-scene split is an error naming it."""
    import subprocess
    import sys
    from pathlib import Path

    path = write_mixture(tmp_path, "generalise", 6)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    truth = {r["id"]: r["conversations"][1]["value"] for r in records}
    flip = {"yes": "no", "no": "yes"}
    flipped = {**truth, **{r["id"]: flip[truth[r["id"]]] for r in records if r["subtype"] == "presence"}}
    (tmp_path / "a.json").write_text(json.dumps({"predictions": truth}))
    (tmp_path / "b.json").write_text(json.dumps({"predictions": flipped}))
    script = Path(__file__).parents[1] / "experiments" / "mini_simple_breakdown.py"
    out = subprocess.run([sys.executable, str(script), f"right={tmp_path / 'a.json'}", f"flip={tmp_path / 'b.json'}",
                          "--data", str(path)], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0] == "| table | row | right | flip |"
    rows = {tuple(c.strip() for c in line.split("|")[1:3]): line.split("|")[3:5] for line in out[2:]}
    scene_rows = [k for k in rows if k[0] == "by scene"]
    asked = sum(1 for r in records if r["subtype"] in ("color", "shape"))
    assert sum(int(rows[k][0].split("/")[1].rstrip(") ")) for k in scene_rows) == asked
    assert all(rows[k][0].strip().startswith("100.0") for k in rows if k[0] != "presence")
    presence = [r for r in records if r["subtype"] == "presence"]
    yes = sum(truth[r["id"]] == "yes" for r in presence)
    assert rows[("presence", "answers yes")][0].strip() == f"{100 * yes / len(presence):.1f} ({yes}/{len(presence)})"
    assert rows[("presence", "answers yes")][1].strip().endswith(f"({len(presence) - yes}/{len(presence)})")
    assert any(rows[k][1].strip().startswith("0.0") for k in rows if "presence" in k[1])
    hr = tmp_path / "hr.jsonl"
    hr.write_text(json.dumps({"id": "t-0-0", "kind": "detail", "conversations": []}) + "\n")
    bad = subprocess.run([sys.executable, str(script), str(tmp_path / "a.json"), "--data", str(hr)],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "hr.jsonl" in bad.stderr and "simple-scene" in bad.stderr
