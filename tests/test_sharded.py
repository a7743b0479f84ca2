"""FSDP2 and DeepSpeed ZeRO-2/3 through `accelerate launch` with the shipped configs, on CPU (gloo, 2 processes).

Each sharded run is checked against one plain process on the same global batch (weights agree to float
summation order), against SIGKILL + resume (the same weights as the uninterrupted run), and against a resume
on another number of processes (FSDP: resumes; DeepSpeed: refused before any work). The final model is the
gathered full weights, which `infllava.load` reads.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import make_toy_dataset

pytest.importorskip("accelerate")

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny_cpu.yaml"
CONFIGS = ROOT / "configs" / "accelerate"
LAUNCHES = {"fsdp": "fsdp.yaml", "zero2": "deepspeed_zero2.yaml", "zero3": "deepspeed_zero3.yaml"}
STAGES = {
    "pretrain": ["train.stage=pretrain"],
    "finetune": ["train.stage=finetune"],
    "lora": ["train.stage=finetune", "train.lora.enabled=true", "train.lora.r=4", "train.lora.dropout=0"],
}
ENV = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", INFLLAVA_DEBUG="1")
_port = [29600 + os.getpid() % 300]

pytestmark = pytest.mark.slow


def _common(data: dict, stage: str, steps: int = 4, batch: int = 4) -> list[str]:
    path = data["caption" if stage == "pretrain" else "qa"]
    return [f"data.path={path}", f"data.images={path.parent}", f"train.max_steps={steps}", "train.save_every=2",
            f"train.global_batch_size={batch}", "train.micro_batch_size=1", "train.lr=1e-3", "data.max_length=1024",
            "train.warmup_ratio=0", *STAGES[stage]]


def _launch_cmd(launch: str, nproc: int, *overrides: str) -> list[str]:
    _port[0] += 1
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / LAUNCHES[launch]),
            "--num_processes", str(nproc), "--mixed_precision", "no", "--main_process_port", str(_port[0]),
            "-m", "infllava", "train", str(TINY), *overrides]


def _run(cmd, timeout=600) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return done


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "final" / "model.safetensors"))


def _max_diff(a, b) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    # "qa" has text-only records: a micro-batch without an image must not desynchronise the processes
    return {kind: make_toy_dataset(tmp_path_factory.mktemp(kind), n=16, kind=kind) for kind in ("caption", "qa")}


@pytest.fixture(scope="module")
def single(data, tmp_path_factory):
    """The plain one-process run of each stage (the reference)."""
    runs = {}

    def get(stage):
        if stage not in runs:
            out = tmp_path_factory.mktemp(f"one-{stage}")
            _run([sys.executable, "-m", "infllava", "train", str(TINY), *_common(data, stage),
                  f"train.output_dir={out}"])
            runs[stage] = _weights(out)
        return runs[stage]

    return get


@pytest.fixture(scope="module")
def sharded(data, tmp_path_factory):
    """Uninterrupted 2-process runs, by (launch, stage)."""
    runs = {}

    def get(launch, stage):
        if (launch, stage) not in runs:
            out = tmp_path_factory.mktemp(f"{launch}-{stage}")
            _run(_launch_cmd(launch, 2, *_common(data, stage), f"train.output_dir={out}"))
            runs[launch, stage] = out
        return runs[launch, stage]

    return get


@pytest.mark.parametrize("launch,stage", [("fsdp", "pretrain"), ("fsdp", "finetune"), ("fsdp", "lora"),
                                          ("zero2", "pretrain"), ("zero2", "finetune"),
                                          ("zero3", "finetune"), ("zero3", "lora")])
def test_two_sharded_processes_equal_one_process(single, sharded, launch, stage):
    run = sharded(launch, stage)
    log = (run / "train.log").read_text()
    assert '"processes": 2' in log
    layout = {"fsdp": "FSDP", "zero2": "DeepSpeed ZeRO-2", "zero3": "DeepSpeed ZeRO-3"}[launch]
    assert f'"layout": "{layout}"' in (sorted((run / "checkpoints").iterdir())[-1] / "state.json").read_text()
    moved = _max_diff(single(stage), _weights(run))
    assert moved <= 1e-5, moved  # the same updates up to float summation order


def _kill_at_checkpoint(cmd, out: Path, step: int) -> None:
    """Start `cmd` (slowed down), SIGKILL its whole process group once checkpoint `step` exists."""
    proc = subprocess.Popen(cmd, env=dict(ENV, INFLLAVA_TEST_STEP_DELAY="1.0"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 400
    target = out / "checkpoints" / f"step-{step:08d}"
    while time.time() < deadline and not target.exists() and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert target.exists()
    assert not (out / "final").exists()


@pytest.mark.parametrize("launch", ["fsdp", "zero2", "zero3"])
def test_sigkill_then_resume_equals_uninterrupted(data, sharded, tmp_path, launch):
    reference = sharded(launch, "finetune")
    out = tmp_path / "run"
    cmd = _launch_cmd(launch, 2, *_common(data, "finetune"), f"train.output_dir={out}")
    _kill_at_checkpoint(cmd, out, 2)
    resumed = _run(_launch_cmd(launch, 2, *_common(data, "finetune"), f"train.output_dir={out}"))
    assert "resumed from" in resumed.stdout + resumed.stderr
    assert _max_diff(_weights(reference), _weights(out)) == 0.0


def test_fsdp_checkpoint_of_two_processes_resumes_on_three(data, tmp_path):
    common = _common(data, "finetune", steps=4, batch=6)
    ref = tmp_path / "ref"
    _run(_launch_cmd("fsdp", 2, *common, f"train.output_dir={ref}"))
    out = tmp_path / "run"
    _kill_at_checkpoint(_launch_cmd("fsdp", 2, *common, f"train.output_dir={out}"), out, 2)
    resumed = _run(_launch_cmd("fsdp", 3, *common, f"train.output_dir={out}"))
    assert "resumed from" in resumed.stdout + resumed.stderr
    assert _max_diff(_weights(ref), _weights(out)) <= 1e-5


def test_deepspeed_checkpoint_refuses_another_process_count_before_any_work(data, sharded, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(sharded("zero2", "finetune") / "checkpoints", out / "checkpoints")
    cmd = _launch_cmd("zero2", 4, *_common(data, "finetune", steps=6), f"train.output_dir={out}")
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode != 0
    assert "partitions of 2 processes" in done.stderr and "--num_processes 2" in done.stderr
    assert not (out / "train.log").exists()  # refused before any work
    # a plain one-process run cannot resume it either
    plain = subprocess.run([sys.executable, "-m", "infllava", "train", str(TINY), *_common(data, "finetune", steps=6),
                            f"train.output_dir={out}"], env=ENV, capture_output=True, text=True, timeout=600)
    assert plain.returncode == 1 and "DeepSpeed ZeRO-2 launch" in plain.stderr


def test_sharded_final_model_loads_and_answers(sharded):
    import infllava

    model, processor = infllava.load(str(sharded("zero3", "finetune") / "final"))
    assert not any(p.numel() == 0 for p in model.parameters())  # gathered, not ZeRO-3 placeholders
    from PIL import Image

    text = infllava.answer(model, processor, Image.new("RGB", (64, 48), "red"), "What colour is it?",
                           max_new_tokens=3)
    assert isinstance(text, str)


def test_qlora_under_sharding_is_refused_before_any_work(data, tmp_path):
    out = tmp_path / "run"
    cmd = _launch_cmd("fsdp", 2, *_common(data, "lora"), "train.lora.quantization=nf4", f"train.output_dir={out}")
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode != 0
    assert "QLoRA) is not supported under FSDP" in done.stderr
    assert not (out / "train.log").exists()
