"""Images and text in: what turns a conversation and its images into model inputs.

    images.py           open any image source as 8-bit RGB (`load_image`), LLaVA's padding geometry
    image_processor.py  `InfLlavaImageProcessor`: pad, resize to the n_h*S x n_w*S input, normalise
    tokens.py           prompt -> ids with each "<image>" expanded (the tokenizer's own tokenization)
    processor.py        `InfLlavaProcessor` (a transformers ProcessorMixin): conversations + images -> inputs
The conversation templates are `infllava.templates` (one registry).
"""

from ..templates import (
    IMAGE_PLACEHOLDER,
    IMAGE_TOKEN,
    LLAMA3_ASSISTANT,
    LLAMA3_SEP,
    LLAMA3_SYSTEM,
    LLAMA3_USER,
)
from ..templates import render as build_prompt
from .image_processor import InfLlavaImageProcessor, flatten_images
from .images import (
    DEFAULT_MAX_PIXELS,
    ImageInput,
    ImageLoadError,
    expand2square,
    expand_to_aspect,
    image_key,
    is_single_image,
    load_image,
    mean_fill_color,
)
from .processor import PROCESSOR_CONFIG_NAME, InfLlavaProcessor
from .tokens import ensure_image_token, tokenize_with_images, tokenize_with_offsets

__all__ = [
    "DEFAULT_MAX_PIXELS", "IMAGE_PLACEHOLDER", "IMAGE_TOKEN", "LLAMA3_ASSISTANT", "LLAMA3_SEP", "LLAMA3_SYSTEM",
    "LLAMA3_USER", "PROCESSOR_CONFIG_NAME", "ImageInput", "ImageLoadError", "InfLlavaImageProcessor",
    "InfLlavaProcessor", "build_prompt", "ensure_image_token", "expand2square", "expand_to_aspect",
    "flatten_images", "image_key", "is_single_image", "load_image", "mean_fill_color", "tokenize_with_images",
    "tokenize_with_offsets",
]
