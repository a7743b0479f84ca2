#!/usr/bin/env bash
# Broaden an INF-LLaVA-mini variant: stage 2 continued on HR-VQA train (replay) + the simple-scene
# mixture (infllava.evaluation.hrvqa.mixture), then scored on HR-VQA test, the mixture's validation split
# and, once, the held-out generalisation split (docs/inf-llava-mini.md, "Simple images from elsewhere").
#   scripts/train_mini_broad.sh [full|thumbnail|local|global]      (after scripts/train_mini.sh VIEWS)
# Knobs:
#   BASE (default $RUNS/mini-VIEWS/stage2/final, train_mini.sh's output; any model infllava loads, e.g. a
#     parts directory such as a copy of an earlier shipped infllava/assets/inf-llava-mini);
#   S3_CURRICULUM (default "color,shape presence count,position"; "" = off): mixture question subtypes
#     added one entry at a time, as in train_mini.sh's curriculum: stage k trains S3_CURRICULUM_STEPS
#     (default 96) steps of 8 single-turn questions, the mixture's questions of entries 1..k together with
#     HR-VQA's questions of S3_KEEP (default "shape,color": what the base already reads, kept), each
#     from the previous output (stage3-ENTRY/); mixed into every batch from the start, new question
#     types stay at the answer prior (experiments/results/mini_broad_mixed_2026-12-02.txt);
#   S3_NEW_SHARE (default unset: each stage's records are all those of entries 1..k and S3_KEEP): a
#     fraction, e.g. 0.5: entry k's questions make that share of stage k's records, the earlier entries'
#     and S3_KEEP's a sample of the rest (infllava.evaluation.hrvqa.writing.write_curriculum);
#   S3_SEEN (default ""): mixture subtypes a BASE already reads, kept from the first stage on (with
#     BASE= a broadened model, e.g. S3_SEEN=color,shape S3_CURRICULUM="presence count,position");
#   S3_STEPS (default 100; 0 = none: the last curriculum stage is exported) steps of 8 records (multi-turn: an image with all its questions), lr 5e-4,
#     a fresh LoRA r 8 over the base's merged one + DEM + projector (configs/mini/finetune.yaml), from
#     the curriculum's last output;
#   READ_STEPS (default "": none): the reading stage after all of the above, rounds of that many steps each,
#     e.g. "150 100": multi-turn records (infllava.evaluation.hrvqa.writing.write_turns: every mixture-train
#     image with all its questions + the HR-VQA train images with their READ_KEEP turns, default
#     "shape,color,largest"), 8 a step, DEM + projector frozen (train.freeze_mm: the align stage's tokens
#     stay as they are), round k with train.seed=k-1 from the previous output, into stage4-k/
#     (experiments/results/mini_lm_read_2026-12-03.txt);
#   READ_PRESENCE (default 0): up to that many more presence turns in front of each mixture image's own
#     (mixture.with_presence_turns), records in read/train-presenceN.jsonl;
#   REPLAY_IMAGES (default 600): the first N HR-VQA train records mixed in (each 7 questions);
#   MIXTURE_IMAGES (1000), MIXTURE_VAL (80), GENERALISE (120): mixture images written to DATA if missing
#     (scripts/mini_mixture.sh);
#   GENERALISE_EVAL (default 1; 0 = not scored: the held-out split is scored once, on the model chosen);
#   DATA (.cache/hrvqa, written by train_mini.sh), RUNS (runs), FEATURE_CACHE (.cache/features), EVAL_LIMIT.
# Outputs in $RUNS/mini-VIEWS/: curriculum-broad/, stage3-ENTRY/, broad/train.jsonl, stage3/, read/train[-presenceN].jsonl, stage4-K/ (resumable: the same command continues an
# interrupted run from its last checkpoint; a finished stage is not run again), parts-broad/ (the
# exportable parts), broad_{test,val,generalise}_scores.json.
set -euo pipefail
cd "$(dirname "$0")/.."
VIEWS="${1:-full}"
BIN="${BIN:-.venv/bin}"
DATA="${DATA:-.cache/hrvqa}"
RUN="${RUNS:-runs}/mini-$VIEWS"
BASE="${BASE:-$RUN/stage2/final}"
FC="${FEATURE_CACHE-.cache/features}"
[ -f "$DATA/train.jsonl" ] && [ -f "$DATA/test.jsonl" ] || {
  echo "train_mini_broad.sh: no HR-VQA benchmark in $DATA; run scripts/train_mini.sh $VIEWS first" >&2; exit 2; }
