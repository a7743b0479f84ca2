"""HR-VQA benchmark generator: determinism, scene/answer consistency, small detail targets, files, scoring."""

from __future__ import annotations

import json
import dataclasses
import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from infllava.evaluation.hrvqa.rendering import make_sample, render_scene
from infllava.evaluation.hrvqa.scenes import (
    ANSWERS,
    COLORS,
    DETAIL_SUBTYPES,
    GLOBAL_SUBTYPES,
    GRID,
    KINDS,
    SHAPES,
    SPLIT_SEEDS,
    VOCABULARY,
    caption,
    make_scene,
)
from infllava.evaluation.hrvqa.scoring import iter_questions, normalize_answer, score
from infllava.evaluation.hrvqa.writing import main as hrvqa_main
from infllava.evaluation.hrvqa.writing import write_captions, write_split, write_subtype

N = 20  # images per split in the scene-level checks
SCENES = {split: [make_scene(split, i) for i in range(N)] for split in ("train", "test")}


def _all_questions(split="train"):
    return [(s, q) for s in SCENES[split] for q in s.questions]


def _find(scene, desc, kind="large"):
    found = [o for o in scene.objects if o.kind == kind and o.describe() == desc]
    assert len(found) == 1, f"{desc!r} names {len(found)} objects"
    return found[0]


# ------------------------------------------------------------------------------------------------
# Determinism and layout


def test_deterministic_per_split_and_index():
    a_img, a_q = make_sample("train", 7)
    b_img, b_q = make_sample("train", 7)
    assert a_q == b_q
    assert np.array_equal(np.asarray(a_img), np.asarray(b_img))
    c_img, c_q = make_sample("test", 7)
    assert not np.array_equal(np.asarray(a_img), np.asarray(c_img))
    d_img, _ = make_sample("train", 8)
    assert not np.array_equal(np.asarray(a_img), np.asarray(d_img))
    assert len(set(SPLIT_SEEDS.values())) == 4


def test_image_size_and_mode():
    img, _ = make_sample("val", 0)
    assert img.size == (672, 672) and img.mode == "RGB"
    img, qs = make_sample("val", 0, size=336)
    assert img.size == (336, 336) and 2 <= len(qs) <= 4
    with pytest.raises(ValueError):
        make_sample("dev", 0)
    with pytest.raises(ValueError):
        make_sample("train", 0, size=500)  # not a multiple of the grid


def test_question_mix_kinds_balanced():
    kinds = Counter()
    for scene in SCENES["train"]:
        qk = [q["kind"] for q in scene.questions]
        assert 2 <= len(qk) <= 4
        assert set(qk) == {"detail", "global"}  # every image mixes both kinds
        kinds.update(qk)
    assert abs(kinds["detail"] - kinds["global"]) <= N // 4
    subtypes = Counter(q["subtype"] for _, q in _all_questions())
    assert set(subtypes) <= set(DETAIL_SUBTYPES + GLOBAL_SUBTYPES)
    assert len(subtypes) >= 6  # (20 images: practically all seven)


def test_answers_in_closed_vocabulary():
    for scene, q in _all_questions("train") + _all_questions("test"):
        assert q["answer"] in ANSWERS[q["subtype"]], q
        assert q["answer"] in VOCABULARY
        assert normalize_answer(q["answer"]) == q["answer"]
        assert q["kind"] == ("detail" if q["subtype"] in DETAIL_SUBTYPES else "global")
    assert len(COLORS) == 7 and set(SHAPES) == {"circle", "square", "triangle"}


def _scene_digest(split, n=5):
    h = hashlib.sha256()
    for i in range(n):
        h.update(json.dumps(dataclasses.asdict(make_scene(split, i)), sort_keys=True).encode())
    return h.hexdigest()[:16]


def test_existing_splits_are_unchanged():
    """The scenes (objects, questions, background seeds) of the first images of each split, as generated
    before the held-out split was added; a change here changes the data: bump HRVQA_VERSION."""
    assert {s: _scene_digest(s) for s in ("train", "val", "test")} == {
        "train": "35ba233339567d2b", "val": "36934127d6fe494c", "test": "ef7c238a1bb9d040"}


# ------------------------------------------------------------------------------------------------
# Held-out split


