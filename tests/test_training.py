"""Training: configs, stages, the loop, checkpoints (atomic, resumable after SIGKILL), distributed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import make_toy_dataset, paired_models
from infllava import InfLlavaForConditionalGeneration
from infllava_cli import main as cli_main
from infllava.training import checkpoint as ckpt_mod
from infllava.training.build import apply_stage, build_model
from infllava.training.config import ConfigError, load_config
from infllava.training.trainer import train

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny_cpu.yaml"


def cfg_for(tmp_path, *overrides, kind="caption", n=16, extra=None):
    data = make_toy_dataset(tmp_path / "data", n=n, kind=kind, extra=extra)
    return load_config(TINY, [f"data.path={data}", f"data.images={data.parent}",
                              f"train.output_dir={tmp_path / 'run'}", *overrides])


# ---------------------------------------------------------------- config
def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="train.learning_rate"):
        load_config(TINY, ["train.learning_rate=1e-3"])
    with pytest.raises(ConfigError, match="train.max_steps: expected an integer"):
        load_config(TINY, ["train.max_steps=lots"])
    with pytest.raises(ConfigError, match="train.stage: must be one of"):
        load_config(TINY, ["train.stage=stage3"])
    with pytest.raises(ConfigError, match="override"):
        load_config(TINY, ["train.lr"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  preset: tiny\n  colour: red\n")
    with pytest.raises(ConfigError, match="model.colour"):
        load_config(bad)
    assert cli_main(["train", str(bad)]) == 2


def test_config_overrides_and_scientific_notation():
    cfg = load_config(TINY, ["train.lr=2e-5", "train.lora.r=8", "data.max_length=64", "data.path=x.jsonl"])
    assert cfg.train.lr == 2e-5 and cfg.train.lora.r == 8 and cfg.data.max_length == 64


def test_shipped_configs_parse():
    for name in ("pretrain.yaml", "finetune.yaml", "finetune_lora.yaml"):
        cfg = load_config(ROOT / "configs" / name)
        assert cfg.train.global_batch_size in (256, 128)
    assert load_config(ROOT / "configs" / "pretrain.yaml").train.lr == 1e-3
    assert load_config(ROOT / "configs" / "finetune.yaml").train.lr == 2e-5


def test_mini_stage_configs_build_the_same_model():
    """configs/mini: stage 1 loads the align stage's adapter (scripts/train_mini.sh), so both must
    build the same model (tower, stage, DEM downsampling, LM); stage 2 inherits its base's model."""
    align, pre = (load_config(ROOT / "configs" / "mini" / n) for n in ("align.yaml", "pretrain.yaml"))
    for key in ("vision_tower", "vision_stage", "language_model", "views", "dem_downsample", "dem_local_residual",
                "grid", "thumbnail_merge", "projector_type", "projector_input_norm"):
        assert getattr(align.model, key) == getattr(pre.model, key), key
    assert load_config(ROOT / "configs" / "mini" / "finetune.yaml").model.base


# ---------------------------------------------------------------- stages
@pytest.mark.parametrize("stage, lora", [("pretrain", False), ("finetune", False), ("finetune", True)])
def test_stage_freezing(tmp_path, stage, lora):
    cfg = load_config(TINY, ["data.path=x", f"train.stage={stage}", f"train.lora.enabled={str(lora).lower()}"])
    model, _, _ = build_model(cfg)
    apply_stage(model, cfg)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert not any(n.startswith("vision_tower.") for n in trainable)
    assert any(n.startswith("model.dem.") for n in trainable) and any(n.startswith("model.projector.") for n in trainable)
    lm = {n for n in trainable if n.startswith(("model.language_model.", "lm_head."))}
    if stage == "pretrain":
        assert not lm
    elif lora:
        assert lm and all("lora_" in n for n in lm)
    else:
        assert lm == {n for n, _ in model.named_parameters() if n.startswith(("model.language_model.", "lm_head."))}


def test_freeze_mm_trains_only_the_lm(tmp_path):
    cfg = load_config(TINY, ["data.path=x", "train.stage=finetune", "train.lora.enabled=true", "train.freeze_mm=true"])
    model, _, _ = build_model(cfg)
    apply_stage(model, cfg)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("model.language_model.") and "lora_" in n for n in trainable)
    with pytest.raises(ConfigError, match="freeze_mm"):
        load_config(TINY, ["data.path=x", "train.stage=pretrain", "train.freeze_mm=true"])


