"""infllava: INF-LLaVA (arXiv 2407.16198), dual-perspective high-resolution LLaVA."""

from .config import InfLlavaConfig, official_config, tiny_config
from .model import InfLlavaForConditionalGeneration, register_auto_classes

register_auto_classes()

__version__ = "0.1.0"
__all__ = ["InfLlavaConfig", "InfLlavaForConditionalGeneration", "official_config", "tiny_config"]

from .inference import ChatSession, answer, load  # noqa: E402

__all__ += ["ChatSession", "answer", "load"]
