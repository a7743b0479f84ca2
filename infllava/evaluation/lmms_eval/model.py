"""`InfLlava`: lmms-eval's `lmms` interface over an infllava model (`--model infllava`).

Imported by lmms-eval only (this module imports lmms_eval); see the package docstring for how it is found.

Each request names its document (`self.task_dict[task][split][doc_id]`, filled in by lmms-eval), from
which the task's `doc_to_visual` gives the images; the context is the user's turn. Requests are answered
in order, `batch_size` at a time:

* `generate_until` (context, generation kwargs): the context becomes one user message and the images its
  placeholders ("<image>\\n" before the text when it has none), rendered with the processor's chat
  template (`tokenize_chats`); each image is encoded on its own (`evaluate.encode_image`, recent ones
  kept) and the batch is answered by `evaluate.generate_answers`, the code `infllava eval` answers with:
  left-padded, greedy unless the task asks for sampling (`temperature` > 0 and `do_sample` not false),
  `max_new_tokens` from the task (else the model's default). The decoded, stripped answer is cut before
  the first of the task's `until` strings.
* `loglikelihood` (context, continuation): log P(continuation | the chat prompt of the context), summed
  over the continuation's tokens, and whether greedy decoding would produce exactly those tokens. The
  continuation is tokenized on its own, as given (no space added or removed), and placed right after the
  generation prompt ("...assistant\\n"): it is the start of the model's answer. Rows are right-padded
  and scored in one forward pass.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from lmms_eval.utils import simple_parse_args_string
from loguru import logger  # lmms-eval's logger
from PIL import Image
from tqdm.auto import tqdm

from ...inference import load
from ...processing import image_key, load_image
from ...templates import first_stop
from ..evaluate import encode_image, generate_answers

__all__ = ["InfLlava"]

_IMAGE_CACHE_SIZE = 64  # images whose visual tokens are kept (the questions about one image come together)


def _as_int(name: str, value: Any) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}") from None
    if number < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return number


class InfLlava(lmms):
    """An infllava model for lmms-eval.

    Args (`--model_args key=value,...`):
        pretrained: what `infllava.load` takes: a shipped name ("inf-llava-mini"), a model directory or a
            parts directory.
        device: "cpu", "cuda", "cuda:N"... (default: cuda if present, else cpu).
        dtype: "float32", "bfloat16", "float16" (default: bfloat16 on cuda, float32 on cpu).
        batch_size: requests per forward pass (also `--batch_size`; the model_args value wins).
        max_new_tokens: generation length for tasks that set none (a task's own value wins; change it with
            `--gen_kwargs max_new_tokens=N`).
    One process only (no accelerate / torchrun data parallelism).
    """

    is_simple = True

    def __init__(self, pretrained: str = "inf-llava-mini", device: str | None = None, dtype: str | None = None,
                 batch_size: int | str = 8, max_new_tokens: int | str = 256, max_batch_size: Any = None,
                 **unknown: Any) -> None:
        super().__init__()
        if unknown:
            raise TypeError(f"--model infllava got unknown model_args {sorted(unknown)}; it takes pretrained, "
                            f"device, dtype, batch_size, max_new_tokens")
        self.batch_size = _as_int("batch_size", batch_size)
        self.max_new_tokens = _as_int("max_new_tokens", max_new_tokens)
        self.model, self.processor = load(pretrained, device=device, dtype=dtype)
        self.pretrained = str(pretrained)
        self._images: OrderedDict[str, torch.Tensor] = OrderedDict()

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> "InfLlava":
        """lmms-eval passes `--batch_size` (default 1) and `--device` beside `--model_args`; a key given in
        `--model_args` is taken from there (lmms-eval's own merge would pass it twice and fail)."""
        args = simple_parse_args_string(arg_string) if arg_string else {}
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None and k not in args}
        return cls(**args, **extra)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ---- requests -> documents, images ----
    def _doc(self, task: str, split: str, doc_id: int):
        return self.task_dict[task][split][doc_id]

    def _conversations(self, requests: list[Instance], batch: list[int]):
        """(one user message per request: its context, the image count of each, all their images in order,
        their documents) for the requests at the indices `batch`."""
        chats, counts, images, docs = [], [], [], []
        for i in batch:
            context, _, doc_to_visual, doc_id, task, split = requests[i].args
            doc = self._doc(task, split, doc_id)
            imgs = self._images_of(doc_to_visual, doc)
            chats.append([{"role": "user", "content": context}])
            counts.append(len(imgs))
            images += imgs
            docs.append(doc)
        return chats, counts, images, docs

    def _images_of(self, doc_to_visual, doc) -> list[Image.Image]:
        visuals = doc_to_visual(doc) if doc_to_visual is not None else None
        out = []
        for v in _flatten(visuals):
            if not isinstance(v, Image.Image):
                raise NotImplementedError(f"--model infllava takes images only, got a {type(v).__name__} visual "
                                          f"(video and audio are not supported)")
            out.append(load_image(v))
        return out

    def _image_features(self, images: Sequence[Image.Image]) -> torch.Tensor | None:
        """Visual tokens (N, T, D) of the images, each encoded on its own; recent ones come from a cache keyed
        by the pixels."""
        feats = []
        for image in images:
            key = image_key(image)
            if key not in self._images:
                self._images[key] = encode_image(self.model, self.processor, image)
                if len(self._images) > _IMAGE_CACHE_SIZE:
                    self._images.popitem(last=False)
            self._images.move_to_end(key)
            feats.append(self._images[key])
        return torch.stack(feats) if feats else None

    # ---- generation ----
    def generate_until(self, requests: list[Instance]) -> list[str]:
        results: list[str | None] = [None] * len(requests)
        bar = tqdm(total=len(requests), desc="infllava generate", disable=self.rank != 0)
        for batch in self._batches(requests, by_kwargs=True):
            kwargs = dict(requests[batch[0]].args[1] or {})
            until = kwargs.pop("until", None)
            until = [until] if isinstance(until, str) else list(until or [])
            max_new_tokens = _as_int("max_new_tokens", kwargs.pop("max_new_tokens", None) or self.max_new_tokens)
            sampling = _sampling(kwargs)
            chats, counts, images, _ = self._conversations(requests, batch)
            answers = generate_answers(self.model, self.processor, chats, counts, self._image_features(images),
                                       max_new_tokens, **sampling)
            for i, text in zip(batch, answers):
                results[i] = text[:first_stop(text, until)]
            bar.update(len(batch))
        bar.close()
        return results

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("--model infllava does not implement generate_until_multi_round (multi-round "
                                  "tasks); it answers generate_until and loglikelihood tasks")

    # ---- log-likelihood ----
    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        tokenizer = self.processor.tokenizer
        bar = tqdm(total=len(requests), desc="infllava loglikelihood", disable=self.rank != 0)
        for batch in self._batches(requests, by_kwargs=False):
            chats, counts, images, docs = self._conversations(requests, batch)
            continuations = []
            for i, doc in zip(batch, docs):
                target = requests[i].args[1]
                continuation = target if isinstance(target, str) else target(doc)
                continuations.append(tokenizer(str(continuation), add_special_tokens=False)["input_ids"])
            enc = self.processor.tokenize_chats(chats, counts, return_tensors=None)
            prompts = [[t for t, m in zip(ids, mask) if m]
                       for ids, mask in zip(enc["input_ids"], enc["attention_mask"])]
            scores = self._score(prompts, continuations, self._image_features(images))
            for i, s in zip(batch, scores):
                results[i] = s
            bar.update(len(batch))
        bar.close()
        return results

    def _score(self, prompts: list[list[int]], continuations: list[list[int]],
               image_features: torch.Tensor | None) -> list[tuple[float, bool]]:
        """(sum of log P(continuation token | everything before it), all of them the argmax) per row."""
        enc = self.processor.pad([p + c for p, c in zip(prompts, continuations)], "right")
        input_ids = torch.tensor(enc["input_ids"], device=self.device)
        mask = torch.tensor(enc["attention_mask"], device=self.device)
        with torch.inference_mode():
            embeds = self.model.embed_inputs(input_ids, image_features=image_features)
            logits = self.model(inputs_embeds=embeds, attention_mask=mask).logits
        out = []
        for row, (p, c) in enumerate(zip(prompts, continuations)):
            if not c:
                out.append((0.0, True))
                continue
            # the logits at position t predict token t + 1
            step = logits[row, len(p) - 1: len(p) + len(c) - 1].float().log_softmax(-1)
            target = torch.tensor(c, device=step.device)
            logprob = step.gather(-1, target[:, None]).sum().item()
            out.append((float(logprob), bool((step.argmax(-1) == target).all())))
        return out

    # ---- batching ----
    def _batches(self, requests: list[Instance], by_kwargs: bool) -> Iterator[list[int]]:
        """Indices of the requests, `batch_size` at a time in their order; with `by_kwargs`, the requests of
        one batch share their generation kwargs (a task's requests all do)."""
        groups: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            key = json.dumps(req.args[1], sort_keys=True, default=str) if by_kwargs else ""
            groups.setdefault(key, []).append(i)
        for indices in groups.values():
            for start in range(0, len(indices), self.batch_size):
                yield indices[start: start + self.batch_size]


