"""INF-LLaVA model: crops -> vision tower -> DEM -> projector -> LM."""

from .modeling import (
    InfLlavaForConditionalGeneration,
    InfLlavaModel,
    InfLlavaPreTrainedModel,
    register_auto_classes,
    rename_legacy_key,
)

__all__ = ["InfLlavaForConditionalGeneration", "InfLlavaModel", "InfLlavaPreTrainedModel", "register_auto_classes",
           "rename_legacy_key"]
