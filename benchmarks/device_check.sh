#!/usr/bin/env bash
# One prepared GPU check (run through the device tool): the parity test suite on the host with the
# device's torch, then the vision-path benchmark on CUDA in fp32 and bf16. Results go to $OUT.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi -L
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
true
python3 benchmarks/vision_path.py --device cuda --layers 24 --repeats 5 2>&1 | tee $OUT/cuda_fp32_b1.txt
python3 benchmarks/vision_path.py --device cuda --layers 24 --repeats 5 --batch 8 --dtype bfloat16 2>&1 | tee $OUT/cuda_bf16_b8.txt
