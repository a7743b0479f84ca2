"""Memory per process of one training run launched four ways: 1 process, DDP x2, FSDP x2, ZeRO-3 x2 (and ZeRO-2 x2).

The same run each time: INF-LLaVA-mini (EfficientNet-Lite0 + SmolLM2-135M) fine-tuned in full (the whole LM,
DEM and projector trained, AdamW, float32) for `--steps` steps on toy question-answer data, on CPU (gloo).
The trainer logs what every process holds at the end (`"event": "memory"` in train.log): the weights as
stored there (a shard under FSDP / ZeRO-3), the optimiser's states and master copies, and the peak resident
memory of the training steps (Linux VmHWM, reset when the steps start). Resident memory also counts torch
itself, activations, gradients and communication buffers, so the held weights + optimiser figures are the
ones sharding divides. The largest figure over a launch's processes is shown.

    python benchmarks/train_memory.py [--steps 2] [--launches one ddp fsdp zero3 zero2] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from helpers import make_toy_dataset  # noqa: E402

LAUNCH = {"one": None, "ddp": "ddp.yaml", "fsdp": "fsdp.yaml", "zero2": "deepspeed_zero2.yaml",
          "zero3": "deepspeed_zero3.yaml"}


CONFIG = """model:
  base: inf-llava-mini
  template: chat_template
data:
  path: {data}
  images: {images}
  max_length: 512
train:
  stage: finetune
  max_steps: {steps}
  global_batch_size: 2
  micro_batch_size: 1
  lr: 1.0e-5
  save_every: 0
  precision: fp32
  lora:
    enabled: false
"""


def command(launch: str, config: Path, overrides: list[str], port: int) -> list[str]:
    train = ["-m", "infllava", "train", str(config), *overrides]
    if LAUNCH[launch] is None:
        return [sys.executable, *train]
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
            str(ROOT / "configs" / "accelerate" / LAUNCH[launch]), "--num_processes", "2", "--num_machines", "1",
            "--mixed_precision", "no", "--main_process_port", str(port), *train]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--launches", nargs="+", default=["one", "ddp", "fsdp", "zero3", "zero2"], choices=list(LAUNCH))
    ap.add_argument("--keep", help="keep the runs in this folder (default: a temporary one)")
    args = ap.parse_args()
    work = Path(args.keep or tempfile.mkdtemp(prefix="train-memory-"))
    data = make_toy_dataset(work / "data", n=16, kind="qa")
    config = work / "run.yaml"
    config.write_text(CONFIG.format(data=data, images=data.parent, steps=args.steps))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    print(f"# {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"INF-LLaVA-mini, LM trained in full, {args.steps} steps, float32")
    print("| launch | processes | weights held / process | optimiser / process | weights + optimiser | "
          "peak resident, training steps | wall |")
    print("|---|---|---|---|---|---|---|")
    for i, launch in enumerate(args.launches):
        out = work / launch
        t0 = time.perf_counter()
        done = subprocess.run(command(launch, config, [f"train.output_dir={out}"], 29700 + os.getpid() % 200 + i),
                              env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if done.returncode != 0:
            print(f"| {launch} | failed: {done.stderr.strip().splitlines()[-1][:200]} |", flush=True)
            continue
        events = [json.loads(x) for x in (out / "train.log").read_text().splitlines()]
        procs = [e for e in events if e.get("event") == "memory"][-1]["processes"]
        worst = max(procs, key=lambda p: p["params_mib"] + p["optimizer_mib"])
        print(f"| {launch} | {len(procs)} | {worst['params_mib']:.0f} MiB | {worst['optimizer_mib']:.0f} MiB | "
              f"{worst['params_mib'] + worst['optimizer_mib']:.0f} MiB | "
              f"{max(p['peak_rss_mib'] for p in procs):.0f} MiB | {wall:.0f} s |", flush=True)
    print(f"# runs in {work}")


if __name__ == "__main__":
    main()
