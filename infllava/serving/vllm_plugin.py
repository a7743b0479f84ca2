"""vLLM plugin: `pip install 'infllava[vllm]'` makes `vllm serve DIR` and `vllm.LLM(DIR)` run INF-LLaVA.

vLLM calls `register` in every process it starts (entry point group `vllm.general_plugins`). It maps the
architecture `InfLlavaForConditionalGeneration` to vLLM's Transformers backend for multimodal models
(`vllm_model.InfLlavaForVLLM`, which adds out-of-vocabulary image-token handling), which builds `InfLlavaModel` through `AutoModel` (registered by `import infllava`) and keeps vLLM's own
paged attention, scheduler and continuous batching for the LM: the LM's attention layers run through
`ALL_ATTENTION_FUNCTIONS["vllm"]`, the vision tower, DEM and projector run as written here, called through
`get_image_features(pixel_values).pooler_output`. Images arrive as vLLM's multimodal inputs and are
prepared by `InfLlavaProcessor` (each `<image>` expands to `num_image_tokens` image-token ids).

A directory written by `infllava export` (or `infllava convert-official` then `export`) is what vLLM loads.
"""

from __future__ import annotations

ARCHITECTURE = "InfLlavaForConditionalGeneration"
BACKEND = "infllava.serving.vllm_model:InfLlavaForVLLM"  # imported lazily, by vLLM only


def register() -> None:
    import infllava  # noqa: F401  (registers config, model, processor with transformers' Auto classes)
    from vllm import ModelRegistry

    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, BACKEND)


def vllm_input(processor, images, text: str) -> dict:
    """One request for `vllm.LLM.generate`: `text` as the user's turn rendered with the processor's chat
    template, its "<image>" placeholders (one put before the text when it has none) filled by `images` (an
    image or a list) through vLLM's `multi_modal_data`."""
    from ..processing.images import is_single_image

    images = [images] if is_single_image(images) else list(images)
    prompt = processor.chat_prompt([{"role": "user", "content": text}], num_images=len(images))
    return {"prompt": prompt, "multi_modal_data": {"image": images if len(images) > 1 else images[0]}}
