"""INF-LLaVA in lmms-eval: a model plugin and the `hrvqa` task.

    infllava hrvqa data/hrvqa --train 0 --val 0 --test 300           # the questions and their images
    python -m infllava.evaluation.lmms_eval data/hrvqa               # writes data/hrvqa/hrvqa.yaml
    lmms-eval --model infllava --model_args pretrained=inf-llava-mini \\
        --tasks hrvqa --include_path data/hrvqa --batch_size 8

The model (`model.InfLlava`): lmms-eval (0.7.3) builds its model table from the entry-point group
`lmms_eval.models` (pyproject.toml: `infllava = "infllava.evaluation.lmms_eval:manifest"`); it calls
`manifest`, which names the class by its import path, and imports `model` only when `--model infllava`
is asked for. Nothing here imports lmms_eval until then, so `import infllava` and this module work
without it. `--model_args`: `pretrained` (anything `infllava.load` takes: a shipped name such as
`inf-llava-mini`, a model or parts directory), `device`, `dtype`, `batch_size`, `max_new_tokens` (the
default when a task sets none).

The task (`tasks/hrvqa/hrvqa.yaml` + `tasks/hrvqa/utils.py`): the questions of one split of a folder
written by `infllava hrvqa OUT`, answered with the prompts, images, greedy decoding and 8 new tokens of
`infllava eval`, scored by `infllava.evaluation.hrvqa.scoring` (normalised exact match): `exact_match`
overall, `kind_<kind>` per kind and `subtype_<subtype>` per subtype, the numbers `infllava eval` reports
on the same questions. Where the data lives is the one thing the package's YAML cannot know: `write_task`
(`python -m infllava.evaluation.lmms_eval OUT [--split test]`) writes OUT/hrvqa.yaml, which includes the
package's definition and adds the split's file and the image folder (absolute paths; rerun it after
moving OUT). `--include_path OUT` then finds it.
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["MODEL_ID", "MODEL_CLASS", "TASKS_DIR", "manifest", "write_task"]

MODEL_ID = "infllava"
MODEL_CLASS = "infllava.evaluation.lmms_eval.model.InfLlava"
TASKS_DIR = Path(__file__).resolve().parent / "tasks"
HRVQA_YAML = TASKS_DIR / "hrvqa" / "hrvqa.yaml"


def manifest():
    """The entry point's payload: lmms-eval's `ModelManifest` for `--model infllava` (a simple model:
    lmms-eval hands it the task's text and images, and the model applies its own chat template)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=MODEL_CLASS)


def write_task(data_dir: str | Path, split: str = "test") -> Path:
    """Write DATA_DIR/hrvqa.yaml: the package's `hrvqa` task over DATA_DIR/{split}.jsonl, images read
    from DATA_DIR (the layout `infllava hrvqa` writes). Returns its path; ValueError when the split's
    file is missing."""
    data = Path(data_dir).resolve()
    records = data / f"{split}.jsonl"
    if not records.is_file():
        raise ValueError(f"{records} not found: write it with `infllava hrvqa {data_dir} --{split} N`")
    # JSON is YAML: the paths are written quoted, whatever characters they hold
    text = "\n".join([
        "# Written by `python -m infllava.evaluation.lmms_eval`: the hrvqa task over this folder.",
        f"include: {json.dumps(str(HRVQA_YAML))}",
        "task: hrvqa",
        f"dataset_kwargs: {json.dumps({'data_files': {'test': str(records)}})}",
        f"lmms_eval_specific_kwargs: {json.dumps({'default': {'image_root': str(data)}})}",
        "",
    ])
    out = data / "hrvqa.yaml"
    out.write_text(text, encoding="utf-8")
    return out
