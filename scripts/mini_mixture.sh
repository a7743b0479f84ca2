# Sourced by scripts/train_mini.sh and scripts/train_mini_broad.sh: the one place that (re)writes the
# simple-scene mixture beside an HR-VQA benchmark (infllava.evaluation.hrvqa.mixture).
#   ensure_mixture DATA CAPTIONS   (CAPTIONS 1: mixture-train_captions.jsonl must exist too)
# Sizes: MIXTURE_IMAGES (1000), MIXTURE_VAL (80), GENERALISE (120). The mixture is written when it is
# missing, when another generator version or size wrote it, or when its caption records are wanted and
# absent; HR-VQA's own files in DATA stay as they are.
ensure_mixture() {
  local data="$1" captions="$2" have want
  have=$("$BIN/python" -c "import json,sys; s=json.load(open(sys.argv[1])); print(s['version'], *(s['splits'].get(k, {}).get('images', 0) for k in ('mixture-train', 'mixture-val', 'generalise')))" "$data/mixture.json" 2>/dev/null || true)
  want=$("$BIN/python" -c "from infllava.evaluation.hrvqa.mixture import MIXTURE_VERSION as v; print(v, ${MIXTURE_IMAGES:-1000}, ${MIXTURE_VAL:-80}, ${GENERALISE:-120})")
  if [ "$have" != "$want" ] || { [ "$captions" = 1 ] && [ ! -f "$data/mixture-train_captions.jsonl" ]; }; then
    "$BIN/infllava" hrvqa "$data" --train 0 --val 0 --test 0 --mixture "${MIXTURE_IMAGES:-1000}" \
      --mixture-val "${MIXTURE_VAL:-80}" --generalise "${GENERALISE:-120}" $([ "$captions" = 1 ] && echo --captions)
  fi
}
