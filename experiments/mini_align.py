"""Can the frozen LM read a model's visual tokens zero-shot? Closed-vocabulary ranking on HR-VQA.

For each test question, the LM (chat template) rates the first token of every answer of the
question's subtype right after the assistant turn starts; the highest is its answer. Meant for models
whose LM was never trained on the questions (an align stage's output): generation would answer in
sentences, ranking does not need the answer format.

    python experiments/mini_align.py MODEL_DIR [--questions 300]
"""

from __future__ import annotations

import argparse
import time

import torch

from infllava.evaluation.evaluate import _tokenize
from infllava.evaluation.hrvqa.scenes import ANSWERS
from infllava.evaluation.hrvqa.scoring import iter_questions, load_jsonl
from infllava.inference import load
from infllava.processing import load_image

DATA = ".cache/hrvqa"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model", help="a saved model directory (e.g. an align stage's OUTPUT/final)")
    p.add_argument("--questions", type=int, default=300)
    a = p.parse_args()
    model, proc = load(a.model)
    questions = list(iter_questions(load_jsonl(f"{DATA}/test.jsonl")))[: a.questions]
    t0 = time.perf_counter()
    r = rank(model, proc, questions)
    print(f"zero-shot ranking {a.model} ({len(questions)} questions): "
          + " ".join(f"{k} {100 * v:.1f}" for k, v in r.items()) + f" ({time.perf_counter() - t0:.0f} s)")


def rank(model, proc, questions, batch: int = 16) -> dict[str, float]:
    """Closed-vocabulary accuracy: the answer of the question's subtype whose first token the LM
    rates highest right after the assistant turn starts (the LM need not know the answer format)."""
    tok = proc.tokenizer
    first = {s: [tok(x, add_special_tokens=False)["input_ids"][0] for x in opts] for s, opts in ANSWERS.items()}
    hits: dict[str, list[int]] = {}
    feats: dict[str, torch.Tensor] = {}
    for s in range(0, len(questions), batch):
        chunk = questions[s: s + batch]
        for q in chunk:
            if q["image"] not in feats:
                with torch.no_grad():
                    feats[q["image"]] = model.image_tokens(proc.image_processor.pixels([load_image(f"{DATA}/{q['image']}")]))[0]
        prompts = [proc.chat_prompt([{"role": "user", "content": q["prompt"]}], num_images=1) for q in chunk]
        enc = _tokenize(proc, prompts)
        with torch.no_grad():
            emb = model.embed_inputs(enc["input_ids"], image_features=torch.stack([feats[q["image"]] for q in chunk]))
            logits = model(inputs_embeds=emb, attention_mask=enc["attention_mask"], logits_to_keep=1).logits[:, -1]
        for q, row in zip(chunk, logits):
            opts = ANSWERS[q["subtype"]]
            pred = opts[int(row[first[q["subtype"]]].argmax())]
            ok = int(pred == q["answer"])
            for key in ("all", q["kind"], q["subtype"]):
                hits.setdefault(key, []).append(ok)
    return {k: sum(v) / len(v) for k, v in hits.items()}

if __name__ == "__main__":
    main()
