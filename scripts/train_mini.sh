#!/usr/bin/env bash
# Train and evaluate one INF-LLaVA-mini variant on the HR-VQA benchmark, from a fixed seed.
#   scripts/train_mini.sh [full|thumbnail|local|global]
# Budget knobs (the same for every variant of a comparison):
#   S0_EPOCHS (default 8; 0 = skip): the align stage, DEM + projector towards the LM's embeddings of
#     grounded phrases, no LM pass (configs/mini/align.yaml);
#   ALIGN_MIXTURE (default 0; 1 = on): adds the caption records of the simple-scene mixture's
#     MIXTURE_IMAGES (1000) train images, whose covering regions name every token of a large shape, to
#     the align stage's HR-VQA ones (the mixture is written to DATA if missing: scripts/mini_mixture.sh);
#     without it a large uniform shape reads as background (docs/inf-llava-mini.md);
#   S1_STEPS (default 0 = skip): stage 1, captions through the frozen LM;
#   S2_STEPS (default 40; 0 = skip, and no test score): stage 2, VQA with LoRA; steps of 8 images (7
#     questions each); the model to continue from is then the curriculum's last (or the align stage's);
#   S2_FREEZE_MM (default 0; 1 = on): stage 2 keeps DEM + projector as the earlier stage left them
#     and trains only the LM's LoRA (train.freeze_mm);
#   S2_CURRICULUM (default "shape color"; "" = off): question subtypes added one at a time before the
#     mixed stage 2: a LoRA stage 2 per entry, S2_CURRICULUM_STEPS (default 96) steps of 8 single-turn
#     questions of that subtype and the ones before it (stage2-shape/: shape; stage2-color/: shape +
#     colour; a type trained alone after another makes the LM forget the first, docs/inf-llava-mini.md), each from the
#     previous output; stage 2 starts from the last; the parts hold all their LoRA deltas (combine_lora);
#   S2_MORE_STEPS (default 0): continue stage 2 from its output for this many more steps (seed 1,
#     a fresh warmup + cosine schedule) into stage2b/, exported to parts-b/ (its lora.safetensors holds
#     stage 2's LoRA and its own, stacked: infllava.parts.combine_lora) and scored;
#   EVAL_LIMIT: questions of the test split (default all).
#   MODEL_ARGS: extra model overrides for the stages built from a config (align, stage 1; stage 2
#     inherits its base's model), e.g. "model.vision_stage=8 model.dem_downsample=maxpool"
#     (space-separated key=value). An adapter loaded under other weight-free choices is an error.
# The defaults reproduce the shipped model (HR-VQA v2, docs/inf-llava-mini.md).
# Data knobs (the CI smoke test shrinks them): DATA (default .cache/hrvqa), TRAIN_IMAGES (1200),
# TEST_IMAGES (340 images = 1035 questions), RUNS (default runs). Outputs: $RUNS/mini-VIEWS/.
# FEATURE_CACHE (default .cache/features; "" = off): the frozen tower's outputs per crop, shared by the
# stages and variants (the same numbers to float rounding, computed once).
set -euo pipefail
cd "$(dirname "$0")/.."
VIEWS="${1:-full}"
S0="${S0_EPOCHS:-8}"; S1="${S1_STEPS:-0}"; S2="${S2_STEPS:-40}"; S2B="${S2_MORE_STEPS:-0}"
FREEZE=(); [ "${S2_FREEZE_MM:-0}" = 1 ] && FREEZE=("train.freeze_mm=true")
BIN="${BIN:-.venv/bin}"
DATA="${DATA:-.cache/hrvqa}"
RUN="${RUNS:-runs}/mini-$VIEWS"
if [ "$S0" = 0 ] && [ "$S1" = 0 ]; then echo "train_mini.sh: S0_EPOCHS and S1_STEPS cannot both be 0" >&2; exit 2; fi
# (re)write the benchmark when it is missing or another generator version / size wrote it
HAVE=$("$BIN/python" -c "import json,sys; i=json.load(open(sys.argv[1])); print(i['version'], i['splits']['train']['images'], i['splits']['test']['images'], i.get('train_every_subtype', False))" "$DATA/hrvqa.json" 2>/dev/null || true)
WANT=$("$BIN/python" -c "from infllava.evaluation.hrvqa.scenes import HRVQA_VERSION as v; print(v, '${TRAIN_IMAGES:-1200}', '${TEST_IMAGES:-340}', True)")
if [ "$HAVE" != "$WANT" ]; then
  [ -z "$HAVE" ] || echo "train_mini.sh: $DATA holds HR-VQA ($HAVE), want ($WANT): rewriting it" >&2
  rm -rf "$DATA/images" "$DATA"/*.jsonl "$DATA/mixture.json"  # the mixture's images go too: rewritten when asked for
  "$BIN/infllava" hrvqa "$DATA" --train "${TRAIN_IMAGES:-1200}" --val 0 --test "${TEST_IMAGES:-340}" \
    --train-format all --train-every-subtype --captions
fi
FC="${FEATURE_CACHE-.cache/features}"
D=("data.images=$DATA" "train.feature_cache=$FC")
# a finished stage (final/ written) is not run again
BASE=""
ALIGN_DATA="$DATA/train_captions.jsonl"
if [ "$S0" != 0 ] && [ "${ALIGN_MIXTURE:-0}" != 0 ]; then
  source scripts/mini_mixture.sh
  ensure_mixture "$DATA" 1
  mkdir -p "$RUN"
  ALIGN_DATA="$RUN/align_captions.jsonl"
  cat "$DATA/train_captions.jsonl" "$DATA/mixture-train_captions.jsonl" > "$ALIGN_DATA"
fi
if [ "$S0" != 0 ]; then
  [ -f "$RUN/stage0/final/config.json" ] || "$BIN/infllava" train configs/mini/align.yaml "${D[@]}" \
    "data.path=$ALIGN_DATA" "model.views=$VIEWS" "train.output_dir=$RUN/stage0" "train.epochs=$S0" \
    ${MODEL_ARGS:-}
  BASE="$RUN/stage0/final"
fi
if [ "$S1" != 0 ]; then
  [ -f "$RUN/stage1/final/config.json" ] || "$BIN/infllava" train configs/mini/pretrain.yaml "${D[@]}" \
    "data.path=$DATA/train_captions.jsonl" "model.views=$VIEWS" "train.output_dir=$RUN/stage1" "train.max_steps=$S1" \
    ${BASE:+"model.adapter=$BASE"} ${MODEL_ARGS:-}
  BASE="$RUN/stage1/final"
fi
SEEN=""
for ST in ${S2_CURRICULUM-shape color}; do  # question types added one at a time (single-turn records of those subtypes)
  SEEN="${SEEN:+$SEEN,}$ST"
  if [ ! -f "$RUN/stage2-$ST/final/config.json" ]; then
    "$BIN/python" -c "import sys; from infllava.evaluation.hrvqa.writing import write_subtype as w; w(sys.argv[1], sys.argv[2].split(','), sys.argv[3])" \
      "$DATA/train.jsonl" "$SEEN" "$RUN/curriculum/train_$ST.jsonl"
    "$BIN/infllava" train configs/mini/finetune.yaml "${D[@]}" "data.path=$RUN/curriculum/train_$ST.jsonl" \
      "model.base=$BASE" "train.output_dir=$RUN/stage2-$ST" "train.max_steps=${S2_CURRICULUM_STEPS:-96}" ${FREEZE[@]+"${FREEZE[@]}"}
  fi
  BASE="$RUN/stage2-$ST/final"
done
[ "$S2" = 0 ] && { echo "train_mini.sh: S2_STEPS=0: no stage 2; continue from $BASE (scripts/train_mini_broad.sh: BASE=$BASE)"; exit 0; }
[ -f "$RUN/stage2/final/config.json" ] || "$BIN/infllava" train configs/mini/finetune.yaml "${D[@]}" \
  "data.path=$DATA/train.jsonl" "model.base=$BASE" "train.output_dir=$RUN/stage2" "train.max_steps=$S2" ${FREEZE[@]+"${FREEZE[@]}"}
score() {  # export the parts of a stage-2 run and score them
  "$BIN/python" -c "from infllava.parts import export_parts; export_parts('$RUN/$1/final', '$RUN/$2')"
  [ -f "$RUN/$3" ] || "$BIN/infllava" eval "$RUN/$2" --data "$DATA/test.jsonl" --images "$DATA" \
    --out "$RUN/$3" ${EVAL_LIMIT:+--limit "$EVAL_LIMIT"} ${FC:+--feature-cache "$FC"}
}
score stage2 parts test_scores.json
if [ "$S2B" != 0 ]; then
  [ -f "$RUN/stage2b/final/config.json" ] || "$BIN/infllava" train configs/mini/finetune.yaml "${D[@]}" \
    "data.path=$DATA/train.jsonl" "model.base=$RUN/stage2/final" "train.output_dir=$RUN/stage2b" \
    "train.max_steps=$S2B" "train.seed=1" ${FREEZE[@]+"${FREEZE[@]}"}
  score stage2b parts-b test_scores_b.json
fi
