"""Image loading, image preprocessing, prompt templates and the text+image processor of INF-LLaVA.

Pipeline (what the official INF-LLaVA / LLaVA code does, written from its description):

1. `load_image`: open a path / bytes / PIL image into an 8-bit RGB PIL image, with clear errors
   (`ImageLoadError`) for unreadable, truncated or oversized files, EXIF orientation applied, and
   every common PIL mode (palette, alpha, CMYK, 16-bit, float, 1-bit) mapped to RGB.
2. `InfLlavaImageProcessor`: pad the image with the mean colour to the aspect ratio of the crop grid
   (`expand2square` for the official square grid), bicubic-resize it to the model input
   (n_h * S, n_w * S), scale to [0, 1], normalise with the tower's mean/std, CHW float32.
3. `build_prompt`: the conversation templates ("llama3" = LLaVA's MPT separator style with the
   LLaMA-3 headers, "plain" = stage-1 captioning, "chat_template" = the tokenizer's own template).
4. `tokenize_with_images`: LLaVA's `tokenizer_image_token` semantics, with every "<image>"
   placeholder expanded to the run of `num_image_tokens` image-token ids the model replaces.
5. `InfLlavaProcessor`: text + images -> `input_ids`, `attention_mask`, `pixel_values`, with
   placeholder/image count checks, left (generation) or right padding, and save/load.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_PLACEHOLDER",
    "LLAMA3_SYSTEM",
    "LLAMA3_USER",
    "LLAMA3_ASSISTANT",
    "LLAMA3_SEP",
    "TEMPLATES",
    "PROCESSOR_CONFIG_NAME",
    "ImageLoadError",
    "ImageInput",
    "load_image",
    "expand2square",
    "expand_to_aspect",
    "mean_fill_color",
    "InfLlavaImageProcessor",
    "build_prompt",
    "tokenize_with_images",
    "InfLlavaProcessor",
]

#: Default pixel budget of `load_image` (width * height), checked from the header before decoding.
DEFAULT_MAX_PIXELS = 100_000_000

#: The text placeholder that stands for one image in a prompt.
IMAGE_PLACEHOLDER = "<image>"

LLAMA3_SYSTEM = (
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
LLAMA3_USER = "<|start_header_id|>user<|end_header_id|>\n\n"
LLAMA3_ASSISTANT = "<|start_header_id|>assistant<|end_header_id|>\n\n"
LLAMA3_SEP = "<|eot_id|>"

TEMPLATES = ("llama3", "plain", "chat_template")

#: File written by `InfLlavaProcessor.save_pretrained` next to the tokenizer files.
PROCESSOR_CONFIG_NAME = "processor_config.json"

ImageInput = Union[str, os.PathLike, bytes, bytearray, Image.Image]

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_ALPHA_OR_PALETTE_MODES = ("LA", "La", "PA", "RGBA", "RGBa", "P")


# --------------------------------------------------------------------------------------------
# Image loading
# --------------------------------------------------------------------------------------------


class ImageLoadError(ValueError):
    """An image could not be loaded: unreadable, not an image, truncated, too large, odd mode."""


def _describe_source(src: Any) -> str:
    """Human-readable name of an image source for error messages."""
    if isinstance(src, (str, os.PathLike)):
        return str(src)
    if isinstance(src, (bytes, bytearray)):
        return f"<{len(src)} bytes>"
    if isinstance(src, Image.Image):
        return f"<PIL image {src.mode} {src.size[0]}x{src.size[1]}>"
    name = getattr(src, "name", None)
    return str(name) if isinstance(name, str) else f"<{type(src).__name__}>"


def _check_pixels(width: int, height: int, max_pixels: int | None, name: str) -> None:
    if max_pixels is not None and width * height > max_pixels:
        raise ImageLoadError(
            f"cannot load {name}: it is {width}x{height} = {width * height:,} pixels, above the limit "
            f"max_pixels={max_pixels:,}. If the image is trusted, pass a larger `max_pixels` "
            f"(or max_pixels=None to disable the check) to load_image / InfLlavaImageProcessor."
        )


def _bomb_error(name: str, exc: Exception) -> ImageLoadError:
    return ImageLoadError(
        f"cannot load {name}: {exc} This is Pillow's own limit (PIL.Image.MAX_IMAGE_PIXELS = "
        f"{Image.MAX_IMAGE_PIXELS}). If the image is trusted, raise both the `max_pixels` argument "
        f"of load_image / InfLlavaImageProcessor and PIL.Image.MAX_IMAGE_PIXELS."
    )


def _high_bit_depth_to_l(img: Image.Image) -> Image.Image:
    """16-bit ('I;16*', 'I') and float ('F') grayscale -> 8-bit 'L' by scaling, not clipping.

    * 16-bit modes: value / 257, rounded (65535 -> 255, 257*k -> k).
    * 'I' (32-bit signed): interpreted as 16-bit data (what PNG/TIFF 16-bit grayscale holds), scaled
      the same way; values outside [0, 65535] saturate.
    * 'F': Pillow's own convention for float images (the same scale as 'L', 0..255), rounded,
      NaN -> 0, saturated outside [0, 255]. No data-dependent rescaling: equal pixels always give
      equal outputs.
    """
    arr = np.asarray(img)
    if img.mode == "F":
        out = np.nan_to_num(arr.astype(np.float32), nan=0.0, posinf=255.0, neginf=0.0)
        out = np.clip(np.rint(out), 0, 255)
    else:
        # exact integer rounding of x / 257 (x / 257 is never exactly k + 1/2: 257 is odd)
        out = (np.clip(arr, 0, 65535).astype(np.int32) + 128) // 257
    return Image.fromarray(out.astype(np.uint8))


def _to_rgb(img: Image.Image, name: str = "<image>") -> Image.Image:
    """Convert any PIL mode to 8-bit RGB (always a new image)."""
    mode = img.mode
    try:
        if mode == "RGB":
            return img.copy()
        if mode in _SIXTEEN_BIT_MODES or mode in ("I", "F"):
            return _high_bit_depth_to_l(img).convert("RGB")
        if mode in _ALPHA_OR_PALETTE_MODES:
            # Alpha is dropped, not composited: the colour under a transparent pixel is kept, exactly
            # as the official LLaVA loading `Image.open(f).convert('RGB')` does. Going through RGBA
            # first resolves palettes / transparency uniformly (and avoids Pillow's
            # palette-transparency warning). Premultiplied modes (La, RGBa) are un-premultiplied.
            if mode == "La":
                img = img.convert("LA")
            return img.convert("RGBA").convert("RGB")
        return img.convert("RGB")
    except (ValueError, OSError) as exc:
        raise ImageLoadError(f"cannot load {name}: unsupported image mode {mode!r} ({exc})") from exc


def load_image(src: ImageInput | Any, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Load an image as an 8-bit RGB PIL image.

    Args:
        src: a path (str / os.PathLike), the encoded file as bytes, an open binary file object, or a
            PIL image.
        max_pixels: reject images with more than this many pixels (width * height), checked from the
            header before any pixel is decoded; None disables the check (Pillow's own
            `PIL.Image.MAX_IMAGE_PIXELS` decompression-bomb limit still applies).

    Behaviour:
        * the image is fully decoded (`Image.load()`), so a truncated file fails here, not later;
        * the EXIF orientation is applied (`ImageOps.exif_transpose`);
        * modes map to RGB: L / 1 / CMYK / YCbCr via Pillow; P, PA, LA, RGBA drop alpha (no
          compositing, as the official `convert('RGB')`); 16-bit (I;16, I;16B, I) scaled by 1/257;
          F on Pillow's 0..255 scale. Multi-frame files give their first frame.
        * a PIL image input is never modified; a new image is returned.

    Raises:
        ImageLoadError: naming the source and the reason (missing / unreadable file, not an image,
            truncated or corrupt data, too many pixels, unsupported mode).
    """
    name = _describe_source(src)
    if isinstance(src, Image.Image):
        img = src
        _check_pixels(img.width, img.height, max_pixels, name)
        try:
            img.load()
        except (OSError, SyntaxError, ValueError) as exc:
            raise ImageLoadError(f"cannot load {name}: decoding failed ({exc})") from exc
        return _finish(img, name)

    if isinstance(src, (bytes, bytearray)):
        fp: Any = io.BytesIO(bytes(src))
    elif isinstance(src, (str, os.PathLike)):
        fp = os.fspath(src)
    elif hasattr(src, "read"):
        fp = src
    else:
        raise TypeError(
            f"load_image expects a path, bytes, a binary file object or a PIL image, got {type(src).__name__}"
        )

    try:
        # Our own `max_pixels` check governs: Pillow's decompression-bomb *warning* zone (above
        # PIL.Image.MAX_IMAGE_PIXELS, below twice that) is silenced when max_pixels allows such sizes.
        pil_limit = Image.MAX_IMAGE_PIXELS
        silence = max_pixels is not None and pil_limit is not None and max_pixels > pil_limit
        with warnings.catch_warnings() if silence else contextlib.nullcontext():
            if silence:
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(fp)
            try:
                _check_pixels(img.width, img.height, max_pixels, name)
                img.load()  # full decode: catches truncation and corrupt data now
                return _finish(img, name)
            finally:
                if fp is not src:  # we opened it (path / bytes); a caller's file object stays open
                    img.close()
    except ImageLoadError:
        raise
    except Image.DecompressionBombError as exc:
        raise _bomb_error(name, exc) from exc
    except FileNotFoundError as exc:
        raise ImageLoadError(f"cannot load {name}: file not found") from exc
    except IsADirectoryError as exc:
        raise ImageLoadError(f"cannot load {name}: it is a directory") from exc
    except PermissionError as exc:
        raise ImageLoadError(f"cannot load {name}: permission denied") from exc
    except UnidentifiedImageError as exc:
        raise ImageLoadError(f"cannot load {name}: not a recognised image file") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # Pillow reports truncated / corrupt data as OSError ("image file is truncated", ...).
        raise ImageLoadError(f"cannot load {name}: the file is truncated or corrupt ({exc})") from exc