def test_heldout_split_has_its_own_seed_and_scenes():
    assert SPLIT_SEEDS["heldout"] == 479_909
    assert SPLIT_SEEDS["heldout"] not in {SPLIT_SEEDS[s] for s in ("train", "val", "test")}
    assert make_scene("heldout", 3) == make_scene("heldout", 3)  # deterministic
    a_img, a_q = make_sample("heldout", 3)
    b_img, b_q = make_sample("heldout", 3)
    assert a_q == b_q and np.array_equal(np.asarray(a_img), np.asarray(b_img))
    # no scene of the first N held-out images is a scene of another split (at any of the first N indices)
    def layout(scene):
        return tuple(o.bbox for o in scene.objects)

    heldout = [make_scene("heldout", i) for i in range(N)]
    others = {layout(make_scene(split, i)) for split in ("train", "val", "test") for i in range(N)}
    assert not {layout(s) for s in heldout} & others
    assert len({layout(s) for s in heldout}) == N


def test_heldout_questions_come_from_the_same_machinery_as_test():
    kinds = Counter()
    for index in range(N):
        for split in ("heldout", "test"):
            qs = make_scene(split, index).questions
            assert 2 <= len(qs) <= 4
            # the kind order depends only on the index: the same as every other split's
            assert [q["kind"] for q in qs] == [KINDS[(index + k) % 2] for k in range(len(qs))]
            for q in qs:
                assert q["answer"] in ANSWERS[q["subtype"]] and set(q) == {"question", "answer", "kind",
                                                                              "subtype", "meta"}
            if split == "heldout":
                kinds.update(q["subtype"] for q in qs)
    assert set(kinds) <= set(DETAIL_SUBTYPES + GLOBAL_SUBTYPES) and len(kinds) >= 6


def test_main_writes_heldout_only_when_asked(tmp_path, capsys):
    base, more = tmp_path / "base", tmp_path / "more"
    assert hrvqa_main([str(base), "--train", "1", "--val", "0", "--test", "2", "--size", "336"]) == 0
    assert hrvqa_main([str(more), "--train", "1", "--val", "0", "--test", "2", "--heldout", "2",
                       "--size", "336"]) == 0
    assert "heldout: 2 images" in capsys.readouterr().out
    info = json.loads((base / "hrvqa.json").read_text())
    assert "heldout" not in info["split_seeds"] and "heldout" not in info["splits"]
    assert not (base / "heldout.jsonl").exists() and not (base / "images" / "heldout").exists()
    info = json.loads((more / "hrvqa.json").read_text())
    assert info["split_seeds"] == SPLIT_SEEDS
    assert info["splits"]["heldout"]["images"] == 2 and info["splits"]["heldout"]["records"] == "heldout.jsonl"
    # the other splits are the same files with or without it
    for rel in ("train.jsonl", "test.jsonl", "images/test/000001.png"):
        assert (base / rel).read_bytes() == (more / rel).read_bytes()
    records = [json.loads(line) for line in (more / "heldout.jsonl").read_text().splitlines()]
    assert info["splits"]["heldout"]["questions"] == len(records)
    assert all(r["id"].startswith("heldout-") and r["image"].startswith("images/heldout/") for r in records)
    assert all(len(r["conversations"]) == 2 for r in records)  # one question per record, as test
    assert (more / "images" / "heldout" / "000001.png").is_file()
    assert hrvqa_main([str(tmp_path / "x"), "--heldout", "-1"]) == 2  # a usage error, one line


# ------------------------------------------------------------------------------------------------
# Scene / answer consistency


