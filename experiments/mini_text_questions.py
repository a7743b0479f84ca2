"""Can SmolLM2-135M-Instruct answer the simple-scene mixture's questions when the scene is given as text?

A diagnostic for INF-LLaVA-mini (issue 23): the image is replaced by its exact description ("The image shows:
red circle, blue square."), so what is left is the language model's part of the task. It scores the LM as
shipped (before training: step 0) and while LoRA r 8 (all projections, as configs/mini/finetune.yaml) trains
on those texts of mixture-train's scenes, 8 questions a step, then every 50 steps on mixture-val's scenes.
Answers are chosen among the subtype's answers by the first token's logit (`MIXTURE_ANSWERS`).

    python experiments/mini_text_questions.py presence 100 [--lr 5e-4] [--threads 1]
    python experiments/mini_text_questions.py presence 100 --blend 3   # each object one vector, 3 times

--blend K gives each object as K copies of ONE input vector, the mean of SmolLM2's embeddings of its words'
tokens ("red", "circle"), as the align stage's visual tokens hold one blended phrase embedding per cell,
several cells per object (infllava/training/align.py): can the LM match a named object against those?

Needs the `train` extra (peft) and the SmolLM2 conversion in .cache/smollm2-135m-instruct (`make`).
"""

from __future__ import annotations

import argparse
import collections
import random
import time

import torch


def main() -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from infllava.evaluation.hrvqa.mixture import MIXTURE_ANSWERS, make_simple_scene

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("subtypes", help="comma-separated mixture subtypes, e.g. presence or presence,count")
    p.add_argument("steps", type=int)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--lm", default=".cache/smollm2-135m-instruct")
    p.add_argument("--train-images", type=int, default=1000)
    p.add_argument("--val-images", type=int, default=80)
    p.add_argument("--blend", type=int, default=0, help="each object as K copies of its words' mean embedding")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rng = random.Random(0)
    subtypes = args.subtypes.split(",")
    tok = AutoTokenizer.from_pretrained(args.lm)
    lm = get_peft_model(AutoModelForCausalLM.from_pretrained(args.lm), LoraConfig(
        r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))

    # each answer's first token (the answer is chosen among its subtype's by that token's logit)
    first = {a: tok(a, add_special_tokens=False)["input_ids"][0] for st in subtypes for a in MIXTURE_ANSWERS[st]}

    def items(split: str, n: int) -> list:
        """(the scene's object descriptions, question) pairs; the scene holds its questions (no rendering)."""
        scenes = (make_simple_scene(split, i) for i in range(n))
        return [([o.describe() for o in sc.objects], q) for sc in scenes for q in sc.questions if q["subtype"] in subtypes]

    embed = lm.get_input_embeddings()

    def ids(text: str) -> torch.Tensor:
        return tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]

    def prompt(objs: list[str], q: dict) -> torch.Tensor:
        """The input embeddings of SmolLM2's chat turn (without its system prompt: shorter)."""
        pre, post = "<|im_start|>user\nThe image shows: ", f".\n{q['question']} Answer with one word.<|im_end|>\n<|im_start|>assistant\n"
        if not args.blend:
            return embed(ids(pre + ", ".join(objs) + post))
        with torch.no_grad():
            objects = [embed(ids(" " + o)).mean(1, keepdim=True).expand(1, args.blend, -1) for o in objs]
        return torch.cat([embed(ids(pre)), *objects, embed(ids(post))], 1)

    def evaluate(val: list) -> str:
        lm.eval()
        acc: dict = collections.defaultdict(lambda: [0, 0])
        with torch.no_grad():
            for objs, q in val:
                logits = lm(inputs_embeds=prompt(objs, q)).logits[0, -1]
                choices = MIXTURE_ANSWERS[q["subtype"]]
                answer = choices[int(torch.stack([logits[first[c]] for c in choices]).argmax())]
                acc[q["subtype"]][0] += answer == q["answer"]
                acc[q["subtype"]][1] += 1
        lm.train()
        return "  ".join(f"{k} {100 * c / n:.1f}% ({c}/{n})" for k, (c, n) in sorted(acc.items()))

    train, val = items("mixture-train", args.train_images), items("mixture-val", args.val_images)
    opt = torch.optim.AdamW([w for w in lm.parameters() if w.requires_grad], lr=args.lr)
    print(f"{len(train)} train / {len(val)} val questions; step 0: {evaluate(val)}", flush=True)
    t0 = time.time()
    lm.train()
    for step in range(1, args.steps + 1):
        loss = torch.zeros(())
        for objs, q in rng.sample(train, 8):
            answer = torch.tensor([[first[q["answer"]]]])
            x = torch.cat([prompt(objs, q), embed(answer)], 1)
            labels = torch.full(x.shape[:2], -100)
            labels[0, -1] = answer[0, 0]
            loss = loss + lm(inputs_embeds=x, labels=labels).loss / 8
        loss.backward()
        opt.step()
        opt.zero_grad()
        if step % 10 == 0:
            print(f"step {step} loss {loss.item():.3f} ({time.time() - t0:.0f} s)", flush=True)
        if step % 50 == 0 or step == args.steps:
            print(f"step {step}: {evaluate(val)}", flush=True)


if __name__ == "__main__":
    main()
