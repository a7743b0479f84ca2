#!/usr/bin/env bash
# Train and evaluate one INF-LLaVA-mini variant on the HR-VQA benchmark, from a fixed seed.
#   scripts/train_mini.sh [full|thumbnail|local|global]
# Budget knobs (same for every variant of a comparison): S1_STEPS, S2_STEPS (optimiser steps of 8
# samples), EVAL_LIMIT (questions of the test split; default all). Outputs: runs/mini-VIEWS/.
set -euo pipefail
cd "$(dirname "$0")/.."
VIEWS="${1:-full}"
S1="${S1_STEPS:-20}"; S2="${S2_STEPS:-80}"
BIN=".venv/bin"
DATA=".cache/hrvqa"
RUN="runs/mini-$VIEWS"
[ -f "$DATA/test.jsonl" ] || "$BIN/infllava" hrvqa "$DATA" --train 2000 --val 100 --test 340 --train-format all
"$BIN/infllava" train configs/mini/pretrain.yaml "model.views=$VIEWS" "train.output_dir=$RUN/stage1" "train.max_steps=$S1"
"$BIN/infllava" train configs/mini/finetune.yaml "model.base=$RUN/stage1/final" "train.output_dir=$RUN/stage2" "train.max_steps=$S2"
"$BIN/python" -c "from infllava.parts import export_parts; export_parts('$RUN/stage2/final', '$RUN/parts')"
"$BIN/infllava" eval "$RUN/parts" --data "$DATA/test.jsonl" --images "$DATA" --out "$RUN/test_scores.json" \
  ${EVAL_LIMIT:+--limit "$EVAL_LIMIT"}