def test_tower_runs_without_gradients():
    cfg = load_config(TINY, ["data.path=x"])
    model, _, _ = build_model(cfg)
    apply_stage(model, cfg)
    c = model.config
    feats = model.vision_tower(torch.randn(2, 3, c.tower_image_size, c.tower_image_size))
    assert not feats.requires_grad


def test_training_loss_and_dem_gradients_match_official():
    """The reduced computation holds in training: same LM loss and DEM/projector gradients."""
    ref, ours, cfg = paired_models(seed=5)
    px = torch.randn(1, 3, *cfg.input_size)
    pre, post = [1, 20, 30], [40, 41, 42, 2]
    ids = torch.tensor([pre + [cfg.image_token_id] * cfg.num_image_tokens + post])
    labels = ids.clone()
    labels[:, : len(pre) + cfg.num_image_tokens] = -100
    ref_logits = ref.logits(pre + [-200] + post, px)
    ref_loss = torch.nn.functional.cross_entropy(ref_logits[0, :-1], labels[0, 1:], ignore_index=-100)
    our_loss = ours(input_ids=ids, pixel_values=px, labels=labels).loss
    assert abs(ref_loss.item() - our_loss.item()) <= 1e-5
    ref_loss.backward()
    our_loss.backward()
    for r, o in [(ref.spatial_embed.attention.linears[2].weight, ours.dem.attn.v_proj.weight),
                 (ref.spatial_embed.ffn_stride[0].weight, ours.dem.ffn_global.fc1.weight),
                 (ref.spatial_embed.ln_fuse.bias, ours.dem.fuse_norm.bias),
                 (ref.mm_projector[2].weight, ours.projector.layers[2].weight)]:
        assert (r.grad - o.grad).abs().max() <= 1e-5 * max(1.0, r.grad.abs().max().item())


# ---------------------------------------------------------------- the loop
def test_pretrain_then_finetune_then_chat(tmp_path, capsys):
    cfg = cfg_for(tmp_path, "train.max_steps=4")
    final = train(cfg)
    model = InfLlavaForConditionalGeneration.from_pretrained(final)
    log = [json.loads(line) for line in (tmp_path / "run" / "train.log").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert len(losses) == 4 and all(l == l for l in losses)  # finite, logged every step
    adapter = load_file(str(final / "adapter.safetensors"))
    assert set(adapter) == {k for k in model.model.state_dict() if k.startswith(("dem.", "projector."))}
    # stage 2 starts from stage 1's output
    cfg2 = cfg_for(tmp_path / "s2", "train.max_steps=2", "train.stage=finetune", "train.lr=1e-4",
                   kind="qa", n=16)
    cfg2.model.preset, cfg2.model.base = None, str(final)
    m2, _, _ = build_model(cfg2)
    assert torch.equal(m2.dem.fuse_norm.weight, model.dem.fuse_norm.weight)
    final2 = train(cfg2)
    from PIL import Image

    Image.new("RGB", (20, 20), (200, 0, 0)).save(tmp_path / "red.png")
    assert cli_main(["chat", str(final2), "--image", str(tmp_path / "red.png"), "colour?",
                     "--max-new-tokens", "3"]) == 0


def test_finetune_with_frozen_mm_keeps_the_adapter(tmp_path):
    base = train(cfg_for(tmp_path, "train.max_steps=1"))
    cfg = cfg_for(tmp_path / "s2", "train.max_steps=2", "train.stage=finetune", "train.freeze_mm=true",
                  "train.lora.enabled=true", "train.lr=1e-2", kind="qa")
    cfg.model.preset, cfg.model.base = None, str(base)
    final = train(cfg)
    a, b = load_file(str(base / "adapter.safetensors")), load_file(str(final / "adapter.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    lora = load_file(str(final / "lora.safetensors"))
    assert any(k.endswith("lora_B") and v.abs().max() > 0 for k, v in lora.items())  # the LM did train


def test_official_mm_projector_bin_initialises_stage_2(tmp_path):
    ref, _, cfg = paired_models(seed=1)
    sd = {k: v for k, v in ref.official_state_dict(include_tower=False).items()
          if k.startswith(("model.mm_projector.", "model.spatial_embed."))}
    torch.save(sd, tmp_path / "mm_projector.bin")
    run = load_config(TINY, ["data.path=x", "train.stage=finetune", f"model.adapter={tmp_path / 'mm_projector.bin'}",
                             "model.dem_num_heads=4"])
    model, _, _ = build_model(run)
    assert torch.equal(model.dem.attn.q_proj.weight, ref.spatial_embed.attention.linears[0].weight)
    assert torch.equal(model.projector.layers[2].bias, ref.mm_projector[2].bias)


def test_bad_samples_are_skipped_counted_and_logged(tmp_path):
    bad = [
        {"id": "missing", "image": "images/none.png",
         "conversations": [{"from": "human", "value": "<image>\nx"}, {"from": "gpt", "value": "y"}]},
        {"id": "twice", "conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"}]},
        {"id": "empty", "conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": " "}]},
    ]
    cfg = cfg_for(tmp_path, "train.max_steps=4", n=13, extra=bad)
    (tmp_path / "data" / "data.jsonl").open("a").write("{not json\n")
    train(cfg)
    log = [json.loads(line) for line in (tmp_path / "run" / "train.log").read_text().splitlines()]
    skipped = {r["id"] for r in log if r.get("event") == "skip"}
    assert {"missing", "twice", "empty"} <= skipped
    state = json.loads(sorted((tmp_path / "run" / "checkpoints").iterdir())[-1].joinpath("state.json").read_text())
    assert state["skipped"] >= 3


