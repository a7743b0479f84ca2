"""Loading and stateful inference, shared by the CLI, the demo and (later) serving and evaluation.

    model, processor = infllava.load("path/to/model")
    print(infllava.answer(model, processor, "photo.jpg", "What is written on the sign?"))

`ChatSession` encodes its image once; each turn re-prefills the conversation with the cached visual
tokens and streams the answer token by token. Device and dtype are decided in `resolve_device_dtype`
and nowhere else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from transformers.generation.streamers import BaseStreamer

from .checkpoints.official import check_shards
from .model import InfLlavaForConditionalGeneration
from .parts import is_parts_dir, load_parts
from .processing import InfLlavaProcessor, load_image, tokenize_with_images

STOP_STRINGS = ("<|eot_id|>", "<|im_end|>", "<|end_of_text|>")


def resolve_device_dtype(device: str | None = None, dtype: str | torch.dtype | None = None):
    """cuda if present else cpu; bfloat16 on cuda, float32 on cpu, unless told otherwise."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if dtype is None or dtype == "auto":
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    elif isinstance(dtype, str):
        if not hasattr(torch, dtype) or not isinstance(getattr(torch, dtype), torch.dtype):
            raise ValueError(f"unknown dtype {dtype!r} (use float32, bfloat16 or float16)")
        dtype = getattr(torch, dtype)
    return torch.device(device), dtype


# Models that ship inside the package as parts (small deltas over pip-installed backbones), by name:
# `infllava.load("inf-llava-mini")`, `infllava chat inf-llava-mini ...`.
SHIPPED = {"inf-llava-mini": Path(__file__).resolve().parent / "assets" / "inf-llava-mini"}


def load(model_dir: str | Path, device: str | None = None, dtype: str | torch.dtype | None = None):
    """(model, processor) from a directory written by `save_pretrained` / `infllava convert-official`,
    or a parts directory (`infllava.parts`: small deltas assembled over packaged backbones)."""
    path = Path(model_dir)
    if str(model_dir) in SHIPPED and not path.exists():  # a name of a model that ships in the package
        path = SHIPPED[str(model_dir)]
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: no config.json; not a model directory")
    device, dtype = resolve_device_dtype(device, dtype)
    if is_parts_dir(path):  # small shipped deltas over packaged backbones
        model, processor = load_parts(path, dtype)
        model.to(device)
    else:
        check_shards(path)
        model = InfLlavaForConditionalGeneration.from_pretrained(path, dtype=dtype).to(device).eval()
        processor = InfLlavaProcessor.from_pretrained(path)
    _set_stop_tokens(model, processor)
    return model, processor


def _set_stop_tokens(model, processor) -> None:
    """Generation stops at the template's end-of-turn token as well as the tokenizer's EOS."""
    tok = processor.tokenizer
    ids = set()
    eos = model.generation_config.eos_token_id
    ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tok.eos_token_id is not None:
        ids.add(tok.eos_token_id)
    vocab = tok.get_vocab()
    ids.update(vocab[s] for s in STOP_STRINGS if s in vocab)
    model.generation_config.eos_token_id = sorted(ids)
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else sorted(ids)[0]


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


class ChatSession:
    """A multi-turn conversation about (at most) one image, whose features are computed once."""

    def __init__(self, model: InfLlavaForConditionalGeneration, processor: InfLlavaProcessor, image=None,
                 max_new_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0):
        self.model, self.processor = model, processor
        self.messages: list[dict] = []
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p
        self.image = None
        self.image_features = None
        if image is not None:
            self.set_image(image)

    def set_image(self, image) -> None:
        """Use a new image (path, bytes or PIL); the conversation starts over."""
        self.image = load_image(image) if not hasattr(image, "convert") else image
        pixels = self.processor.image_processor([self.image])
        p = next(self.model.parameters())
        with torch.inference_mode():
            self.image_features = self.model.image_tokens(pixels.to(p.device, p.dtype))
        self.messages = []

    def reset(self) -> None:
        self.messages = []

    def ask(self, question: str, on_text: Callable[[str], None] | None = None) -> str:
        """Answer one user turn; `on_text` receives the answer piece by piece as it is generated."""
        messages = self.messages + [{"role": "user", "content": question}]
        n_images = 0 if self.image is None else 1
        prompt = self.processor.chat_prompt(messages, num_images=n_images)
        proc = self.processor
        ids = tokenize_with_images(prompt, proc.tokenizer, proc.image_token_id, proc.num_image_tokens)
        device = next(self.model.parameters()).device
        input_ids = torch.tensor([ids], device=device)
        attention_mask = torch.ones_like(input_ids)
        with torch.inference_mode():
            embeds = self.model.embed_inputs(input_ids, image_features=self.image_features if n_images else None)
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
    """One question about one image (greedy)."""
    return ChatSession(model, processor, image, max_new_tokens=max_new_tokens).ask(question, on_text)
