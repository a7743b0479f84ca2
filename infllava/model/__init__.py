"""INF-LLaVA model: crops -> vision tower -> DEM -> projector -> LM."""

from .modeling import InfLlavaForConditionalGeneration, InfLlavaPreTrainedModel, register_auto_classes

__all__ = ["InfLlavaForConditionalGeneration", "InfLlavaPreTrainedModel", "register_auto_classes"]
