"""Disk cache of a frozen vision tower's outputs, keyed by the exact pixels of each crop.

Every stage of the recipe keeps the tower frozen, and the DCM feeds it the same crops of an image
each time the image is seen (every epoch, both stages, and across the view ablations: "full" sees the
local crops of "local", the global crops of "global" and the thumbnail of "thumbnail"). For a CNN
tower on a CPU the tower is half of a small model's step, so storing its outputs pays as soon as an
image comes back. A crop's key is a BLAKE2 hash of its float32 pixels (the preprocessing is
deterministic) together with a fingerprint of the tower (its config and a hash of its weights), so a
different tower, stage or weight file never reads another's features. Features are stored in the
tower's dtype, one safetensors file per crop, written to a temporary name and renamed into place, so
several training processes can share one cache directory and an interrupted write leaves no
half-written entry. A cached feature equals the recomputed one up to float rounding (batch
composition may change the convolution algorithm), and exactly so for an unchanged batch.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


_VOLATILE = {"dtype", "torch_dtype", "transformers_version", "_name_or_path", "architectures", "output_hidden_states",
             "return_dict", "use_cache"}


def tower_fingerprint(tower: torch.nn.Module, config: dict) -> str:
    """Hash of a tower's config and weights: the cache namespace. Bookkeeping keys of the config
    (dtype, versions, names) are left out: the weights' hash covers dtype, and a model saved and
    loaded again (stage 1 -> stage 2) keeps its namespace."""
    h = hashlib.blake2b(digest_size=12)
    config = {k: v for k, v in config.items() if k not in _VOLATILE}
    h.update(json.dumps(config, sort_keys=True, default=str).encode())
    for name, t in sorted(tower.state_dict().items()):
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(t.detach().cpu().contiguous().float().numpy().tobytes())
    return h.hexdigest()


class FeatureCache:
    """get_or_compute(crops (N, 3, S, S), compute) -> (N, T, d), computing only the crops not on disk."""

    def __init__(self, root: str | os.PathLike, fingerprint: str):
        self.dir = Path(root) / fingerprint
        self.dir.mkdir(parents=True, exist_ok=True)
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(crop: torch.Tensor) -> str:
        return hashlib.blake2b(crop.detach().cpu().contiguous().float().numpy().tobytes(), digest_size=16).hexdigest()

    def _path(self, key: str) -> Path:
        return self.dir / key[:2] / f"{key}.safetensors"

    def _read(self, key: str) -> torch.Tensor | None:
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            return load_file(str(path))["features"]
        except Exception:  # a damaged entry (disk trouble): recompute it and write it again
            return None

    def _write(self, key: str, features: torch.Tensor) -> None:
        path = self._path(key)
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        try:
            save_file({"features": features.detach().cpu().contiguous()}, str(tmp))
            os.replace(tmp, path)
        except OSError:  # a full disk costs only the caching, never the run
            tmp.unlink(missing_ok=True)

    def get_or_compute(self, crops: torch.Tensor, compute) -> torch.Tensor:
        keys = [self.key(c) for c in crops]
        found = [self._read(k) for k in keys]
        todo = [i for i, f in enumerate(found) if f is None]
        self.hits += len(keys) - len(todo)
        self.misses += len(todo)
        if todo:
            fresh = compute(crops[todo])
            for i, f in zip(todo, fresh):
                found[i] = f
                self._write(keys[i], f)
        device = crops.device
        return torch.stack([f.to(device) for f in found])


def attach_feature_cache(model, root: str | os.PathLike) -> FeatureCache:
    """Give `model.vision_tower` a FeatureCache under `root`, namespaced by the tower's fingerprint."""
    tower = model.vision_tower
    tower.feature_cache = FeatureCache(root, tower_fingerprint(tower, model.config.vision_config.to_dict()))
    return tower.feature_cache
