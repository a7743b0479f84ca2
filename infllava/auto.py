"""Registration with transformers' Auto classes, done once when `infllava` is imported.

After `import infllava`: `AutoConfig`, `AutoModel` (-> `InfLlavaModel`), `AutoModelForImageTextToText`,
`AutoModelForCausalLM` (and `AutoModelForVision2Seq` where this transformers has it) ->
`InfLlavaForConditionalGeneration`,
`AutoImageProcessor` -> `InfLlavaImageProcessor` and `AutoProcessor` -> `InfLlavaProcessor` know
model_type "infllava"; no `trust_remote_code`.
"""

from __future__ import annotations


def register() -> None:
    from transformers import AutoImageProcessor, AutoProcessor

    from .config import InfLlavaConfig
    from .model import register_auto_classes
    from .processing import InfLlavaImageProcessor, InfLlavaProcessor

    register_auto_classes()
    try:
        try:
            AutoImageProcessor.register(InfLlavaConfig, image_processor_classes={"pil": InfLlavaImageProcessor},
                                        exist_ok=True)
        except TypeError:  # transformers before image processor backends
            AutoImageProcessor.register(InfLlavaConfig, slow_image_processor_class=InfLlavaImageProcessor,
                                        exist_ok=True)
    except ImportError:  # transformers 5.16-5.18 offer AutoImageProcessor with torchvision only; AutoProcessor
        pass             # and InfLlavaImageProcessor itself work without it
    AutoProcessor.register(InfLlavaConfig, InfLlavaProcessor, exist_ok=True)