[ -e "$BASE" ] || { echo "train_mini_broad.sh: BASE $BASE does not exist; run scripts/train_mini.sh $VIEWS first" >&2; exit 2; }
source scripts/mini_mixture.sh
ensure_mixture "$DATA" 0
D=("data.images=$DATA" "train.feature_cache=$FC")
SEEN="${S3_SEEN:-}"
for ST in ${S3_CURRICULUM-color,shape presence count,position}; do
  PREV="$SEEN"
  SEEN="${SEEN:+$SEEN,}$ST"
  if [ ! -f "$RUN/stage3-$ST/final/config.json" ]; then
    mkdir -p "$RUN/curriculum-broad"
    CUR="$RUN/curriculum-broad/train_$ST.jsonl"
    # unset S3_NEW_SHARE: every question of entries 1..k, then S3_KEEP's; set: entry k's at that share
    "$BIN/python" -c "import sys; from infllava.evaluation.hrvqa.writing import write_curriculum as w
mix, st, prev, hr, keep, out, share = sys.argv[1:]
new, old = (st, prev) if share else (','.join(filter(None, (prev, st))), '')
old = ([(mix, old.split(','))] if old else []) + [(hr, keep.split(','))]
print('curriculum stage %s: %d new, %d kept questions' % ((st,) + w([(mix, new.split(','))], old, out, float(share) if share else None)))" \
      "$DATA/mixture-train.jsonl" "$ST" "$PREV" "$DATA/train.jsonl" "${S3_KEEP:-shape,color}" "$CUR" "${S3_NEW_SHARE:-}"
    "$BIN/infllava" train configs/mini/finetune.yaml "${D[@]}" "data.path=$CUR" "model.base=$BASE" \
      "train.output_dir=$RUN/stage3-$ST" "train.max_steps=${S3_CURRICULUM_STEPS:-96}"
  fi
  BASE="$RUN/stage3-$ST/final"
done
LAST="$BASE"
if [ "${S3_STEPS:-100}" != 0 ]; then
  LAST="$RUN/stage3/final"
  if [ ! -f "$LAST/config.json" ]; then
    mkdir -p "$RUN/broad"
    { head -n "${REPLAY_IMAGES:-600}" "$DATA/train.jsonl"; cat "$DATA/mixture-train.jsonl"; } > "$RUN/broad/train.jsonl"
    "$BIN/infllava" train configs/mini/finetune.yaml "${D[@]}" "data.path=$RUN/broad/train.jsonl" \
      "model.base=$BASE" "train.output_dir=$RUN/stage3" "train.max_steps=${S3_STEPS:-100}"
  fi
fi
K=0
READ="$RUN/read/train${READ_PRESENCE:+-presence$READ_PRESENCE}.jsonl"
for STEPS in ${READ_STEPS:-}; do
  K=$((K + 1))
  if [ ! -f "$RUN/stage4-$K/final/config.json" ]; then
    [ -f "$READ" ] || "$BIN/python" -c "import sys, functools; from infllava.evaluation.hrvqa.writing import write_turns as w
from infllava.evaluation.hrvqa.mixture import with_presence_turns as p
n = int(sys.argv[5])
print('reading stage: %d records' % w([(sys.argv[1], None), (sys.argv[2], sys.argv[3].split(','))], sys.argv[4], extend=functools.partial(p, n=n) if n else None))" \
      "$DATA/mixture-train.jsonl" "$DATA/train.jsonl" "${READ_KEEP:-shape,color,largest}" "$READ" "${READ_PRESENCE:-0}"
    "$BIN/infllava" train configs/mini/finetune.yaml "${D[@]}" "data.path=$READ" \
      "model.base=$LAST" "train.output_dir=$RUN/stage4-$K" "train.max_steps=$STEPS" train.freeze_mm=true \
      "train.seed=$((K - 1))" train.save_every=25
  fi
  LAST="$RUN/stage4-$K/final"
done
"$BIN/python" -c "from infllava.parts import export_parts; export_parts('$LAST', '$RUN/parts-broad')"
evaluate() {  # split file, scores file
  [ -f "$RUN/$2" ] || "$BIN/infllava" eval "$RUN/parts-broad" --data "$DATA/$1" --images "$DATA" \
    --out "$RUN/$2" ${EVAL_LIMIT:+--limit "$EVAL_LIMIT"} ${FC:+--feature-cache "$FC"}
}
evaluate mixture-val.jsonl broad_val_scores.json
[ "${GENERALISE_EVAL:-1}" = 0 ] || evaluate generalise.jsonl broad_generalise_scores.json
evaluate test.jsonl broad_test_scores.json
