"""Training checkpoints: complete, atomic, the last K kept.

A checkpoint `OUTPUT/checkpoints/step-00000012/` holds every trainable weight (the DEM included),
the optimiser and scheduler states, the RNG states and the data position (`state.json`). It is
written into a hidden temporary folder and renamed into place only when complete, so a crash or a
full disk while writing leaves the previous checkpoint whole.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

WEIGHTS = "trainable.safetensors"


class CheckpointError(OSError):
    pass


def checkpoint_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    root = checkpoint_dir(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and (p / "state.json").exists()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def _write_files(tmp: Path, model, optimizer, scheduler, state: dict) -> None:
    save_file(trainable_state(model), str(tmp / WEIGHTS))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save({"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}, tmp / "rng.pt")
    (tmp / "state.json").write_text(json.dumps(state, indent=1))
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())


def save_checkpoint(output_dir, model, optimizer, scheduler, state: dict, keep_last: int) -> Path:
    """Write checkpoint `step-{state['step']}` atomically; drop all but the newest `keep_last`."""
    root = checkpoint_dir(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{state['step']:08d}"
    tmp = root / f".tmp-step-{state['step']:08d}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        _write_files(tmp, model, optimizer, scheduler, state)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        previous = list_checkpoints(output_dir)
        kept = f"the previous checkpoint {previous[-1]} is intact" if previous else "no earlier checkpoint exists"
        raise CheckpointError(f"could not write checkpoint {final} ({e.strerror or e}); {kept}") from e
    for old in list_checkpoints(output_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: str | Path, model, optimizer, scheduler) -> dict:
    """Restore weights, optimiser, scheduler and RNG states; returns state.json's content."""
    path = Path(path)
    if not (path / "state.json").exists():
        raise CheckpointError(f"{path} is not a complete checkpoint (no state.json)")
    weights = load_file(str(path / WEIGHTS))
    params = dict(model.named_parameters())
    for name, value in weights.items():
        if name not in params:
            raise CheckpointError(f"{path}: weight {name} does not exist in the model being trained")
        with torch.no_grad():
            params[name].copy_(value)
    missing = [n for n, p in params.items() if p.requires_grad and n not in weights]
    if missing:
        raise CheckpointError(f"{path}: no saved value for trainable weight(s) {missing[:5]}")
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    rng = torch.load(path / "rng.pt", weights_only=False)  # our own file: python/numpy RNG tuples
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    if rng.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return json.loads((path / "state.json").read_text())


def save_sharded_checkpoint(acc, output_dir, state: dict, keep_last: int) -> Path:
    """FSDP / DeepSpeed: every process writes its shards through `accelerator.save_state` into the
    temporary folder; the main process adds state.json and renames it into place."""
    root = checkpoint_dir(output_dir)
    final = root / f"step-{state['step']:08d}"
    tmp = root / f".tmp-step-{state['step']:08d}"
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    acc.wait_for_everyone()
    try:
        acc.save_state(str(tmp / "accelerate"))
        acc.wait_for_everyone()
        if acc.is_main_process:
            (tmp / "state.json").write_text(json.dumps(state, indent=1))
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            for old in list_checkpoints(output_dir)[:-keep_last]:
                shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"could not write checkpoint {final} ({e.strerror or e})") from e
    return final
