"""The functions `hrvqa.yaml` names: an HR-VQA record (one line of SPLIT.jsonl, as `datasets` reads it) ->
the model's image and text, and its answer -> the scores.

Each record is one question (`write_split(questions_per_record="one")`, the layout of val and test). The
text is the record's human turn without its "<image>" placeholder: the model puts the image back where
its template wants it (infllava: "<image>\\n" before the text, which is the record's own turn, so the
prompt is `infllava eval`'s). The image is read from the image folder `write_task` wrote into the task's
YAML (`lmms_eval_specific_kwargs.default.image_root`; "." when the YAML says nothing), by the
`load_image` that `infllava eval` reads it with.

Scoring is `infllava.evaluation.hrvqa.scoring.score` on the one question: its normalised exact match
(0 or 1) goes to `exact_match`, to `kind_<kind>` and to `subtype_<subtype>`; lmms-eval averages each
(`aggregation: mean`) over the questions that reported it, so every figure is the accuracy `score`
reports over the same questions. `METRICS` lists every name, from `scenes.KINDS` and the subtypes (a
test checks the YAML's `metric_list` against it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from infllava.data.records import resolve_image_path
from infllava.evaluation.hrvqa.scenes import DETAIL_SUBTYPES, GLOBAL_SUBTYPES, KINDS
from infllava.evaluation.hrvqa.scoring import iter_questions, score
from infllava.processing import IMAGE_TOKEN, load_image

__all__ = ["METRICS", "doc_to_visual", "doc_to_text", "doc_to_target", "process_results"]

METRICS = ("exact_match", *(f"kind_{k}" for k in KINDS),
           *(f"subtype_{s}" for s in DETAIL_SUBTYPES + GLOBAL_SUBTYPES))


def _question(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The one question of a record (`iter_questions`); ValueError for a multi-question record."""
    questions = list(iter_questions([doc]))
    if len(questions) != 1:
        raise ValueError(f"record {doc.get('id')!r} holds {len(questions)} questions; the hrvqa task reads "
                         f"one question per record (the val and test splits of `infllava hrvqa`)")
    return questions[0]


def doc_to_visual(doc: Mapping[str, Any], lmms_eval_specific_kwargs: Mapping[str, Any] | None = None) -> list:
    """[the record's image] as an RGB PIL image, its path resolved against the task's image folder."""
    root = (lmms_eval_specific_kwargs or {}).get("image_root", ".")
    return [load_image(resolve_image_path(doc["image"], root))]


def doc_to_text(doc: Mapping[str, Any], lmms_eval_specific_kwargs: Mapping[str, Any] | None = None) -> str:
    """The question as the record asks it (with its answer instruction), without the image placeholder."""
    return _question(doc)["prompt"].replace(IMAGE_TOKEN, "").strip()


def doc_to_target(doc: Mapping[str, Any]) -> str:
    return _question(doc)["answer"]


def process_results(doc: Mapping[str, Any], results: list[str]) -> dict[str, float]:
    """{metric: 1.0 or 0.0} for the question's overall, kind and subtype entries (see the module)."""
    q = _question(doc)
    correct = float(score({q["id"]: results[0]}, [doc])["correct"])
    return {"exact_match": correct, f"kind_{q['kind']}": correct, f"subtype_{q['subtype']}": correct}