def test_detail_targets_small_unique_and_off_tile_borders():
    seen = Counter()
    for scene, q in _all_questions("train") + _all_questions("test"):
        if q["kind"] != "detail":
            continue
        meta = q["meta"]
        x0, y0, x1, y1 = meta["bbox"]
        assert 8 <= x1 - x0 <= 20 and 8 <= y1 - y0 <= 20  # 3-7 px in a 224-px view of the whole image
        assert 0 <= x0 < x1 <= scene.size and 0 <= y0 < y1 <= scene.size
        tile = scene.size // GRID
        for lo, hi in ((x0, x1), (y0, y1)):
            assert lo // tile == (hi - 1) // tile, "a detail target straddles a local-tile border"
            assert all(not (lo - 2 < b < hi + 2) for b in (tile, 2 * tile))
        assert meta["tile"] == [y0 // tile, x0 // tile]
        assert meta["local_crop"] == meta["tile"][0] * GRID + meta["tile"][1]
        targets = scene.of_kind("box" if q["subtype"] == "digit" else "small")
        assert len(targets) == 1, q  # "the small shape" / "the small white box" names exactly one object
        assert q["question"] == {"color": "What color is the small shape?",
                                 "shape": "What shape is the small colored object?",
                                 "digit": "What digit is written in the small white box?"}[q["subtype"]]
        t = targets[0]
        assert list(t.bbox) == meta["bbox"]
        assert q["answer"] == {"color": t.color, "shape": t.shape, "digit": str(t.digit)}[q["subtype"]]
        seen[q["subtype"]] += 1
        seen["near_border"] += min(abs(v - b) for v in (x0, x1, y0, y1) for b in (tile, 2 * tile)) <= 16
    assert {"color", "shape", "digit"} <= set(seen)
    assert seen["near_border"] >= 3  # targets also sit next to tile borders (about 40% of them)


def test_detail_target_drawn_where_metadata_says():
    for scene in SCENES["test"][:8]:
        arr = np.asarray(render_scene(scene)).astype(int)
        for q in scene.questions:
            if q["kind"] != "detail":
                continue
            x0, y0, x1, y1 = q["meta"]["bbox"]
            cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
            if q["subtype"] == "digit":
                patch = arr[y0:y1, x0:x1].mean(axis=-1)
                assert patch[1:-1, 1].min() > 230 or patch[1:-1, -2].min() > 230  # white inside the frame
                assert patch.min() < 60  # dark outline / ink
            else:
                t = [o for o in scene.of_kind("small") if list(o.bbox) == [x0, y0, x1, y1]][0]
                cy = cy + (y1 - y0) // 4 if t.shape == "triangle" else cy  # a triangle is widest low
                assert np.abs(arr[cy, cx] - np.array(COLORS[t.color])).max() <= 40


def test_count_matches_drawn_objects():
    n = 0
    for scene, q in _all_questions("train") + _all_questions("test"):
        if q["subtype"] != "count":
            continue
        shape = q["meta"]["shape"]
        assert q["question"] == f"How many large {shape}s are there?"
        drawn = [o for o in scene.of_kind("large") if o.shape == shape]
        assert q["answer"] == str(len(drawn)) and 1 <= len(drawn) <= 6
        assert sorted(map(list, (o.bbox for o in drawn))) == sorted(q["meta"]["bboxes"])
        n += 1
    assert n > 0


def test_relations_and_largest_match_coordinates():
    counted = Counter()
    for scene, q in _all_questions("train") + _all_questions("test"):
        st, meta = q["subtype"], q["meta"]
        if st == "relation":
            a, b = _find(scene, meta["a"]["desc"]), _find(scene, meta["b"]["desc"])
            k = 0 if meta["axis"] == "x" else 1
            assert abs(a.center[k] - b.center[k]) >= 0.15 * scene.size
            assert q["answer"] == ("yes" if a.center[k] < b.center[k] else "no")
            rel = "to the left of" if k == 0 else "above"
            assert q["question"] == f"Is the {a.describe()} {rel} the {b.describe()}?"
        elif st == "higher":
            a, b = _find(scene, meta["a"]["desc"]), _find(scene, meta["b"]["desc"])
            assert a.color != b.color and abs(a.center[1] - b.center[1]) >= 0.15 * scene.size
            assert q["answer"] == (a if a.center[1] < b.center[1] else b).color
        elif st == "largest":
            areas = sorted((o.area, o.color) for o in scene.of_kind("large"))
            assert q["answer"] == areas[-1][1]
            assert areas[-1][0] >= 1.45 * areas[-2][0]
        else:
            continue
        counted[st] += 1
    assert set(counted) == {"relation", "higher", "largest"}
    # relation answers are not all one way
    rel = Counter(q["answer"] for _, q in _all_questions("train") + _all_questions("test")
                  if q["subtype"] == "relation")
    assert set(rel) == {"yes", "no"} or sum(rel.values()) < 4


def test_descriptions_unique_per_image():
    for scene in SCENES["train"]:
        descs = [o.describe() for o in scene.objects]
        assert len(descs) == len(set(descs))
        assert len(scene.of_kind("small")) == 1
        assert len(scene.of_kind("box")) == 1 and 3 <= len(scene.of_kind("large")) <= 10
        assert min(o.side for o in scene.of_kind("large")) >= 2 * max(o.side for o in scene.objects
                                                                       if o.kind != "large")


# ------------------------------------------------------------------------------------------------
# Files


def test_write_split_llava_format(tmp_path):
    path = write_split(tmp_path, "val", 3)
    assert path == tmp_path / "val.jsonl"
    pngs = sorted((tmp_path / "images" / "val").glob("*.png"))
    assert [p.name for p in pngs] == ["000000.png", "000001.png", "000002.png"]
    assert Image.open(pngs[0]).size == (672, 672)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    expected = [q for i in range(3) for q in make_sample("val", i)[1]]
    assert len(records) == len(expected)
    for rec, q in zip(records, expected):
        split, index, qn = rec["id"].split("-")
        assert split == "val" and rec["image"] == f"images/val/{int(index):06d}.png"
        assert (tmp_path / rec["image"]).is_file()
        human, gpt = rec["conversations"]
        assert human == {"from": "human", "value": "<image>\n" + q["question"] + " Answer with one word."}
        assert gpt == {"from": "gpt", "value": q["answer"]}
        assert rec["kind"] == q["kind"] and rec["subtype"] == q["subtype"]
    assert len({r["id"] for r in records}) == len(records)
    # the project's own reader and label code accept the records
    from infllava.data.records import load_records, to_messages

    loaded, problems = load_records(path)
    assert problems == [] and len(loaded) == len(records)
    for rec in loaded:
        to_messages(rec)  # raises SampleError on a malformed record


def test_write_split_all_questions_per_record(tmp_path):
    one = write_split(tmp_path / "one", "test", 2)
    allq = write_split(tmp_path / "all", "test", 2, questions_per_record="all")
    recs = [json.loads(line) for line in allq.read_text().splitlines()]
    assert len(recs) == 2 and recs[0]["id"] == "test-0"
    turns = recs[0]["conversations"]
    assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
    assert sum(t["value"].count("<image>") for t in turns) == 1
    flat_one = [(q["id"], q["answer"], q["kind"]) for q in iter_questions(one)]
    flat_all = [(q["id"], q["answer"], q["kind"]) for q in iter_questions(allq)]
    assert flat_one == flat_all
    assert all(not q["question"].endswith("one word.") and "<image>" not in q["question"]
               for q in iter_questions(one))
    with pytest.raises(ValueError):
        write_split(tmp_path, "test", 1, questions_per_record="some")


def test_main_writes_splits(tmp_path, capsys):
    assert hrvqa_main([str(tmp_path), "--train", "2", "--val", "0", "--test", "1", "--size", "336"]) == 0
    assert (tmp_path / "train.jsonl").is_file() and (tmp_path / "test.jsonl").is_file()
    assert not (tmp_path / "val.jsonl").exists()
    assert Image.open(tmp_path / "images" / "test" / "000000.png").size == (336, 336)
    info = json.loads((tmp_path / "hrvqa.json").read_text())
    assert info["size"] == 336 and info["splits"]["train"]["images"] == 2
    assert "train: 2 images" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------
# Scoring


@pytest.mark.parametrize("text,expected", [
    ("Red", "red"), (" red. ", "red"), ("The red", "red"), ("a circle!", "circle"), ("Three", "3"),
    ("3.", "3"), ("YES", "yes"), ("an  Orange ", "orange"), ("the answer is two", "answer is 2"), ("", ""),
])
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


def test_score_per_kind_and_subtype():
    def rec(i, answer, kind, subtype):
        return {"id": f"test-{i}-0", "image": f"images/test/{i:06d}.png",
                "conversations": [{"from": "human", "value": "<image>\nQ? Answer with one word."},
                                  {"from": "gpt", "value": answer}],
                "kind": kind, "subtype": subtype}

    records = [rec(0, "red", "detail", "color"), rec(1, "7", "detail", "digit"),
               rec(2, "3", "global", "count"), rec(3, "yes", "global", "relation"),
               rec(4, "blue", "global", "largest")]
    preds = {"test-0-0": "Red.", "test-1-0": "1", "test-2-0": "three", "test-3-0": "Yes"}  # test-4 missing
    s = score(preds, records)
    assert (s["correct"], s["total"], s["missing"]) == (3, 5, 1)
    assert s["accuracy"] == pytest.approx(0.6)
    assert s["by_kind"]["detail"] == {"accuracy": 0.5, "correct": 1, "total": 2}
    assert s["by_kind"]["global"]["correct"] == 2 and s["by_kind"]["global"]["total"] == 3
    assert s["by_subtype"]["count"]["accuracy"] == 1.0 and s["by_subtype"]["largest"]["accuracy"] == 0.0


def test_score_from_written_file(tmp_path):
    path = write_split(tmp_path, "test", 2)
    items = list(iter_questions(path))
    perfect = score({q["id"]: q["answer"].upper() + "." for q in items}, path)
    assert perfect["accuracy"] == 1.0 and perfect["missing"] == 0
    assert sum(v["total"] for v in perfect["by_kind"].values()) == len(items)
    assert score({}, Path(path))["accuracy"] == 0.0


def test_captions_list_every_object_and_the_digit(tmp_path):
    for index in range(5):
        scene = make_scene("train", index)
        text = caption(scene)
        assert caption(make_scene("train", index)) == text  # deterministic
        for obj in scene.objects:
            assert (f"digit {obj.digit}" if obj.kind == "box" else obj.describe()) in text
        assert text.count(",") == len(scene.objects) - len({o.kind for o in scene.objects})
    path = write_captions(tmp_path, "train", 3)
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["image"] for r in recs] == [f"images/train/{i:06d}.png" for i in range(3)]
    assert recs[0]["conversations"][0]["value"] == "<image>"
    assert recs[0]["conversations"][1]["value"] == caption(make_scene("train", 0))


