"""CI smoke version of the INF-LLaVA-mini recipe: scripts/train_mini.sh end to end (benchmark
generation, align stage, stage 1, curriculum, stage 2 with LoRA, parts export, `infllava eval`) on 8 + 2 images,
then scripts/train_mini_broad.sh (the simple-scene mixture, stage 3, three evaluations), 1 epoch / step each."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import infllava
from infllava.parts import is_parts_dir

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_train_mini_script_smoke(tmp_path):
    env = dict(os.environ, BIN=str(Path(sys.executable).parent), DATA=str(tmp_path / "hrvqa"), RUNS=str(tmp_path / "runs"),
               TRAIN_IMAGES="8", TEST_IMAGES="2", S0_EPOCHS="1", S1_STEPS="1", S2_STEPS="1", S2_CURRICULUM="shape color", S2_CURRICULUM_STEPS="1", S2_FREEZE_MM="1", MODEL_ARGS="model.vision_stage=8 model.dem_downsample=maxpool",
               FEATURE_CACHE=str(tmp_path / "fc"), ALIGN_MIXTURE="1", MIXTURE_IMAGES="4", MIXTURE_VAL="1", GENERALISE="1")
    done = subprocess.run(["bash", str(ROOT / "scripts" / "train_mini.sh"), "full"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    broad = dict(env, REPLAY_IMAGES="4", S3_STEPS="1",
                 S3_CURRICULUM="color,shape", S3_CURRICULUM_STEPS="1")
    done = subprocess.run(["bash", str(ROOT / "scripts" / "train_mini_broad.sh"), "full"], env=broad, cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "runs" / "mini-full"
    for stage in ("stage0", "stage1", "stage2"):
        log = [json.loads(line) for line in (run / stage / "train.log").read_text().splitlines()]
        assert log[0]["config"]["model"]["views"] == "full" or stage == "stage2"
        assert log[0]["config"]["train"]["stage"] == {"stage0": "align", "stage1": "pretrain", "stage2": "finetune"}[stage]
        assert any(r.get("step") == 1 for r in log), f"{stage} did not log its step"
    # ALIGN_MIXTURE: the align stage reads HR-VQA's 8 caption records and the mixture's 4 (covering regions)
    log0 = [json.loads(line) for line in (run / "stage0" / "train.log").read_text().splitlines()]
    align_data = Path(log0[0]["config"]["data"]["path"])
    assert align_data == run / "align_captions.jsonl"
    captions = [json.loads(line) for line in align_data.read_text().splitlines()]
    assert len(captions) == 12 and sum(r["id"].startswith("mixture-train-") for r in captions) == 4
    assert any(reg.get("cover") for r in captions[8:] for reg in r["regions"])
    # S2_STEPS=0: no stage 2; the finished stages are not rerun and the model to continue from is named
    again = subprocess.run(["bash", str(ROOT / "scripts" / "train_mini.sh"), "full"], env=dict(env, S2_STEPS="0"),
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and f"BASE={run / 'stage2-color' / 'final'}" in again.stdout, again.stderr[-2000:]
    # stage 1 starts from the align stage's adapter
    log1 = [json.loads(line) for line in (run / "stage1" / "train.log").read_text().splitlines()]
    assert log1[0]["config"]["model"]["adapter"] == str(run / "stage0" / "final")
    # stage 2 sees stage 1's 8 images again: their crops come from the feature cache
    assert [r for r in log if "step" in r][-1]["feature_cache_hits"] > 0
    assert is_parts_dir(run / "parts") and is_parts_dir(run / "parts-broad")
    # over the packaged backbones every stage's final/ holds its parts only, and the next stage builds on it
    for stage in ("stage0", "stage1", "stage2-shape", "stage2-color", "stage2", "stage3-color,shape", "stage3"):
        assert is_parts_dir(run / stage / "final") and not (run / stage / "final" / "model.safetensors").exists()
    # the curriculum: the shape questions alone (single-turn), then shape + colour, then stage 2 from that
    for name, subtypes in (("shape", {"shape"}), ("color", {"shape", "color"})):
        cur = [json.loads(line) for line in (run / "curriculum" / f"train_{name}.jsonl").read_text().splitlines()]
        assert len(cur) == 8 * len(subtypes) and {r["subtype"] for r in cur} == subtypes
        assert all(len(r["conversations"]) == 2 for r in cur)
    logc = [json.loads(line) for line in (run / "stage2-color" / "train.log").read_text().splitlines()]
    assert logc[0]["config"]["model"]["base"] == str(run / "stage2-shape" / "final")
    assert log[0]["config"]["model"]["base"] == str(run / "stage2-color" / "final")
    # each LoRA run keeps its bases' deltas: stage 2 holds 3 runs' (rank 8 x 3), stage 3 5 (rank 40)
    assert json.loads((run / "parts" / "parts.json").read_text())["lora"]["r"] == 24
    assert json.loads((run / "parts-broad" / "parts.json").read_text())["lora"]["r"] == 40
    # the broadening curriculum: mixture colour + shape with HR-VQA's shape + colour (further entries add types
    # the same way: train_mini.sh's curriculum loop)
    n_keep = 8 * 2  # HR-VQA: one shape and one colour question per train image
    base = run / "stage2"
    for name, subtypes in (("color,shape", {"color", "shape"}),):
        cur = [json.loads(line) for line in (run / "curriculum-broad" / f"train_{name}.jsonl").read_text().splitlines()]
        simple = [r for r in cur if r["kind"] == "simple"]
        assert len(cur) - len(simple) == n_keep and {r["subtype"] for r in simple} == subtypes
        assert all(len(r["conversations"]) == 2 for r in cur)
        logk = [json.loads(line) for line in (run / f"stage3-{name}" / "train.log").read_text().splitlines()]
        assert logk[0]["config"]["model"]["base"] == str(base / "final")
        base = run / f"stage3-{name}"
    # the mixed broadening stage: from the curriculum's output, on 4 HR-VQA train records + the 4 mixture images' records
    log3 = [json.loads(line) for line in (run / "stage3" / "train.log").read_text().splitlines()]
    assert log3[0]["config"]["model"]["base"] == str(base / "final") and any(r.get("step") == 1 for r in log3)
    assert log[0]["config"]["train"]["freeze_mm"] and not log3[0]["config"]["train"]["freeze_mm"]
    mixed = [json.loads(line) for line in (run / "broad" / "train.jsonl").read_text().splitlines()]
    assert [r["id"] for r in mixed] == [f"train-{i}" for i in range(4)] + [f"mixture-train-{i}" for i in range(4)]
    for name, split in (("broad_val_scores.json", "mixture-val"), ("broad_generalise_scores.json", "generalise")):
        scores = json.loads((run / name).read_text())["scores"]
        assert scores["missing"] == 0 and scores["total"] == sum(1 for _ in open(tmp_path / "hrvqa" / f"{split}.jsonl"))
        assert set(scores["by_kind"]) == {"simple"}
    # HR-VQA's files stay as train_mini.sh wrote them beside the mixture
    assert json.loads((tmp_path / "hrvqa" / "mixture.json").read_text())["splits"]["mixture-train"]["images"] == 4
    info = json.loads((tmp_path / "hrvqa" / "hrvqa.json").read_text())
    from infllava.evaluation.hrvqa.scenes import HRVQA_VERSION

    assert info["version"] == HRVQA_VERSION and info["train_every_subtype"]  # the data the recipe trains on
    n_test = sum(1 for _ in open(tmp_path / "hrvqa" / "test.jsonl"))
    for name in ("test_scores.json", "broad_test_scores.json"):
        scores = json.loads((run / name).read_text())["scores"]
        assert scores["total"] == n_test and scores["missing"] == 0
        assert set(scores["by_kind"]) <= {"detail", "global"}
    assert json.loads((run / "broad_test_scores.json").read_text())["scores"]["model"] == str(run / "parts-broad")
    model, processor = infllava.load(run / "parts", device="cpu")
    # MODEL_ARGS reach the first stage, and the model they fix carries through to the parts
    assert model.config.views == "full" and model.config.dem_downsample == "maxpool" and model.config.vision_config.stage == 8
    # a continuation of the broadened model: one rebalanced curriculum stage (S3_NEW_SHARE), no mixed stage
    # (S3_STEPS=0: the curriculum stage is what is exported)
    cont = dict(broad, RUNS=str(tmp_path / "cont"), BASE=str(run / "stage3" / "final"), S3_SEEN="color,shape",
                S3_CURRICULUM="presence", S3_NEW_SHARE="0.5", S3_STEPS="0", GENERALISE_EVAL="0", READ_STEPS="1 1",
                READ_PRESENCE="2")
    done = subprocess.run(["bash", str(ROOT / "scripts" / "train_mini_broad.sh"), "full"], env=cont, cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    crun = tmp_path / "cont" / "mini-full"
    cur = [json.loads(line) for line in (crun / "curriculum-broad" / "train_presence.jsonl").read_text().splitlines()]
    n_new = sum(r["subtype"] == "presence" for r in cur)
    assert n_new == 4 and len(cur) == 2 * n_new  # half new, half kept (mixture colour + shape, HR-VQA shape + colour)
    assert {r["subtype"] for r in cur[n_new:]} <= {"color", "shape"}
    assert not (crun / "stage3").exists() and not (crun / "broad_generalise_scores.json").exists()
    # READ_STEPS="1 1": two reading rounds after the curriculum, multi-turn, DEM + projector frozen, seeds 0 and 1;
    # READ_PRESENCE="2": each mixture image asked up to 2 more presence questions first
    read = [json.loads(line) for line in (crun / "read" / "train-presence2.jsonl").read_text().splitlines()]
    assert len(read) == 12 and sum(r["id"].startswith("mixture-train-") for r in read) == 4  # 8 HR-VQA + 4 mixture images
    assert all(r["subtypes"][0] == "presence" and r["subtypes"].count("presence") >= 2
               for r in read if r["id"].startswith("mixture"))
    assert all(set(r["subtypes"]) <= {"shape", "color", "largest"} for r in read if not r["id"].startswith("mixture"))
    for k in (1, 2):
        cfg = json.loads((crun / f"stage4-{k}" / "train.log").read_text().splitlines()[0])["config"]
        assert cfg["train"]["freeze_mm"] is True and cfg["train"]["seed"] == k - 1
        assert cfg["model"]["base"] == str(crun / ("stage3-presence" if k == 1 else "stage4-1") / "final")
    assert json.loads((crun / "parts-broad" / "parts.json").read_text())["lora"]["r"] == 64  # 48 + two rounds of r 8
    assert json.loads((crun / "broad_val_scores.json").read_text())["scores"]["missing"] == 0