def _finish(img: Image.Image, name: str) -> Image.Image:
    """Apply the EXIF orientation, then convert to RGB (always returns a new, detached image)."""
    try:
        img = ImageOps.exif_transpose(img)
    except Exception as exc:  # noqa: BLE001 - a broken EXIF block must not make the pixels unusable
        warnings.warn(f"{name}: could not apply the EXIF orientation ({exc}); using the stored orientation")
    return _to_rgb(img, name)


# --------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------


def mean_fill_color(image_mean: Sequence[float]) -> tuple[int, int, int]:
    """Pad colour of LLaVA's expand2square: `int(m * 255)` per channel ((122, 116, 104) for CLIP)."""
    if len(image_mean) != 3:
        raise ValueError(f"image_mean must have 3 values, got {list(image_mean)}")
    return tuple(int(m * 255) for m in image_mean)  # type: ignore[return-value]


def expand_to_aspect(img: Image.Image, aspect: tuple[int, int], fill: Sequence[int]) -> Image.Image:
    """Pad `img` with `fill` to the aspect ratio width:height = aspect[0]:aspect[1], centred.

    Only one side grows: a too-wide image gets rows added (pasted at y = (new_h - h) // 2), a
    too-tall one gets columns (pasted at x = (new_w - w) // 2). The grown side is rounded to the
    nearest pixel. For aspect (1, 1) this is exactly `expand2square`. Returns `img` itself when the
    ratio already matches.
    """
    aw, ah = int(aspect[0]), int(aspect[1])
    if aw < 1 or ah < 1:
        raise ValueError(f"aspect must be two positive integers, got {aspect!r}")
    if img.mode != "RGB":
        img = _to_rgb(img)
    fill = tuple(int(c) for c in fill)
    if len(fill) != 3:
        raise ValueError(f"fill must be an RGB triple, got {fill!r}")
    w, h = img.size
    if w * ah == h * aw:
        return img
    if w * ah > h * aw:  # too wide: add rows
        new_w, new_h = w, (2 * w * ah + aw) // (2 * aw)
        offset = (0, (new_h - h) // 2)
    else:  # too tall: add columns
        new_w, new_h = (2 * h * aw + ah) // (2 * ah), h
        offset = ((new_w - w) // 2, 0)
    out = Image.new("RGB", (new_w, new_h), fill)
    out.paste(img, offset)
    return out


def expand2square(img: Image.Image, fill: Sequence[int]) -> Image.Image:
    """Pad to a square of side max(w, h) with `fill`, centred as LLaVA does.

    w > h: pasted at (0, (w - h) // 2); h > w: pasted at ((h - w) // 2, 0); square: returned as is.
    """
    return expand_to_aspect(img, (1, 1), fill)


# --------------------------------------------------------------------------------------------
# Image processor
# --------------------------------------------------------------------------------------------


class InfLlavaImageProcessor:
    """Images -> normalised float tensor [B, 3, n_h * S, n_w * S] for the INF-LLaVA model.

    Args:
        size: input side S of the vision tower (one crop).
        grid: (n_h, n_w) crops per side; the output is n_h * S pixels high and n_w * S wide.
        image_mean, image_std: per-channel normalisation (of values in [0, 1]).
        aspect_mode: "pad" (official): pad with the mean colour to the grid's aspect ratio n_w:n_h
            (a square for the official 3x3 grid, i.e. LLaVA's expand2square) then bicubic resize;
            "resize": bicubic resize straight to the target, distorting the aspect ratio.
        pad_color: RGB pad colour; None -> `int(m * 255)` of image_mean, as LLaVA.
        max_pixels: passed to `load_image`.

    For a square grid "pad" equals the official pipeline (expand2square, then CLIPImageProcessor's
    shortest-edge resize + centre crop, which for a square image is a single bicubic resize of the
    uint8 image).
    """

    def __init__(
        self,
        size: int,
        grid: Sequence[int] = (3, 3),
        image_mean: Sequence[float] = (0.48145466, 0.4578275, 0.40821073),
        image_std: Sequence[float] = (0.26862954, 0.26130258, 0.27577711),
        aspect_mode: Literal["pad", "resize"] = "pad",
        pad_color: Sequence[int] | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.size = int(size)
        self.grid = [int(g) for g in grid]
        self.image_mean = [float(x) for x in image_mean]
        self.image_std = [float(x) for x in image_std]
        self.aspect_mode = aspect_mode
        self.pad_color = None if pad_color is None else [int(c) for c in pad_color]
        self.max_pixels = None if max_pixels is None else int(max_pixels)
        if self.size < 1:
            raise ValueError(f"size must be positive, got {size}")
        if len(self.grid) != 2 or min(self.grid) < 1:
            raise ValueError(f"grid must be two positive integers (n_h, n_w), got {grid!r}")
        if len(self.image_mean) != 3 or len(self.image_std) != 3 or min(self.image_std) <= 0:
            raise ValueError("image_mean and image_std must be 3 numbers each, std > 0")
        if aspect_mode not in ("pad", "resize"):
            raise ValueError(f"aspect_mode must be 'pad' or 'resize', got {aspect_mode!r}")
        if self.pad_color is not None and (len(self.pad_color) != 3 or not all(0 <= c <= 255 for c in self.pad_color)):
            raise ValueError(f"pad_color must be 3 integers in 0..255, got {pad_color!r}")

    @classmethod
    def from_config(cls, config: Any, **overrides: Any) -> "InfLlavaImageProcessor":
        """Build from an `InfLlavaConfig` (tower size, grid, mean/std, optional image_pad_color)."""
        kwargs: dict[str, Any] = dict(
            size=config.tower_image_size,
            grid=tuple(config.grid),
            image_mean=tuple(config.image_mean),
            image_std=tuple(config.image_std),
            pad_color=getattr(config, "image_pad_color", None),
        )
        kwargs.update(overrides)
        return cls(**kwargs)

    # ---- derived ----
    @property
    def input_size(self) -> tuple[int, int]:
        """(H, W) of the output: (n_h * S, n_w * S)."""
        return self.grid[0] * self.size, self.grid[1] * self.size

    @property
    def fill_color(self) -> tuple[int, int, int]:
        """RGB colour used by the "pad" aspect mode."""
        if self.pad_color is not None:
            return tuple(self.pad_color)  # type: ignore[return-value]
        return mean_fill_color(self.image_mean)

    # ---- processing ----
    def preprocess_pil(self, image: ImageInput) -> Image.Image:
        """Load one image and return the padded / resized uint8 RGB image of size (n_w*S, n_h*S)."""
        img = load_image(image, max_pixels=self.max_pixels)
        height, width = self.input_size
        if self.aspect_mode == "pad":
            img = expand_to_aspect(img, (self.grid[1], self.grid[0]), self.fill_color)
        return img.resize((width, height), Image.BICUBIC)

    def normalize(self, img: Image.Image) -> torch.Tensor:
        """uint8 RGB PIL image -> float32 CHW tensor ((x / 255) - mean) / std."""
        arr = np.asarray(img, dtype=np.float32) / np.float32(255.0)
        mean = np.asarray(self.image_mean, dtype=np.float32)
        std = np.asarray(self.image_std, dtype=np.float32)
        arr = (arr - mean) / std
        return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))

    def __call__(self, images: ImageInput | Sequence[ImageInput]) -> torch.Tensor:
        """One image or a sequence of images -> float32 tensor [B, 3, n_h * S, n_w * S].

        An empty sequence gives a [0, 3, H, W] tensor. Raises ImageLoadError for a bad image.
        """
        if _is_single_image(images):
            images = [images]  # type: ignore[list-item]
        tensors = [self.normalize(self.preprocess_pil(im)) for im in images]  # type: ignore[union-attr]
        if not tensors:
            height, width = self.input_size
            return torch.empty(0, 3, height, width, dtype=torch.float32)
        return torch.stack(tensors)

    # ---- serialisation ----
    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable settings (round-trips through `from_dict`)."""
        return {
            "image_processor_type": type(self).__name__,
            "size": self.size,
            "grid": list(self.grid),
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
            "aspect_mode": self.aspect_mode,
            "pad_color": None if self.pad_color is None else list(self.pad_color),
            "max_pixels": self.max_pixels,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "InfLlavaImageProcessor":
        """Inverse of `to_dict`; unknown keys raise TypeError."""
        kwargs = dict(data)
        kwargs.pop("image_processor_type", None)
        return cls(**kwargs)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.to_dict()})"


def _is_single_image(x: Any) -> bool:
    """True for one image source (path, bytes, PIL image, file object), False for a sequence of them."""
    return isinstance(x, (str, os.PathLike, bytes, bytearray, Image.Image)) or hasattr(x, "read")


# --------------------------------------------------------------------------------------------
# Prompts
# --------------------------------------------------------------------------------------------


def _validate_messages(messages: Sequence[Mapping[str, Any]]) -> None:
    if isinstance(messages, (str, Mapping)) or not isinstance(messages, Sequence) or len(messages) == 0:
        raise ValueError("messages must be a non-empty list of {'role', 'content'} dicts")
    for i, msg in enumerate(messages):
        if not isinstance(msg, Mapping) or "role" not in msg or "content" not in msg:
            raise ValueError(f"message {i} must be a dict with 'role' and 'content', got {msg!r}")
        expected = "user" if i % 2 == 0 else "assistant"
        if msg["role"] != expected:
            raise ValueError(
                f"messages must alternate user/assistant starting with user; message {i} has role "
                f"{msg['role']!r}, expected {expected!r}"
            )
        content = msg["content"]
        if content is not None and not isinstance(content, str):
            raise ValueError(f"message {i} content must be a string, got {type(content).__name__}")


def require_chat_template(tokenizer) -> None:
    """ValueError unless `tokenizer` exists and carries a chat template (template='chat_template')."""
    if tokenizer is None:
        raise ValueError("template='chat_template' needs a tokenizer")
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"template='chat_template' but the tokenizer ({type(tokenizer).__name__}) has no chat "
            f"template; use template='llama3' or set tokenizer.chat_template"
        )


def build_prompt(
    messages: Sequence[Mapping[str, Any]],
    template: str = "llama3",
    tokenizer: Any = None,
    add_generation_prompt: bool = True,
) -> str:
    """Render a conversation into the prompt string of a template.

    Args:
        messages: [{"role": "user" | "assistant", "content": str}, ...], alternating, starting with
            "user". Image placeholders ("<image>") are part of the content.
        template:
            * "llama3" (official; LLaVA's SeparatorStyle.MPT with LLaMA-3 headers):
              LLAMA3_SYSTEM + LLAMA3_SEP, then role + content + LLAMA3_SEP per message. As in LLaVA,
              a message with empty content renders as its bare role (no separator).
            * "plain" (stage-1 pretraining, LLaVA's `conv_llava_plain`): single turn only. The user
              text is replaced by one image placeholder, so the prompt is "<image>"; a full sample
              (user + assistant caption) is "<image>" + caption + "\\n".
            * "chat_template": `tokenizer.apply_chat_template(messages, tokenize=False, ...)`.
        tokenizer: needed for "chat_template" only.
        add_generation_prompt: when the last message is from the user, end the prompt with the
            assistant's turn opener (the bare assistant role for "llama3"). When the last message
            is from the assistant the conversation is complete and nothing is appended.

    Raises:
        ValueError: bad roles / order / template, a multi-turn "plain" conversation, or a tokenizer
            without a chat template.
    """
    _validate_messages(messages)
    generate = add_generation_prompt and messages[-1]["role"] == "user"
    if template == "llama3":
        parts = [LLAMA3_SYSTEM, LLAMA3_SEP]
        for msg in messages:
            role = LLAMA3_USER if msg["role"] == "user" else LLAMA3_ASSISTANT
            content = msg["content"]
            parts.append(role + content + LLAMA3_SEP if content else role)
        if generate:
            parts.append(LLAMA3_ASSISTANT)
        return "".join(parts)
    if template == "plain":
        if len(messages) > 2:
            raise ValueError(
                f"the 'plain' template is single-turn (one user message, optionally one caption); "
                f"got {len(messages)} messages"
            )
        prompt = IMAGE_PLACEHOLDER
        if len(messages) == 2 and messages[1]["content"]:
            prompt += messages[1]["content"] + "\n"
        return prompt
    if template == "chat_template":
        require_chat_template(tokenizer)
        return tokenizer.apply_chat_template(
            [dict(m) for m in messages], tokenize=False, add_generation_prompt=generate
        )
    raise ValueError(f"template must be one of {TEMPLATES}, got {template!r}")


def tokenize_with_images(prompt: str, tokenizer: Any, image_token_id: int, num_image_tokens: int) -> list[int]:
    """Tokenize a prompt, expanding each "<image>" to `num_image_tokens` copies of `image_token_id`.

    Same semantics as LLaVA's `tokenizer_image_token`: the prompt is split on "<image>", each chunk
    is tokenized on its own with `tokenizer(chunk)["input_ids"]` (the tokenizer's default special
    tokens). If chunk 0 starts with the BOS id, that BOS is emitted once at the front and the first
    token of every chunk (chunk 0's BOS included) is dropped; otherwise nothing is dropped. Hence a
    prompt that already starts with a BOS text (e.g. "<|begin_of_text|>") keeps both BOS, as in the
    official model's training data.
    """
    if num_image_tokens < 1:
        raise ValueError(f"num_image_tokens must be >= 1, got {num_image_tokens}")
    chunks = [list(tokenizer(chunk)["input_ids"]) for chunk in prompt.split(IMAGE_PLACEHOLDER)]
    bos = getattr(tokenizer, "bos_token_id", None)
    ids: list[int] = []
    offset = 0
    if bos is not None and chunks[0] and chunks[0][0] == bos:
        offset = 1
        ids.append(bos)
    image_run = [int(image_token_id)] * int(num_image_tokens)
    for i, chunk in enumerate(chunks):
        if i > 0:
            ids.extend(image_run)
        ids.extend(chunk[offset:])
    return ids


# --------------------------------------------------------------------------------------------
# Processor
# --------------------------------------------------------------------------------------------


class InfLlavaProcessor:
    """Prompts + images -> model inputs (`input_ids`, `attention_mask`, `pixel_values`).

    Args:
        image_processor: an `InfLlavaImageProcessor`.
        tokenizer: a transformers tokenizer (callable, `bos_token_id`, `pad_token_id`, ...).
        image_token_id: id written at image-feature positions (may lie outside the vocabulary).
        num_image_tokens: feature tokens per image (each "<image>" expands to this many ids).
        template: "llama3" (official), "plain" or "chat_template" (see `build_prompt`).
    """

    def __init__(
        self,
        image_processor: InfLlavaImageProcessor,
        tokenizer: Any,
        image_token_id: int,
        num_image_tokens: int,
        template: str = "llama3",
    ) -> None:
        if template not in TEMPLATES:
            raise ValueError(f"template must be one of {TEMPLATES}, got {template!r}")
        if int(num_image_tokens) < 1:
            raise ValueError(f"num_image_tokens must be >= 1, got {num_image_tokens}")
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.image_token_id = int(image_token_id)
        self.num_image_tokens = int(num_image_tokens)
        self.template = template

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

    # ---- prompts ----
    def build_prompt(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True) -> str:
        """`build_prompt` with this processor's template and tokenizer."""
        return build_prompt(messages, self.template, self.tokenizer, add_generation_prompt)

    def chat_prompt(
        self, messages: Sequence[Mapping[str, Any]], num_images: int = 0, add_generation_prompt: bool = True
    ) -> str:
        """Build the prompt of one conversation that comes with `num_images` images.

        If images come with it and no message contains "<image>", "<image>\\n" is put at the start
        of the first user message (as LLaVA does). The messages are not modified.
        """
        msgs = [dict(m) for m in messages]
        has_placeholder = any(IMAGE_PLACEHOLDER in (m.get("content") or "") for m in msgs)
        if num_images > 0 and not has_placeholder and msgs and msgs[0].get("role") == "user":
            msgs[0]["content"] = IMAGE_PLACEHOLDER + "\n" + (msgs[0].get("content") or "")
        return self.build_prompt(msgs, add_generation_prompt)

    def _insert_placeholder(self, prompt: str) -> str:
        """Put "<image>\\n" at the start of the first user message of a rendered prompt.

        For the llama3 template that is right after the first user header; otherwise (or when no
        header is found) at the very start of the prompt.
        """
        if self.template == "llama3":
            pos = prompt.find(LLAMA3_USER)
            if pos >= 0:
                pos += len(LLAMA3_USER)
                return prompt[:pos] + IMAGE_PLACEHOLDER + "\n" + prompt[pos:]
        return IMAGE_PLACEHOLDER + "\n" + prompt

    def _assign_images(self, prompts: list[str], images: Any) -> list[list[Any]]:
        """Split `images` into one list per prompt (see `__call__`)."""
        n = len(prompts)
        if images is None:
            return [[] for _ in prompts]
        if _is_single_image(images):
            images = [images]
        if not isinstance(images, Sequence):
            raise TypeError(f"images must be an image, a list of images or a list per prompt, got {type(images).__name__}")
        images = list(images)
        nested = any(x is None or (isinstance(x, Sequence) and not _is_single_image(x)) for x in images)
        if nested:
            if len(images) != n:
                raise ValueError(f"images given per prompt must have one entry per prompt: {len(images)} entries for {n} prompts")
            out = []
            for entry in images:
                if entry is None:
                    out.append([])
                elif _is_single_image(entry):
                    out.append([entry])
                else:
                    out.append(list(entry))
            return out
        if n == 1:
            return [images]
        counts = [p.count(IMAGE_PLACEHOLDER) for p in prompts]
        if sum(counts) == 0 and len(images) == n:
            return [[im] for im in images]  # one image per prompt, placeholders inserted later
        if sum(counts) != len(images):
            raise ValueError(
                f"the prompts contain {sum(counts)} '{IMAGE_PLACEHOLDER}' placeholder(s) in total but "
                f"{len(images)} image(s) were given"
            )
        out, start = [], 0
        for c in counts:
            out.append(images[start : start + c])
            start += c
        return out

    def __call__(
        self,
        text: str | Sequence[str],
        images: Any = None,
        padding_side: Literal["left", "right"] = "left",
        return_tensors: Literal["pt"] | None = "pt",
    ) -> dict[str, Any]:
        """Tokenize already-built prompts and preprocess their images.

        Args:
            text: one prompt or a list of prompts (see `build_prompt` / `apply_chat`).
            images: None; one image; a flat list of images, consumed in placeholder order across the
                prompts; or a list with one entry per prompt (an image, a list of images or None).
                A flat list of exactly one image per prompt where no prompt has a placeholder is
                taken as one image per prompt.
            padding_side: "left" (default, for batched generation) or "right".
            return_tensors: "pt" for torch tensors, None for python lists (`pixel_values` is a tensor
                either way).

        A prompt with no "<image>" that gets exactly one image has "<image>\\n" inserted at the start
        of its first user message. Every other mismatch between placeholders and images raises
        ValueError naming both counts.

        Returns:
            dict with `input_ids` [B, T] (long), `attention_mask` [B, T] (long, 0 on padding) and,
            when there are images, `pixel_values` [N_images, 3, H, W] in placeholder order.
        """
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        if return_tensors not in ("pt", None):
            raise ValueError(f"return_tensors must be 'pt' or None, got {return_tensors!r}")
        prompts = [text] if isinstance(text, str) else list(text)
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError("text must be a prompt string or a non-empty list of prompt strings")
        per_prompt = self._assign_images(prompts, images)

        all_images: list[Any] = []
        sequences: list[list[int]] = []
        for i, (prompt, imgs) in enumerate(zip(prompts, per_prompt)):
            count = prompt.count(IMAGE_PLACEHOLDER)
            if count == 0 and len(imgs) == 1:
                prompt = self._insert_placeholder(prompt)
                count = 1
            if count != len(imgs):
                which = f"prompt {i}" if len(prompts) > 1 else "the prompt"
                raise ValueError(
                    f"{which} has {count} '{IMAGE_PLACEHOLDER}' placeholder(s) but {len(imgs)} image(s) "
                    f"were given for it"
                )
            all_images.extend(imgs)
            sequences.append(
                tokenize_with_images(prompt, self.tokenizer, self.image_token_id, self.num_image_tokens)
            )

        input_ids, attention_mask = self._pad(sequences, padding_side)
        out: dict[str, Any] = {}
        if return_tensors == "pt":
            out["input_ids"] = torch.tensor(input_ids, dtype=torch.long)
            out["attention_mask"] = torch.tensor(attention_mask, dtype=torch.long)
        else:
            out["input_ids"], out["attention_mask"] = input_ids, attention_mask
        if all_images:
            out["pixel_values"] = self.image_processor(all_images)
        return out

    @property
    def pad_token_id(self) -> int | None:
        """Padding id: the tokenizer's pad id, or its eos id when it has none."""
        pad = getattr(self.tokenizer, "pad_token_id", None)
        if pad is None:
            pad = getattr(self.tokenizer, "eos_token_id", None)
        return pad

    def _pad(self, sequences: list[list[int]], side: str) -> tuple[list[list[int]], list[list[int]]]:
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
        return ids, mask

    def apply_chat(
        self,
        messages: Sequence[Mapping[str, Any]] | Sequence[Sequence[Mapping[str, Any]]],
        images: Any = None,
        add_generation_prompt: bool = True,
        padding_side: Literal["left", "right"] = "left",
        return_tensors: Literal["pt"] | None = "pt",
    ) -> dict[str, Any]:
        """Build prompt(s) with the template, then call the processor.

        `messages` is one conversation (a list of message dicts) with `images` an image or a list of
        images, or a batch (a list of conversations) with `images` None or one entry per
        conversation (an image, a list of images, or None). A conversation with images but no
        "<image>" gets "<image>\\n" at the start of its first user message.
        """
        batched = len(messages) > 0 and not isinstance(messages[0], Mapping)
        conversations = list(messages) if batched else [messages]
        if images is None:
            per_conv: list[list[Any]] = [[] for _ in conversations]
        elif not batched:
            per_conv = [[images] if _is_single_image(images) else list(images)]
        else:
            if _is_single_image(images) or len(images) != len(conversations):
                raise ValueError("for a batch of conversations, give images as a list with one entry per conversation")
            per_conv = [[] if e is None else [e] if _is_single_image(e) else list(e) for e in images]
        prompts = [
            self.chat_prompt(conv, len(imgs), add_generation_prompt) for conv, imgs in zip(conversations, per_conv)
        ]
        return self(prompts, per_conv, padding_side=padding_side, return_tensors=return_tensors)

    # ---- decoding ----
    def decode(self, *args: Any, **kwargs: Any) -> str:
        """`tokenizer.decode` pass-through."""
        return self.tokenizer.decode(*args, **kwargs)

    def batch_decode(self, *args: Any, **kwargs: Any) -> list[str]:
        """`tokenizer.batch_decode` pass-through."""
        return self.tokenizer.batch_decode(*args, **kwargs)

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

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        """Write processor_config.json and the tokenizer files into `save_directory`."""
        path = Path(save_directory)
        path.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(str(path))
        (path / PROCESSOR_CONFIG_NAME).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, tokenizer: Any = None, **tokenizer_kwargs: Any) -> "InfLlavaProcessor":
        """Load what `save_pretrained` wrote (tokenizer via `AutoTokenizer.from_pretrained`).

        Pass `tokenizer` to use an already-loaded tokenizer instead. Raises FileNotFoundError when
        the directory has no processor_config.json.
        """
        path = Path(directory)
        cfg_file = path / PROCESSOR_CONFIG_NAME
        if not cfg_file.is_file():
            raise FileNotFoundError(
                f"{cfg_file} not found: {path} is not an InfLlavaProcessor directory (create one with "
                f"InfLlavaProcessor.save_pretrained, or build it with InfLlavaProcessor.from_config)"
            )
        data = json.loads(cfg_file.read_text(encoding="utf-8"))
        if tokenizer is None:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(path), **tokenizer_kwargs)
        return cls(
            InfLlavaImageProcessor.from_dict(data["image_processor"]),
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
