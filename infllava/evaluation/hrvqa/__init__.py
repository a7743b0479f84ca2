"""HR-VQA: a procedural high-resolution VQA benchmark that shows what the dual perspective buys.

A small INF-LLaVA (tower input S = 224, grid n = 3) sees a 672 x 672 image three ways: 3 x 3 local
crops (contiguous 224-px tiles, full detail of one region each), 3 x 3 global crops (strided pixel
sampling, each a coarse view of the whole scene) and a 224-px thumbnail. The benchmark asks two
kinds of question about synthetic scenes so that each perspective is needed:

* **detail** (subtypes ``color``, ``shape``, ``digit``): about an object 10-16 px across at 672 px,
  i.e. 3-5 px in any single 224-px view of the whole image. "What color is the small shape?",
  "What shape is the small colored object?", "What digit is written in the small white box?". Every
  image holds exactly one small colored shape and one small white box (16 px) holding a ~10-px
  digit, so each detail question names its target without needing the LM to bind attributes (the
  question text is the same for every image: a fixed readout, like "the largest shape"). At 224 px
  the small shape is a colored blob of ~4 px (its shape is gone) and the digit a gray smudge; in the
  local crop that holds them they are drawn at full resolution. Small things never straddle a
  local-tile border (they keep >= 3 px from it, about a third of them sit within 16 px of one);
  their tile is recorded in the question metadata (``tile`` = [row, col], ``local_crop`` index).
  Version 1 (``HRVQA_VERSION`` 1) had 2-3 small shapes and asked "What color is the small square?",
  which needs the LM to bind a shape to a colour among several blobs: SmolLM2-135M trained on 1000
  such questions stayed at chance even with full-resolution tokens (docs/inf-llava-mini.md, "HR-VQA v1"), so the
  benchmark measured the LM's binding, not what the image views show.
* **global** (subtypes ``count``, ``relation``, ``higher``, ``largest``): need the whole scene.
  "How many large circles are there?" (1-6 of them spread over the image), "Is the red square to
  the left of the blue circle?" / "... above ..." (yes/no, centers >= 0.15 * size apart on that
  axis, far-apart pairs preferred), "Which is higher, the red square or the green triangle?"
  (answer: a color), "What color is the largest shape?" (the largest has >= 1.5x the area and
  >= 1.25x the side of any other). Large shapes are 48-110 px (the largest 135-165 px) and stay
  clearly visible in the thumbnail, but they straddle tile borders freely, so no single local
  crop sees the scene.

Scenes: a lightly textured gray background (smooth blotches), 3-10 large shapes
(circle / square / triangle, each (color, shape) pair at most once per image, so "the red square"
is unique), the small shape and the digit box in free space. Every image carries 2-4 questions
that alternate kinds (the first kind alternates with the index), so both kinds are balanced over a
split. ``every_subtype=True`` (train data, ``--train-every-subtype``) adds one question of every
subtype the image lacks (7 in all), drawn from a separate random stream, so the scene and its 2-4
questions stay the same. Answers come from a closed vocabulary (`VOCABULARY`; `ANSWERS` per subtype) and are scored
by normalized exact match (`normalize_answer`, `score`).

Everything is a pure function of (split, index, size): `random.Random(f"hrvqa-{seed}-{index}")`
and a numpy generator seeded from it; no global random state. Changing the generator changes the
data, so `HRVQA_VERSION` is written next to the data.

Splits: train, val, test and heldout, each with its own seed (`SPLIT_SEEDS`). The held-out split
exists because the INF-LLaVA-mini tables were chosen on the test split they report: it is generated
exactly like test (same machinery, 2-4 questions per image, one record per question) from a seed
used for nothing else, written only when asked for (`--heldout N`), and meant to be scored once,
after every choice is made.

    infllava hrvqa OUT --train 2000 --val 200 --test 1000 [--heldout 1000] [--size 672]
    (or: python -m infllava.evaluation.hrvqa OUT ...)

writes OUT/images/{split}/{index:06d}.png, OUT/{split}.jsonl (LLaVA conversation records, one per
question by default) and OUT/hrvqa.json (version, sizes, vocabulary, split seeds and sizes).

Modules, one concern each:

* `scenes`: the procedural generator: constants and answer vocabulary, `SceneObject`, `Scene`,
  object sampling and placement, the questions (`make_scene`), and a scene in words (`caption`,
  `regions`);
* `rendering`: a scene drawn as an RGB image (`render_scene`; `make_sample` = scene + image);
* `writing`: the split writer (`write_split`, `write_captions`, `write_subtype`) and the
  `infllava hrvqa` command (`main`);
* `scoring`: reading the question records back (`iter_questions`, `load_jsonl`) and normalised exact
  match, overall, per kind and per subtype (`normalize_answer`, `score`);
* `mixture`: simple scenes beside the benchmark (varied backgrounds, sizes, aspect ratios, seven shapes,
  twelve colours, many phrasings; `make_simple_scene`, `render_simple_scene`, `write_mixture`), a
  broader training mixture and a held-out generalisation split (`--mixture N`, `--mixture-val N`,
  `--generalise N`). HR-VQA's own splits are untouched by it.
"""