def test_full_disk_keeps_previous_checkpoint(tmp_path, monkeypatch):
    cfg = cfg_for(tmp_path, "train.max_steps=4", "train.save_every=2")
    real = ckpt_mod._write_files
    calls = []

    def flaky(tmp, *a, **k):
        calls.append(tmp)
        if len(calls) == 2:
            real(tmp, *a, **k)
            raise OSError(28, "No space left on device")
        return real(tmp, *a, **k)

    monkeypatch.setattr(ckpt_mod, "_write_files", flaky)
    with pytest.raises(ckpt_mod.CheckpointError, match="No space left.*step-00000002 is intact"):
        train(cfg)
    found = ckpt_mod.list_checkpoints(tmp_path / "run")
    assert [p.name for p in found] == ["step-00000002"]
    assert not any(p.name.startswith(".tmp") for p in (tmp_path / "run" / "checkpoints").iterdir())
    monkeypatch.setattr(ckpt_mod, "_write_files", real)
    train(cfg)  # resumes from step 2 and finishes
    assert ckpt_mod.list_checkpoints(tmp_path / "run")[-1].name == "step-00000004"


def test_keep_last(tmp_path):
    cfg = cfg_for(tmp_path, "train.max_steps=6", "train.save_every=1", "train.keep_last=2")
    train(cfg)
    assert [p.name for p in ckpt_mod.list_checkpoints(tmp_path / "run")] == ["step-00000005", "step-00000006"]


def test_feature_cache_gives_the_same_training(tmp_path):
    """2 epochs over 8 samples: epoch 2 reads every crop from the cache; weights match the uncached run."""
    common = ["train.epochs=2", "train.save_every=0", "train.global_batch_size=4", "train.micro_batch_size=4"]
    plain = train(cfg_for(tmp_path / "a", *common, n=8))
    cached = train(cfg_for(tmp_path / "b", *common, f"train.feature_cache={tmp_path / 'fc'}", n=8))
    log = [json.loads(x) for x in (tmp_path / "b" / "run" / "train.log").read_text().splitlines()]
    last = [r for r in log if "step" in r][-1]
    assert last["feature_cache_hits"] >= last["feature_cache_misses"] > 0
    a, b = load_file(str(plain / "adapter.safetensors")), load_file(str(cached / "adapter.safetensors"))
    assert a.keys() == b.keys() and all((a[k] - b[k]).abs().max() < 1e-5 for k in a)


def test_projector_lr_sets_the_multimodal_modules_lr(tmp_path):
    common = ["train.max_steps=2", "train.save_every=0", "train.warmup_ratio=0", "train.stage=finetune"]
    slow_mm = train(cfg_for(tmp_path / "a", *common, "train.lr=1e-2", "train.projector_lr=1e-12"))
    all_slow = train(cfg_for(tmp_path / "b", *common, "train.lr=1e-12"))
    fast = train(cfg_for(tmp_path / "c", *common, "train.lr=1e-2"))
    a, b, c = (load_file(str(d / "adapter.safetensors")) for d in (slow_mm, all_slow, fast))
    assert max((a[k] - b[k]).abs().max() for k in a) < 1e-6  # DEM + projector barely moved at 1e-12
    assert max((c[k] - b[k]).abs().max() for k in c) > 1e-3
    lm = [k for k in load_file(str(slow_mm / "model.safetensors")) if k.startswith("model.language_model.")][:1]
    wa, wb = (load_file(str(d / "model.safetensors"))[lm[0]] for d in (slow_mm, all_slow))
    assert (wa - wb).abs().max() > 1e-4  # the LM still trained at train.lr


