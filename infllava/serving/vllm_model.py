"""The class vLLM builds for INF-LLaVA (imported by vLLM only, through the plugin in `vllm_plugin.py`).

It is vLLM's Transformers backend for multimodal causal LMs, unchanged but for one thing: INF-LLaVA's
image token id sits just past the LM's vocabulary (`image_token_id == vocab_size` for models whose
tokenizer had no free slot), so vLLM must mask image positions out before it embeds the prompt's token
ids (its out-of-vocabulary multimodal token handling); the image features are scattered over them after.
"""

from __future__ import annotations

from vllm.model_executor.models.transformers import TransformersMultiModalForCausalLM


class InfLlavaForVLLM(TransformersMultiModalForCausalLM):
    def __init__(self, *, vllm_config, prefix: str = ""):
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        config = vllm_config.model_config.hf_config
        self.configure_mm_token_handling(config.get_text_config().vocab_size, [int(config.image_token_id)])
