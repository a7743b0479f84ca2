"""infllava: INF-LLaVA (arXiv 2407.16198), dual-perspective high-resolution LLaVA.

    from infllava import InfLlavaConfig, InfLlavaModel, InfLlavaForConditionalGeneration, InfLlavaProcessor
    from infllava import InfLlavaImageProcessor, load, answer, ChatSession
"""

from . import auto
from .config import InfLlavaConfig, official_config, tiny_config
from .model import InfLlavaForConditionalGeneration, InfLlavaModel
from .processing import InfLlavaImageProcessor, InfLlavaProcessor

auto.register()

__version__ = "0.1.0"

from .inference import ChatSession, answer, load  # noqa: E402

__all__ = [
    "ChatSession", "InfLlavaConfig", "InfLlavaForConditionalGeneration", "InfLlavaImageProcessor", "InfLlavaModel",
    "InfLlavaProcessor", "answer", "load", "official_config", "tiny_config",
]
