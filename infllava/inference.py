"""Stateful inference, shared by the CLI, the demo, serving and evaluation.

    model, processor = infllava.load("path/to/model")        # or "inf-llava-mini"
    print(infllava.answer(model, processor, "photo.jpg", "What is written on the sign?"))
    print(infllava.answer(model, processor, ["a.jpg", "b.jpg"], "What differs between <image> and <image>?"))

`ChatSession` encodes its images once; each turn re-prefills the conversation with the cached visual
tokens and streams the answer token by token. Loading is `infllava.loading` (one loader for every source).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

import torch
from transformers.generation.streamers import BaseStreamer

from .loading import SHIPPED, load_model, resolve_device_dtype  # noqa: F401  (SHIPPED: the names `load` takes)
from .processing import is_single_image, load_image
from .templates import IMAGE_TOKEN


def load(source: str | Path, device: str | None = None, dtype: str | torch.dtype | None = None,
         quantization: str | None = None):
    """(model, processor) from a shipped name ("inf-llava-mini"), a full directory (`save_pretrained`,
    `infllava export`, `infllava convert-official`) or a parts directory; see `infllava.loading`.
    `quantization="nf4"` or `"int8"` loads the LM 4- or 8-bit (bitsandbytes; `infllava.quantization`)."""
    model, processor, _ = load_model(source, device, dtype, quantization)
    return model, processor


class _CallbackStreamer(BaseStreamer):
    """Decodes generated ids incrementally and hands each new piece of text to a callback."""

    def __init__(self, tokenizer, on_text: Callable[[str], None]):
        self.tokenizer, self.on_text = tokenizer, on_text
        self.ids: list[int] = []
        self.printed = 0
        self.first = True

    def put(self, value: torch.Tensor) -> None:
        if self.first and value.ndim > 1:  # generate() first sends the prompt when given input_ids
            self.first = False
            return
        self.first = False
        self.ids.extend(value.flatten().tolist())
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # an unfinished multi-byte character: wait for the rest
            return
        if len(text) > self.printed:
            self.on_text(text[self.printed:])
            self.printed = len(text)

    def end(self) -> None:
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if len(text) > self.printed:
            self.on_text(text[self.printed:])
            self.printed = len(text)


def check_generation_settings(max_new_tokens: int, temperature: float, top_p: float) -> None:
    """ValueError naming a generation setting that makes no sense."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    if not (isinstance(temperature, (int, float)) and temperature >= 0 and temperature == temperature):
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature!r}")
    if not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")


class ChatSession:
    """A multi-turn conversation about zero, one or several images, whose features are computed once.

    The images fill the conversation's "<image>" placeholders in order; when no message holds one,
    "<image>\n" per image is put at the start of the first question (LLaVA's convention for one image).
    """

    def __init__(self, model, processor, image=None, max_new_tokens: int = 256, temperature: float = 0.0,
                 top_p: float = 1.0, images: Sequence[Any] | None = None):
        check_generation_settings(max_new_tokens, temperature, top_p)
        self.model, self.processor = model, processor
        self.messages: list[dict] = []
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p
        self.images: list[Any] = []
        self.image_features = None
        if image is not None and images is not None:
            raise ValueError("give `image` or `images`, not both")
        if image is not None or images is not None:
            self.set_images([image] if image is not None else images)

    @property
    def image(self):
        """The first image (None without images)."""
        return self.images[0] if self.images else None

    def set_image(self, image) -> None:
        """Use a new image (path, bytes or PIL); the conversation starts over."""
        self.set_images([image])

    def set_images(self, images: Sequence[Any]) -> None:
        """Use new images (paths, bytes or PIL images), in placeholder order; the conversation starts over."""
        if is_single_image(images):
            images = [images]
        loaded = [load_image(im, max_pixels=self.processor.image_processor.max_pixels) for im in images]
        p = next(self.model.parameters())
        pixels = self.processor.image_processor.pixels(loaded) if loaded else None
        with torch.inference_mode():
            self.image_features = self.model.image_tokens(pixels.to(p.device, p.dtype)) if loaded else None
        self.images = loaded
        self.messages = []

    def reset(self) -> None:
        self.messages = []

    def _prompt(self, messages: list[dict]) -> str:
        n = len(self.images)
        prompt = self.processor.chat_prompt(messages, num_images=n)
        placed = prompt.count(IMAGE_TOKEN)
        if placed != n:
            raise ValueError(f"the conversation holds {placed} '{IMAGE_TOKEN}' placeholder(s) but {n} image(s) were given")
        return prompt

    def ask(self, question: str, on_text: Callable[[str], None] | None = None) -> str:
        """Answer one user turn; `on_text` receives the answer piece by piece as it is generated."""
        messages = self.messages + [{"role": "user", "content": question}]
        self._prompt(messages)  # checks the placeholders against the images
        device = next(self.model.parameters()).device
        input_ids = self.processor.tokenize_chats([messages], [len(self.images)])["input_ids"].to(device)
        attention_mask = torch.ones_like(input_ids)
        with torch.inference_mode():
            embeds = self.model.embed_inputs(input_ids, image_features=self.image_features)
            streamer = _CallbackStreamer(self.processor.tokenizer, on_text) if on_text else None
            sample = self.temperature > 0
            out = self.model.generate(
                inputs_embeds=embeds,
                attention_mask=attention_mask,
                max_new_tokens=self.max_new_tokens,
                do_sample=sample,
                temperature=self.temperature if sample else None,
                top_p=self.top_p if sample else None,
                streamer=streamer,
            )
        answer = self.processor.tokenizer.decode(out[0], skip_special_tokens=True).strip()
        self.messages = messages + [{"role": "assistant", "content": answer}]
        return answer


def answer(model, processor, image, question: str, max_new_tokens: int = 256,
           on_text: Callable[[str], None] | None = None) -> str:
    """One question about one image, or about several (a list, filling the question's "<image>"
    placeholders in order, or put before it), greedy."""
    if image is None or is_single_image(image):
        return ChatSession(model, processor, image, max_new_tokens=max_new_tokens).ask(question, on_text)
    return ChatSession(model, processor, images=list(image), max_new_tokens=max_new_tokens).ask(question, on_text)
