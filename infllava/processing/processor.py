"""`InfLlavaProcessor`: conversations / prompts + images -> model inputs, a transformers `ProcessorMixin`.

It owns an `InfLlavaImageProcessor` and the tokenizer (`AutoProcessor.from_pretrained(DIR)` returns it once
`infllava` is imported), renders conversations with the template registry (`infllava.templates`), expands
each "<image>" to `num_image_tokens` image tokens and checks that placeholders and images agree.

    processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image", "path": "a.jpg"}, {"type": "text", "text": "What is it?"}]}],
        add_generation_prompt=True, tokenize=True, return_dict=True)
    # -> {"input_ids", "attention_mask", "pixel_values"}

Images in content parts may be given as `{"type": "image", "image" | "path" | "url": ...}` (a PIL image, a
path, bytes; "url" takes a local path or a `file://` URL: nothing is downloaded) and fill the placeholders
in order. Several images per conversation and per turn are fine.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin

from ..templates import (
    IMAGE_TOKEN,
    content_text,
    first_user_content_offset,
    get_template,
    processor_chat_template,
    render,
    render_with_content_spans,
    stop_token_ids,
    with_image_placeholders,
)
from .image_processor import InfLlavaImageProcessor
from .images import is_single_image
from .tokens import ensure_image_token, tokenize_with_images

PROCESSOR_CONFIG_NAME = "processor_config.json"


class InfLlavaProcessor(ProcessorMixin):
    """Prompts + images -> `input_ids`, `attention_mask`, `pixel_values`.

    Args:
        image_processor: an `InfLlavaImageProcessor`.
        tokenizer: a transformers tokenizer; "<image>" is added to it as a special token with id
            `image_token_id` if it lacks it (`tokens.ensure_image_token`).
        image_token_id: id written at image-feature positions (may lie outside the LM vocabulary).
        num_image_tokens: feature tokens per image (each "<image>" expands to this many ids).
        template: a name of the template registry ("llama3", "plain", "chat_template", ...).
        chat_template: ignored when given: derived from `template` (one place for templates).
    """

    attributes = ["image_processor", "tokenizer"]
    image_processor_class = "AutoImageProcessor"
    tokenizer_class = "AutoTokenizer"

    def __init__(
        self,
        image_processor: InfLlavaImageProcessor | None = None,
        tokenizer: Any = None,
        image_token_id: int | None = None,
        num_image_tokens: int | None = None,
        template: str = "llama3",
        chat_template: str | None = None,
        image_token: str = IMAGE_TOKEN,
        **kwargs: Any,
    ) -> None:
        kwargs.pop("processor_class", None)
        if kwargs:
            raise TypeError(f"InfLlavaProcessor got unknown settings {sorted(kwargs)}")
        if image_processor is None or tokenizer is None:
            raise ValueError("InfLlavaProcessor needs an image_processor and a tokenizer")
        if isinstance(image_processor, Mapping):  # the nested form of processor_config.json
            image_processor = InfLlavaImageProcessor(**image_processor)
        if image_token_id is None or num_image_tokens is None:
            raise ValueError("InfLlavaProcessor needs image_token_id and num_image_tokens (see InfLlavaConfig)")
        if int(num_image_tokens) < 1:
            raise ValueError(f"num_image_tokens must be >= 1, got {num_image_tokens}")
        get_template(template)
        if image_token != IMAGE_TOKEN:
            raise ValueError(f"image_token must be {IMAGE_TOKEN!r}, got {image_token!r}")
        self.image_token = IMAGE_TOKEN
        self.image_token_id = int(image_token_id)
        self.num_image_tokens = int(num_image_tokens)
        self._template = template
        ensure_image_token(tokenizer, self.image_token_id)
        super().__init__(image_processor, tokenizer, chat_template=processor_chat_template(template, tokenizer))

    @classmethod
    def from_config(cls, config: Any, tokenizer: Any, **image_processor_overrides: Any) -> "InfLlavaProcessor":
        """Build from an `InfLlavaConfig` and a tokenizer."""
        return cls(
            InfLlavaImageProcessor.from_config(config, **image_processor_overrides),
            tokenizer,
            image_token_id=config.image_token_id,
            num_image_tokens=config.num_image_tokens,
            template=config.template,
        )

    # ---- the template ----
    @property
    def template(self) -> str:
        return self._template

    @template.setter
    def template(self, name: str) -> None:
        get_template(name)
        self._template = name
        self.chat_template = processor_chat_template(name, self.tokenizer)

    @property
    def stop_token_ids(self) -> list[int]:
        """Ids that end an answer: the template's stop tokens and the tokenizer's eos."""
        ids = set(stop_token_ids(self.template, self.tokenizer))
        if self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        return sorted(ids)

    # ---- engines' hooks (transformers / vLLM) ----
    def replace_image_token(self, image_inputs: dict | None = None, image_idx: int = 0, **kwargs: Any) -> str:
        return self.image_token * self.num_image_tokens

    def _get_num_multimodal_tokens(self, image_sizes=None, **kwargs: Any):
        from transformers.processing_utils import MultiModalData

        data = {}
        if image_sizes is not None:
            data = {"num_image_tokens": [self.num_image_tokens] * len(image_sizes),
                    "num_image_patches": [1] * len(image_sizes)}
        return MultiModalData(**data)

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "pixel_values"]

    # ---- prompts ----
    def build_prompt(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True) -> str:
        """The conversation rendered with this processor's template."""
        return render(messages, self.template, self.tokenizer, add_generation_prompt)

    def chat_prompt(
        self, messages: Sequence[Mapping[str, Any]], num_images: int = 0, add_generation_prompt: bool = True
    ) -> str:
        """The prompt of one conversation that comes with `num_images` images.

        If images come with it and no message holds "<image>" (as text or an image part), one "<image>\n" per
        image is put at the start of the first user message (LLaVA's convention for one image). The messages
        are not modified.
        """
        return self._render(messages, num_images, add_generation_prompt)[0]

    def _render(self, messages, num_images: int, add_generation_prompt: bool = True):
        """(prompt, spans of the messages' text in it) of one conversation with `num_images` images."""
        return render_with_content_spans(with_image_placeholders(messages, num_images), self.template,
                                         self.tokenizer, add_generation_prompt)

    def _insert_placeholder(self, prompt: str) -> str:
        """Put "<image>\n" at the start of the first user message of a prompt this template rendered (at the
        start of the text when the prompt does not look like one)."""
        pos = first_user_content_offset(prompt, self.template, self.tokenizer)
        return prompt[:pos] + IMAGE_TOKEN + "\n" + prompt[pos:]

    def _placed(self, prompt: str, num_images: int) -> str:
        """`prompt` with "<image>\n" inserted when it has no placeholder and comes with exactly one image."""
        return self._insert_placeholder(prompt) if num_images == 1 and IMAGE_TOKEN not in prompt else prompt

    def _assign_images(self, prompts: list[str], images: Any) -> list[list[Any]]:
        """Split `images` into one list per prompt (see `__call__`)."""
        n = len(prompts)
        if images is None:
            return [[] for _ in prompts]
        if is_single_image(images):
            images = [images]
        if not isinstance(images, Sequence):
            raise TypeError(f"images must be an image, a list of images or a list per prompt, got {type(images).__name__}")
        images = list(images)
        nested = any(x is None or (isinstance(x, Sequence) and not is_single_image(x)) for x in images)
        if nested:
            if len(images) != n:
                raise ValueError(f"images given per prompt must have one entry per prompt: {len(images)} entries for {n} prompts")
            return [[] if e is None else [e] if is_single_image(e) else list(e) for e in images]
        if n == 1:
            return [images]
        counts = [p.count(IMAGE_TOKEN) for p in prompts]
        if sum(counts) == 0 and len(images) == n:
            return [[im] for im in images]  # one image per prompt, placeholders inserted later
        if sum(counts) != len(images):
            raise ValueError(
                f"the prompts contain {sum(counts)} '{IMAGE_TOKEN}' placeholder(s) in total but "
                f"{len(images)} image(s) were given"
            )
        out, start = [], 0
        for c in counts:
            out.append(images[start: start + c])
            start += c
        return out

    def __call__(
        self,
        images: Any = None,
        text: str | Sequence[str] | None = None,
        videos: Any = None,
        audio: Any = None,
        padding_side: Literal["left", "right"] = "left",
        return_tensors: Literal["pt"] | None = "pt",
        add_special_tokens: bool = True,
        return_mm_token_type_ids: bool = False,
        return_text_replacement_offsets: bool = False,
        **kwargs: Any,
    ) -> BatchFeature:
        """Tokenize prompts and preprocess their images (transformers' processor call).

        Args:
            images: None; one image; a flat list of images, consumed in placeholder order across the
                prompts; or a list with one entry per prompt (an image, a list of images or None). A flat
                list of exactly one image per prompt where no prompt has a placeholder is taken as one image
                per prompt.
            text: one prompt or a list of prompts. Given first and positionally (the order of infllava
                before 0.2) it is recognised; pass both by keyword when in doubt.
            padding_side: "left" (default, for batched generation) or "right".
            return_tensors: "pt" for torch tensors, None for python lists (`pixel_values` is a tensor
                either way).
            add_special_tokens: the tokenizer adds its own special tokens (BOS...) to each prompt; False for
                a prompt a template rendered (`apply_chat_template(tokenize=True)` passes False).
            return_mm_token_type_ids: also return `mm_token_type_ids` (1 at image tokens), as vLLM asks.
            return_text_replacement_offsets: also return `text_replacement_offsets`, per prompt a list with one
                dict per "<image>" (`type` "image", `span` and `new_span` its character span in the prompt
                and in the prompt written out, `text`, `replacement` the "<image>" x num_image_tokens text),
                transformers' format, which vLLM's Transformers backend reads to place each image's tokens.
                Spans refer to the prompt after a placeholder was inserted (see below).

        A prompt with no "<image>" that gets exactly one image has "<image>\n" inserted at the start of its
        first user message. Every other mismatch between placeholders and images raises ValueError naming
        both counts.

        Returns:
            BatchFeature with `input_ids` [B, L] (long), `attention_mask` [B, L] (long, 0 on padding) and, when
            there are images, `pixel_values` [N_images, 3, H, W] in placeholder order.
        """
        if _looks_like_text_first(images, text):
            images, text = text, images
        if videos is not None or audio is not None:
            raise ValueError("InfLlavaProcessor takes images and text only (no videos or audio)")
        if kwargs.pop("truncation", None):
            raise ValueError("truncation is not supported: it could cut an image's tokens")
        for unused in ("padding", "max_length", "return_attention_mask", "images_kwargs", "text_kwargs"):
            kwargs.pop(unused, None)
        if kwargs:
            raise TypeError(f"InfLlavaProcessor() got unknown arguments {sorted(kwargs)}")
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        if return_tensors not in ("pt", None):
            raise ValueError(f"return_tensors must be 'pt' or None, got {return_tensors!r}")
        prompts = [text] if isinstance(text, str) else list(text or [])
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError("text must be a prompt string or a non-empty list of prompt strings")
        per_prompt = self._assign_images(prompts, images)
        out = self._encode(prompts, per_prompt, padding_side, return_tensors, add_special_tokens,
                           return_mm_token_type_ids)
        if return_text_replacement_offsets:  # set after tensor conversion: a list of dicts stays one
            out["text_replacement_offsets"] = [self._replacement_offsets(self._placed(p, len(im)))
                                               for p, im in zip(prompts, per_prompt)]
        return out

    def _replacement_offsets(self, prompt: str) -> list[dict[str, Any]]:
        """Where each "<image>" of `prompt` is, before and after it is written out `num_image_tokens` times."""
        replacement = self.replace_image_token()
        grow = len(replacement) - len(IMAGE_TOKEN)
        out, start = [], prompt.find(IMAGE_TOKEN)
        while start >= 0:
            new = start + grow * len(out)
            out.append({"type": "image", "span": (start, start + len(IMAGE_TOKEN)),
                        "new_span": (new, new + len(replacement)), "text": IMAGE_TOKEN, "replacement": replacement})
            start = prompt.find(IMAGE_TOKEN, start + len(IMAGE_TOKEN))
        return out

    def _encode(self, prompts: list[str], per_prompt: list[list[Any]], padding_side: str = "left",
                return_tensors: str | None = "pt", add_special_tokens: bool = True,
                return_mm_token_type_ids: bool = False, literal_spans: list | None = None) -> BatchFeature:
        all_images: list[Any] = []
        sequences: list[list[int]] = []
        for i, (prompt, imgs) in enumerate(zip(prompts, per_prompt)):
            prompt = self._placed(prompt, len(imgs))
            count = prompt.count(IMAGE_TOKEN)
            if count != len(imgs):
                which = f"prompt {i}" if len(prompts) > 1 else "the prompt"
                raise ValueError(
                    f"{which} has {count} '{IMAGE_TOKEN}' placeholder(s) but {len(imgs)} image(s) were given for it"
                )
            all_images.extend(imgs)
            spans = literal_spans[i] if literal_spans and prompt == prompts[i] else None
            sequences.append(tokenize_with_images(prompt, self.tokenizer, self.image_token_id, self.num_image_tokens,
                                                  add_special_tokens=add_special_tokens, literal_spans=spans))
        out = self.pad(sequences, padding_side)
        if return_mm_token_type_ids:
            out["mm_token_type_ids"] = [[int(t == self.image_token_id) for t in row] for row in out["input_ids"]]
        if all_images:
            out["pixel_values"] = self.image_processor.pixels(all_images)
        return BatchFeature(out, tensor_type=return_tensors)

    def tokenize_chats(self, conversations: Sequence[Sequence[Mapping[str, Any]]], num_images: Sequence[int],
                       padding_side: Literal["left", "right"] = "left", add_generation_prompt: bool = True,
                       return_tensors: Literal["pt"] | None = "pt") -> BatchFeature:
        """Ids of conversations (each with that many images, placeholders inserted as `chat_prompt` does),
        without the images themselves: for callers that bring the images' features (a chat session,
        evaluation with cached features). Special-token text in the messages stays text."""
        seqs = []
        for conv, n in zip(conversations, num_images):
            prompt, spans = self._render(conv, n, add_generation_prompt)
            _refuse_unprotectable(prompt, spans, conv, self.tokenizer)
            seqs.append(tokenize_with_images(prompt, self.tokenizer, self.image_token_id, self.num_image_tokens,
                                             add_special_tokens=False, literal_spans=spans))
        return BatchFeature(self.pad(seqs, padding_side), tensor_type=return_tensors)

    @property
    def pad_token_id(self) -> int | None:
        """Padding id: the tokenizer's pad id, or its eos id when it has none."""
        pad = getattr(self.tokenizer, "pad_token_id", None)
        if pad is None:
            pad = getattr(self.tokenizer, "eos_token_id", None)
        return pad

    def pad(self, sequences: list[list[int]], side: str = "left") -> dict[str, list[list[int]]]:
        """{"input_ids", "attention_mask"} of id sequences padded to the longest (pad id: `pad_token_id`)."""
        longest = max(len(s) for s in sequences)
        pad = self.pad_token_id
        if pad is None and any(len(s) != longest for s in sequences):
            raise ValueError("cannot pad the batch: the tokenizer has neither a pad nor an eos token id")
        ids, mask = [], []
        for s in sequences:
            n = longest - len(s)
            if side == "left":
                ids.append([pad] * n + s)
                mask.append([0] * n + [1] * len(s))
            else:
                ids.append(s + [pad] * n)
                mask.append([1] * len(s) + [0] * n)
        return {"input_ids": ids, "attention_mask": mask}

    def apply_chat_template(
        self,
        conversation: Sequence[Mapping[str, Any]] | Sequence[Sequence[Mapping[str, Any]]],
        chat_template: str | None = None,
        add_generation_prompt: bool = True,
        tokenize: bool = False,
        return_dict: bool = False,
        images: Any = None,
        padding_side: Literal["left", "right"] = "left",
        return_tensors: Literal["pt"] | None = "pt",
        **kwargs: Any,
    ):
        """Render one conversation or a batch of them with the template; optionally tokenize.

        Messages follow transformers' format: `content` a string (with "<image>" placeholders) or a list of
        parts, `{"type": "text", "text": ...}` and `{"type": "image"}` carrying its image under "image",
        "path" or "url" (a local path or file:// URL). Images in parts fill the placeholders in order;
        `images` may give them instead (an image or a list for one conversation, one entry per conversation
        for a batch). A conversation with images but no placeholder gets "<image>\\n" at the start of its
        first user message.

        Returns: the prompt text (a list for a batch) when `tokenize` is False; else the input ids (a list
        of lists) or, with `return_dict`, the dict of `__call__` (`input_ids`, `attention_mask`,
        `pixel_values`).
        """
        if chat_template is not None:
            raise ValueError("InfLlavaProcessor renders with its template registry entry; set `template` instead "
                             "of passing chat_template")
        for unused in ("continue_final_message", "tools", "documents"):
            if kwargs.get(unused):
                raise ValueError(f"{unused} is not supported by InfLlavaProcessor.apply_chat_template")
            kwargs.pop(unused, None)
        batched = len(conversation) > 0 and not isinstance(conversation[0], Mapping)
        conversations = [list(c) for c in conversation] if batched else [list(conversation)]
        part_images = [_images_in_parts(c) for c in conversations]
        if images is not None:
            if any(part_images):
                raise ValueError("give images either in the messages' content parts or as `images`, not both")
            if not batched:
                part_images = [[images] if is_single_image(images) else list(images)]
            else:
                if is_single_image(images) or len(images) != len(conversations):
                    raise ValueError("for a batch of conversations, give images as a list with one entry per conversation")
                part_images = [[] if e is None else [e] if is_single_image(e) else list(e) for e in images]
        rendered = [self._render(conv, len(imgs), add_generation_prompt) for conv, imgs in zip(conversations, part_images)]
        prompts = [p for p, _ in rendered]
        if not tokenize:
            return prompts if batched else prompts[0]
        for (prompt, spans), conv in zip(rendered, conversations):
            _refuse_unprotectable(prompt, spans, conv, self.tokenizer)
        return_mm = kwargs.pop("return_mm_token_type_ids", False)
        for unused in ("padding", "truncation", "max_length", "return_attention_mask"):
            kwargs.pop(unused, None)
        if kwargs:
            raise TypeError(f"apply_chat_template() got unknown arguments {sorted(kwargs)}")
        enc = self._encode(prompts, [list(x) for x in part_images], padding_side, return_tensors,
                           add_special_tokens=False, return_mm_token_type_ids=return_mm,
                           literal_spans=[spans for _, spans in rendered])
        if return_dict:
            return enc
        ids = enc["input_ids"]
        return ids.tolist() if hasattr(ids, "tolist") else ids

    def apply_chat(self, messages, images: Any = None, add_generation_prompt: bool = True,
                   padding_side: Literal["left", "right"] = "left",
                   return_tensors: Literal["pt"] | None = "pt") -> dict[str, Any]:
        """`apply_chat_template(..., tokenize=True, return_dict=True)` (the name of infllava before 0.2)."""
        return self.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=True,
                                        return_dict=True, images=images, padding_side=padding_side,
                                        return_tensors=return_tensors)

    # ---- serialisation ----
    def to_dict(self) -> dict[str, Any]:
        """The content of processor_config.json."""
        return {
            "processor_class": type(self).__name__,
            "image_processor": self.image_processor.to_dict(),
            "image_token_id": self.image_token_id,
            "num_image_tokens": self.num_image_tokens,
            "template": self.template,
        }

    def save_pretrained(self, save_directory, **kwargs: Any) -> list[str]:
        """processor_config.json (image processor settings nested), the tokenizer files (with "<image>") and
        chat_template.jinja (the template's Jinja, the form engines render)."""
        path = Path(save_directory)
        path.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(str(path))
        (path / "chat_template.jinja").write_text(self.chat_template, encoding="utf-8")
        out = path / PROCESSOR_CONFIG_NAME
        out.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return [str(out)]

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, tokenizer: Any = None, **kwargs: Any) -> "InfLlavaProcessor":
        """Load what `save_pretrained` wrote (and the processor_config.json of earlier infllava versions).

        The tokenizer comes from the directory (`AutoTokenizer`) unless `tokenizer` is given. Raises
        FileNotFoundError when the directory has no processor_config.json."""
        from transformers import AutoTokenizer

        path = Path(pretrained_model_name_or_path)
        cfg_file = path / PROCESSOR_CONFIG_NAME
        if not cfg_file.is_file():
            raise FileNotFoundError(
                f"{cfg_file} not found: {path} is not an InfLlavaProcessor directory (create one with "
                f"InfLlavaProcessor.save_pretrained, or build it with InfLlavaProcessor.from_config)"
            )
        try:
            data = json.loads(cfg_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ValueError(f"{cfg_file} is not readable JSON ({e})") from e
        image_settings = data.get("image_processor")
        if image_settings is None and (path / "preprocessor_config.json").is_file():
            image_settings = json.loads((path / "preprocessor_config.json").read_text(encoding="utf-8"))
        if not isinstance(image_settings, Mapping):
            raise ValueError(f"{cfg_file}: no image processor settings")
        for key in ("trust_remote_code", "_from_auto", "cache_dir", "local_files_only", "revision", "token"):
            kwargs.pop(key, None)
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(str(path), **kwargs)
        return cls(
            InfLlavaImageProcessor(**image_settings),
            tokenizer,
            image_token_id=data["image_token_id"],
            num_image_tokens=data["num_image_tokens"],
            template=data.get("template", "llama3"),
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(template={self.template!r}, image_token_id={self.image_token_id}, "
            f"num_image_tokens={self.num_image_tokens}, image_processor={self.image_processor!r}, "
            f"tokenizer={type(self.tokenizer).__name__})"
        )


def _refuse_unprotectable(prompt: str, spans, conversation, tokenizer) -> None:
    """When a template transforms message contents (so their spans cannot be found), refuse a message that
    spells out a control token rather than let it act as one."""
    if spans is not None:
        return
    control = [t.content for t in tokenizer.added_tokens_decoder.values() if t.special and t.content != IMAGE_TOKEN]
    for msg in conversation:
        text = content_text(msg.get("content"))
        found = next((c for c in control if c in text), None)
        if found:
            raise ValueError(f"a {msg.get('role')} message holds the control token {found!r}, which this template "
                             f"cannot keep as plain text: remove it")


def _is_text(x: Any) -> bool:
    return isinstance(x, str) or (isinstance(x, (list, tuple)) and bool(x) and all(isinstance(t, str) for t in x))


def _looks_like_text_first(images: Any, text: Any) -> bool:
    """Whether a call passed (text, images) positionally, infllava's order before 0.2: the first argument
    holds prompts and the second images (or nothing)."""
    if not _is_text(images):
        return False
    if text is None or not _is_text(text):
        return True
    prompts = [images] if isinstance(images, str) else images
    others = [text] if isinstance(text, str) else text
    return any(IMAGE_TOKEN in p for p in prompts) and not any(IMAGE_TOKEN in p for p in others)


def _images_in_parts(conversation: Sequence[Mapping[str, Any]]) -> list[Any]:
    """The images carried by a conversation's image parts, in order (parts without one are placeholders)."""
    out = []
    for msg in conversation:
        content = msg.get("content") if isinstance(msg, Mapping) else None
        if not isinstance(content, (list, tuple)):
            continue
        for part in content:
            if not isinstance(part, Mapping) or part.get("type") not in ("image", "image_url"):
                continue
            src = part.get("image", part.get("path", part.get("url")))
            if part.get("type") == "image_url":
                src = part.get("image_url")
                src = src.get("url") if isinstance(src, Mapping) else src
            if src is None:
                continue
            if isinstance(src, str) and src.startswith("file://"):
                src = src[len("file://"):]
            elif isinstance(src, str) and "://" in src.split("?")[0][:12]:
                raise ValueError(f"image {src[:60]!r}: only local paths and file:// URLs are read (nothing is downloaded)")
            out.append(src)
    return out