def test_every_subtype_adds_questions_to_the_same_scene(tmp_path):
    for index in range(12):
        base = make_scene("train", index)
        dense = make_scene("train", index, every_subtype=True)
        assert dense.objects == base.objects and dense.background_seed == base.background_seed
        assert dense.questions[: len(base.questions)] == base.questions  # the 2-4 drawn ones come first
        subtypes = [q["subtype"] for q in dense.questions]
        assert len(subtypes) == len(set(subtypes))
        # every subtype unless the scene has no qualifying pair for relation / higher
        assert set(DETAIL_SUBTYPES + ("count", "largest")) <= set(subtypes)
    path = write_split(tmp_path, "train", 3, questions_per_record="all", every_subtype=True)
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    assert [len(r["subtypes"]) for r in recs] == [len(make_scene("train", i, every_subtype=True).questions)
                                                  for i in range(3)]


def test_write_subtype_single_turn_records_of_the_asked_subtypes(tmp_path):
    src = write_split(tmp_path, "train", 4, questions_per_record="all", every_subtype=True)
    want = [q for q in iter_questions(src) if q["subtype"] in ("shape", "count")]
    n = write_subtype(src, ["shape", "count"], tmp_path / "sub" / "train_sc.jsonl")
    recs = [json.loads(line) for line in (tmp_path / "sub" / "train_sc.jsonl").read_text().splitlines()]
    assert n == len(recs) == len(want) == 8  # every subtype on every image: one shape + one count each
    for r, q in zip(recs, want):
        human, gpt = r["conversations"]
        assert human["value"].startswith("<image>\n") and human["value"].count("<image>") == 1
        assert (r["id"], r["image"], gpt["value"], r["subtype"]) == (q["id"], q["image"], q["answer"], q["subtype"])
    assert [q["id"] for q in iter_questions(tmp_path / "sub" / "train_sc.jsonl")] == [q["id"] for q in want]
    with pytest.raises(ValueError, match="unknown HR-VQA or mixture subtype"):
        write_subtype(src, "colour", tmp_path / "x.jsonl")
    one = write_split(tmp_path / "one", "test", 1)
    missing = {"color", "shape", "digit", "count", "relation", "higher", "largest"} - {
        q["subtype"] for q in iter_questions(one)}
    with pytest.raises(ValueError, match="no questions of subtype"):
        write_subtype(one, sorted(missing)[0], tmp_path / "y.jsonl")