def _flatten(visuals) -> Iterator[Any]:
    if visuals is None:
        return
    if isinstance(visuals, (list, tuple)):
        for v in visuals:
            yield from _flatten(v)
    else:
        yield visuals


_SAMPLING_KEYS = {"do_sample", "temperature", "top_p", "num_beams"}
_ignored_warned: set[str] = set()


def _sampling(kwargs: dict[str, Any]) -> dict[str, Any]:
    """`generate` arguments for the rest of a request's generation kwargs: greedy unless temperature > 0 and
    do_sample is not false; num_beams above 1 is refused (not supported); other keys are ignored, with a
    warning (once per key)."""
    for key in sorted(set(kwargs) - _SAMPLING_KEYS - _ignored_warned):
        logger.warning(f"--model infllava ignores the generation setting {key}={kwargs[key]!r}")
        _ignored_warned.add(key)
    if int(kwargs.get("num_beams") or 1) > 1:
        raise NotImplementedError("--model infllava decodes greedily or by sampling; num_beams > 1 is not supported")
    temperature = float(kwargs.get("temperature") or 0.0)
    if temperature <= 0 or kwargs.get("do_sample") is False:
        return {"do_sample": False}
    top_p = kwargs.get("top_p")
    return {"do_sample": True, "temperature": temperature, **({"top_p": float(top_p)} if top_p is not None else {})}