# ---------------------------------------------------------------- processes
def _train_cmd(cfg_path, *overrides, nproc=1):
    if nproc == 1:
        return [sys.executable, "-m", "infllava", "train", str(cfg_path), *overrides]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
            str(29500 + os.getpid() % 1000), "-m", "infllava", "train", str(cfg_path), *overrides]


def _final_weights(run_dir):
    return load_file(str(ckpt_mod.list_checkpoints(run_dir)[-1] / ckpt_mod.WEIGHTS))


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    data = make_toy_dataset(tmp_path / "data", n=16)
    common = [f"data.path={data}", f"data.images={data.parent}", "train.max_steps=8", "train.save_every=2"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    subprocess.run(_train_cmd(TINY, *common, f"train.output_dir={tmp_path / 'a'}"), check=True, env=env,
                   capture_output=True, timeout=600)
    # the same run, killed with SIGKILL once checkpoint step 4 exists, then resumed
    b = tmp_path / "b"
    slow = _train_cmd(TINY, *common, f"train.output_dir={b}")
    proc = subprocess.Popen(slow, env=dict(env, INFLLAVA_TEST_STEP_DELAY="0.5"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not (b / "checkpoints" / "step-00000004").exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = [p.name for p in ckpt_mod.list_checkpoints(b)]
    assert "step-00000004" in done and "step-00000008" not in done
    subprocess.run(slow, check=True, env=env, capture_output=True, timeout=600)
    wa, wb = _final_weights(tmp_path / "a"), _final_weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


@pytest.mark.slow
def test_two_processes_equal_one_process(tmp_path):
    data = make_toy_dataset(tmp_path / "data", n=16, kind="qa")
    common = [f"data.path={data}", f"data.images={data.parent}", "train.max_steps=3", "train.global_batch_size=4",
              "train.micro_batch_size=1", "train.stage=finetune", "train.lr=1e-3", "data.max_length=1024"]
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    one = subprocess.run(_train_cmd(TINY, *common, f"train.output_dir={tmp_path / 'one'}"), env=env,
                         capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run(_train_cmd(TINY, *common, f"train.output_dir={tmp_path / 'two'}", nproc=2), env=env,
                         capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    assert '"processes": 2' in (tmp_path / "two" / "train.log").read_text()
    steps = [line for line in (tmp_path / "two" / "train.log").read_text().splitlines() if '"step"' in line]
    assert '"skipped_total": 0' in steps[-1]
    w1, w2 = _final_weights(tmp_path / "one"), _final_weights(tmp_path / "two")
    moved = max((w1[k] - w2[k]).abs().max().item() for k in w1)
    assert moved <= 1e-5, moved  # same updates up to float summation order


@pytest.mark.slow
def test_ctrl_c_saves_and_stops(tmp_path):
    data = make_toy_dataset(tmp_path / "data", n=16)
    out = tmp_path / "run"
    cmd = _train_cmd(TINY, f"data.path={data}", f"data.images={data.parent}", "train.max_steps=1000",
                     "train.save_every=0", f"train.output_dir={out}")
    proc = subprocess.Popen(cmd, env=dict(os.environ, INFLLAVA_TEST_STEP_DELAY="0.2"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    log = out / "train.log"
    while time.time() < deadline and not (log.exists() and '"step": 2' in log.read_text()):
        time.sleep(0.05)  # the loop is running (and its Ctrl-C handler installed)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, output[-2000:]
    found = ckpt_mod.list_checkpoints(out)
    assert found and json.loads((found[-1] / "state.json").read_text())["step"] < 1000


def test_resume_refuses_a_different_configuration(tmp_path):
    cfg = cfg_for(tmp_path, "train.max_steps=2")
    train(cfg)
    changed = cfg_for(tmp_path, "train.max_steps=4", "train.lr=5e-4")
    with pytest.raises(ConfigError, match="train.lr"):
        train(changed)
    longer = cfg_for(tmp_path, "train.max_steps=4")  # extending a run is allowed
    train(longer)
    assert ckpt_mod.list_checkpoints(tmp_path / "run")[-1].name == "step-00000004"


def test_bf16_and_gradient_checkpointing_finetune(tmp_path):
    cfg = cfg_for(tmp_path, "train.max_steps=2", "train.stage=finetune", "train.precision=bf16",
                  "train.gradient_checkpointing=true", "train.lr=1e-4")
    final = train(cfg)
    log = [json.loads(line) for line in (tmp_path / "run" / "train.log").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert len(losses) == 2 and all(0 < l < 100 for l in losses)
    assert (final / "model.safetensors").exists()
