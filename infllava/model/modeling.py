"""INF-LLaVA: image -> DCM crops -> vision tower -> DEM (+ thumbnail) -> projector -> causal LM.

The layout is transformers' Llava family's, so that code written for it (vLLM's Transformers backend,
lmms-eval's HF wrappers, `generate`) drives INF-LLaVA unchanged:

- `InfLlavaModel`: `vision_tower` (any registered tower), `dem`, `projector` and `language_model`, the
  decoder-only *base* LM (`AutoModel`, no head), returning hidden states. `get_image_features` returns a
  `BaseModelOutputWithPooling` whose `pooler_output` holds one (T, D) tensor of visual tokens per image.
- `InfLlavaForConditionalGeneration`: `.model` (an `InfLlavaModel`) + `.lm_head`, with `GenerationMixin`
  (KV cache, `generate`, batched left-padded prompts).

Each `<image>` placeholder of the prompt is `num_image_tokens` copies of `config.image_token_id` in
`input_ids`; those positions receive the image's features, images filling the runs in reading order.

Image encoding computes only what the output depends on (see `dem.py`): for the official 3x3 grid the
tower sees the 9 local crops and 1 global crop (which is also exactly the thumbnail: bicubic at an
exact odd ratio samples pixel n*k + (n-1)/2), instead of the official code's 19 crops.

Checkpoints written before this layout (`language_model.model.*`, `language_model.lm_head.*`,
`vision_tower.*`, `dem.*`, `projector.*` at the top) are renamed on load (`LEGACY_KEY_RENAMES`).

Notation: B images, K local crops, O sampled global crops, S crop side, h x w feature grid,
T = h*w visual tokens per image, d tower width, D LM width, L sequence length.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    GenerationMixin,
    PreTrainedModel,
)
from transformers.modeling_outputs import BaseModelOutputWithPooling, ModelOutput

from ..config import InfLlavaConfig
from .crops import global_crop, local_crops, resize_input, thumbnail, tile_local
from .dem import DualPerspectiveEnhancement
from .projector import Projector
from .vision_tower import VisionTower

# The output classes of transformers' own multimodal models where this transformers has them (their cache
# field is named as this version's LM outputs name it); plain equivalents otherwise.
try:
    from transformers.modeling_outputs import MultimodalBaseModelOutputWithPast as _BaseOutput
    from transformers.modeling_outputs import MultimodalCausalLMOutputWithPast as _CausalOutput
except ImportError:  # older transformers 5.x

    @dataclass
    class _BaseOutput(ModelOutput):
        last_hidden_state: torch.FloatTensor | None = None
        past_key_values: object | None = None
        hidden_states: tuple | None = None
        attentions: tuple | None = None
        image_outputs: BaseModelOutputWithPooling | None = None

    @dataclass
    class _CausalOutput(ModelOutput):
        loss: torch.FloatTensor | None = None
        logits: torch.FloatTensor | None = None
        past_key_values: object | None = None
        hidden_states: tuple | None = None
        attentions: tuple | None = None
        image_outputs: BaseModelOutputWithPooling | None = None


InfLlavaModelOutputWithPast = _BaseOutput
InfLlavaCausalLMOutputWithPast = _CausalOutput

# Old top-level layout -> this one (regex on the key, replacement); first match wins. Plain prefixes, as
# transformers' own renamings are written (its renaming machinery treats groups specially).
LEGACY_KEY_RENAMES: list[tuple[str, str]] = [
    (r"^language_model\.lm_head", "lm_head"),
    (r"^language_model\.model", "model.language_model"),
    (r"^vision_tower", "model.vision_tower"),
    (r"^dem", "model.dem"),
    (r"^projector", "model.projector"),
]


class InfLlavaPreTrainedModel(PreTrainedModel):
    config: InfLlavaConfig
    config_class = InfLlavaConfig
    base_model_prefix = "model"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _no_split_modules = []

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Writes the current layout (`model.*`, `lm_head.*`), not the legacy one the registered renaming
        reads (transformers would otherwise write the renaming's source names back). A model whose LM was
        quantized at load time is refused: save the full-precision model, quantize when loading it."""
        import inspect

        if getattr(self, "infllava_quantization", None):
            raise ValueError(f"this model's language model was loaded {self.infllava_quantization}-quantized and "
                             "cannot be saved; load it without quantization to save or export it")

        if "save_original_format" in inspect.signature(PreTrainedModel.save_pretrained).parameters:
            kwargs.setdefault("save_original_format", False)
        return super().save_pretrained(save_directory, *args, **kwargs)

    def _init_weights(self, module):
        std = getattr(self.config.get_text_config(), "initializer_range", 0.02)
        if getattr(module, "_infllava_init", None) is not None:  # a DEM variant's own start (dem.with_init)
            module._infllava_init(module)
        elif isinstance(module, DualPerspectiveEnhancement):
            if module.local_gate is not None:
                module.local_gate.data.zero_()  # dem_local_residual: starts as the local view
        elif isinstance(module, nn.Linear):
            module.weight.data.normal_(0.0, std)
            if module.bias is not None:
                module.bias.data.zero_()
        elif isinstance(module, nn.LayerNorm):
            module.weight.data.fill_(1.0)
            module.bias.data.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.data.normal_(0.0, std)
        else:
            super()._init_weights(module)


class InfLlavaModel(InfLlavaPreTrainedModel):
    """Vision tower + DEM + projector + the base LM; returns the LM's hidden states (no head)."""

    def __init__(self, config: InfLlavaConfig):
        super().__init__(config)
        self.vision_tower = VisionTower(
            config.vision_config, config.vision_feature_layer, config.drops_cls, config.vision_chunk_size
        )
        self.dem = DualPerspectiveEnhancement(config)
        self.projector = Projector(
            config.projector_type, config.projector_input_size, config.text_config.hidden_size,
            input_norm=config.projector_input_norm,
        )
        self.language_model = AutoModel.from_config(config.text_config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def load_language_model(self, causal_lm: PreTrainedModel) -> None:
        """Copy a transformers causal LM's base weights into `language_model` (strict: names every key that
        does not fit). Its head goes to `InfLlavaForConditionalGeneration.load_language_model`."""
        missing, unexpected = self.language_model.load_state_dict(causal_lm.base_model.state_dict(), strict=False)
        if missing or unexpected:
            raise ValueError(f"the language model's weights do not fit: missing {missing[:5]}, unexpected {unexpected[:5]}")

    # ---- vision path ----
    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> merged visual features before the projector, (B, T, config.projector_input_size)."""
        crops = self.image_crops(pixel_values)  # (B, N, 3, S, S)
        feats = self.vision_tower(crops.flatten(0, 1))  # (B*N, T, d)
        return self.merge_crop_features(feats.view(crops.shape[0], crops.shape[1], *feats.shape[1:]),
                                        thumb_is_crop=self._thumb_is_crop(pixel_values))

    def _crop_offsets(self, thumb_is_crop: bool) -> tuple[list[tuple[int, int]], tuple[int, int]]:
        """(offsets of the global crops the tower sees, the centre offset): those the output depends on,
        plus the centre one when it serves as the thumbnail."""
        cfg = self.config
        grid = tuple(cfg.grid)
        if cfg.views == "full":
            offsets = list(self.dem.sample_offsets)  # global crops the DEM output depends on
        elif cfg.views == "global":
            offsets = [(i, j) for i in range(grid[0]) for j in range(grid[1])]
        else:
            offsets = []
        centre = ((grid[0] - 1) // 2, (grid[1] - 1) // 2)
        if thumb_is_crop and centre not in offsets:
            offsets = offsets + [centre]
        return offsets, centre

    def _thumb_is_crop(self, pixel_values: torch.Tensor) -> bool:
        # The thumbnail is global crop ((gh-1)/2, (gw-1)/2) exactly when the grid is odd and the
        # pixels already have the input size (no resize).
        cfg = self.config
        return (tuple(pixel_values.shape[-2:]) == tuple(cfg.input_size)
                and cfg.grid[0] % 2 == 1 and cfg.grid[1] % 2 == 1)

    def image_crops(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> the crops the tower must see, (B, N, 3, S, S): the local crops (views full /
        local), the global crops the output depends on, and the thumbnail unless it is one of them."""
        cfg = self.config
        if pixel_values.ndim != 4 or pixel_values.shape[1] != 3:
            raise ValueError(f"pixel_values must be (B, 3, H, W), got {tuple(pixel_values.shape)}")
        grid, S = tuple(cfg.grid), cfg.tower_image_size
        x = resize_input(pixel_values, cfg.input_size)  # (B, 3, gh*S, gw*S)
        thumb_is_crop = self._thumb_is_crop(pixel_values)
        offsets, _ = self._crop_offsets(thumb_is_crop)
        crops = [local_crops(x, grid)] if cfg.views in ("full", "local") else []  # (B, K, 3, S, S)
        crops.append(torch.stack([global_crop(x, grid, i, j) for i, j in offsets], 1)
                     if offsets else x.new_zeros(x.shape[0], 0, 3, S, S))  # (B, O, 3, S, S)
        if not thumb_is_crop:
            crops.append(thumbnail(pixel_values, S).unsqueeze(1))  # (B, 1, 3, S, S)
        return torch.cat(crops, 1)

    def merge_crop_features(self, feats: torch.Tensor, thumb_is_crop: bool = True) -> torch.Tensor:
        """The tower's outputs for `image_crops` (B, N, T, d) -> merged visual features (B, T, d), or
        (B, T, 2d) with thumbnail_merge="concat":
        DEM over the local and global maps (+ the thumbnail), or the single view of an ablation."""
        cfg = self.config
        grid = tuple(cfg.grid)
        K = grid[0] * grid[1]
        h, w = cfg.feature_grid
        B, N = feats.shape[:2]
        if feats.shape[2] != h * w:
            raise ValueError(f"vision tower returned {feats.shape[2]} tokens per crop, expected {h}x{w}")
        feats = feats.view(B, N, h, w, -1)
        offsets, centre = self._crop_offsets(thumb_is_crop)
        L = K if cfg.views in ("full", "local") else 0
        glob = feats[:, L: L + len(offsets)]
        thumb = glob[:, offsets.index(centre)] if thumb_is_crop else feats[:, -1]
        thumb = thumb.flatten(1, 2)  # (B, T, d)
        if cfg.views == "thumbnail":
            return thumb
        if cfg.views == "full":
            high = self.dem(feats[:, :K], glob[:, : len(self.dem.sample_offsets)])  # (B, h, w, d)
        elif cfg.views == "local":  # the tiled local map, mean over each n_h x n_w cell
            high = tile_local(feats[:, :K], grid).view(B, h, grid[0], w, grid[1], -1).mean((2, 4))
        else:  # the interleaved global map, mean over each cell = mean over the global crops
            high = glob[:, :K].mean(1)
        high = high.flatten(1, 2)
        if cfg.thumbnail_merge == "mean":
            return torch.stack([thumb, high], -1).mean(-1)
        if cfg.thumbnail_merge == "concat":
            return torch.cat([thumb, high], -1)  # (B, T, 2d)
        return thumb + high

    def image_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> projected visual tokens (B, T, D)."""
        return self.projector(self.encode_images(pixel_values))

    def get_image_features(self, pixel_values: torch.Tensor, **kwargs) -> BaseModelOutputWithPooling:
        """transformers' convention (Llava): `last_hidden_state` the merged visual features before the
        projector (B, T, d), `pooler_output` one (T, D) tensor of visual tokens per image (a tuple)."""
        merged = self.encode_images(pixel_values)
        tokens = self.projector(merged)
        return BaseModelOutputWithPooling(last_hidden_state=merged, pooler_output=tuple(tokens.unbind(0)))

    def embed_inputs(self, input_ids: torch.LongTensor, pixel_values: torch.Tensor | None = None,
                     image_features: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings with the image placeholders replaced by visual tokens. -> (B, L, D).

        Images fill the placeholder runs in reading order (row by row). Either `pixel_values` or
        precomputed `image_features` (B_img, T, D) (or a sequence of (T, D)) may be given.
        """
        is_image = input_ids == self.config.image_token_id
        embeds = self.get_input_embeddings()(input_ids.masked_fill(is_image, 0))
        n_slots = int(is_image.sum())
        if image_features is None and pixel_values is not None and n_slots:
            image_features = self.image_tokens(pixel_values)
        if isinstance(image_features, (list, tuple)):
            image_features = torch.stack(list(image_features)) if image_features else None
        n_images = 0 if image_features is None else image_features.shape[0]
        T = self.config.num_image_tokens
        if n_slots != n_images * T or (is_image.sum(1) % T).any():
            raise ValueError(
                f"the prompt holds {n_slots} image tokens ({n_slots / T:g} images of {T} tokens) but "
                f"{n_images} image(s) were given; each <image> placeholder must expand to exactly {T} "
                f"tokens of id {self.config.image_token_id} and match one image"
            )
        if n_slots:
            embeds = embeds.masked_scatter(is_image.unsqueeze(-1), image_features.to(embeds.dtype))
        return embeds

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        image_features: torch.Tensor | None = None,
        **kwargs,
    ):
        """Hidden states of the base LM over the prompt with its images in place. The KV cache and every
        other LM argument pass through `kwargs` under the names of the installed transformers."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        image_outputs = None
        if inputs_embeds is None:
            standin = None
            if pixel_values is not None and image_features is None:
                if (input_ids == self.config.image_token_id).any():
                    image_outputs = self.get_image_features(pixel_values)
                    image_features = image_outputs.pooler_output
                elif self.training:  # a text-only training batch with a stand-in image: see below
                    standin = self.projector(self.encode_images(pixel_values))
            inputs_embeds = self.embed_inputs(input_ids, None, image_features)
            if standin is not None:
                # The vision path runs and adds exactly zero, so every trained weight of it gets a (zero)
                # gradient on every process: FSDP and DeepSpeed ZeRO reduce and gather the same weights on all
                # processes in lock-step (LLaVA does the same with a blank image for text-only samples).
                inputs_embeds = inputs_embeds + 0.0 * standin.sum()
        elif pixel_values is not None:
            raise ValueError("pixel_values cannot be combined with inputs_embeds (embed the images first)")
        context = getattr(self.config.text_config, "max_position_embeddings", None)
        if context and inputs_embeds.shape[1] > context:
            raise ValueError(f"the prompt is {inputs_embeds.shape[1]} tokens, longer than the model's context of "
                             f"{context} tokens (max_position_embeddings): shorten it or use fewer images")
        kwargs.pop("return_dict", None)
        out = self.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                  position_ids=position_ids, return_dict=True, **kwargs)
        return InfLlavaModelOutputWithPast(**out, image_outputs=image_outputs)


class InfLlavaForConditionalGeneration(InfLlavaPreTrainedModel, GenerationMixin):
    """`InfLlavaModel` + `lm_head`: logits, loss and generation."""

    def __init__(self, config: InfLlavaConfig):
        super().__init__(config)
        self.model = InfLlavaModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        # the head shares the embedding matrix when the LM ties them (named as this LM names its embeddings)
        embed = self.model.language_model.get_input_embeddings()
        name = next(n for n, m in self.model.language_model.named_modules() if m is embed)
        self._tied_weights_keys = {"lm_head.weight": f"model.language_model.{name}.weight"}
        self.post_init()

    # ---- the parts, as transformers' Llava exposes them ----
    @property
    def vision_tower(self) -> VisionTower:
        return self.model.vision_tower

    @property
    def dem(self) -> DualPerspectiveEnhancement:
        return self.model.dem

    @property
    def projector(self) -> Projector:
        return self.model.projector

    @property
    def language_model(self) -> nn.Module:
        return self.model.language_model

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.lm_head = value

    def get_decoder(self):
        return self.model.language_model

    def load_language_model(self, causal_lm: PreTrainedModel) -> None:
        """Copy a transformers causal LM (e.g. `AutoModelForCausalLM.from_pretrained(DIR)`) into the model:
        its base into `model.language_model`, its head into `lm_head` (tied again where the LM ties them)."""
        self.model.load_language_model(causal_lm)
        head = causal_lm.get_output_embeddings()
        with torch.no_grad():
            self.lm_head.weight.copy_(head.weight)
        if self.config.tie_word_embeddings:
            self.tie_weights()

    # ---- vision path (the base model's) ----
    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.encode_images(pixel_values)

    def image_crops(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.image_crops(pixel_values)

    def merge_crop_features(self, feats: torch.Tensor, thumb_is_crop: bool = True) -> torch.Tensor:
        return self.model.merge_crop_features(feats, thumb_is_crop)

    def image_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.image_tokens(pixel_values)

    def get_image_features(self, pixel_values: torch.Tensor, **kwargs) -> BaseModelOutputWithPooling:
        return self.model.get_image_features(pixel_values, **kwargs)

    def embed_inputs(self, input_ids, pixel_values=None, image_features=None) -> torch.Tensor:
        return self.model.embed_inputs(input_ids, pixel_values, image_features)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        image_features: torch.Tensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ):
        """`logits_to_keep`: an int keeps the last that many positions (0: all), a tensor the positions it
        indexes (the trainer's supervised positions: the head runs only there)."""
        kwargs.pop("return_dict", None)
        out = self.model(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask,
                         position_ids=position_ids, inputs_embeds=inputs_embeds, image_features=image_features,
                         **kwargs)
        hidden = out.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden[:, keep, :])
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size)
        rest = {k: v for k, v in out.items() if k != "last_hidden_state"}
        return InfLlavaCausalLMOutputWithPast(loss=loss, logits=logits, **rest)

    def prepare_inputs_for_generation(self, input_ids, inputs_embeds=None, pixel_values=None, image_features=None,
                                      **kwargs):
        inputs = super().prepare_inputs_for_generation(input_ids, inputs_embeds=inputs_embeds, **kwargs)
        # the images enter at the prefill only; the decode steps read them from the KV cache
        first = (inputs.get("input_ids") is not None and (inputs["input_ids"] == self.config.image_token_id).any())
        if first:
            inputs["pixel_values"], inputs["image_features"] = pixel_values, image_features
        return inputs


def register_auto_classes() -> None:
    """Make the Auto model classes know model_type 'infllava' (idempotent), and map the legacy key layout.
    `infllava.auto.register` calls it with the config and processor registrations."""
    AutoConfig.register("infllava", InfLlavaConfig, exist_ok=True)
    AutoModel.register(InfLlavaConfig, InfLlavaModel, exist_ok=True)
    AutoModelForImageTextToText.register(InfLlavaConfig, InfLlavaForConditionalGeneration, exist_ok=True)
    try:  # transformers offers this mapping in some versions only
        from transformers import AutoModelForVision2Seq

        AutoModelForVision2Seq.register(InfLlavaConfig, InfLlavaForConditionalGeneration, exist_ok=True)
    except (ImportError, ValueError):
        pass
    # code that loads "a generating model" by AutoModelForCausalLM (lmms-eval's HF wrappers) gets the whole VLM
    AutoModelForCausalLM.register(InfLlavaConfig, InfLlavaForConditionalGeneration, exist_ok=True)
    _register_legacy_renames()


def _register_legacy_renames() -> None:
    try:
        from transformers.conversion_mapping import WeightRenaming, register_checkpoint_conversion_mapping
    except ImportError:  # a transformers without registrable renamings: `infllava.load` renames itself
        return
    mapping = [WeightRenaming(source_patterns=src, target_patterns=dst) for src, dst in LEGACY_KEY_RENAMES]
    for name in ("infllava",):
        register_checkpoint_conversion_mapping(name, mapping, overwrite=True)


def rename_legacy_key(key: str) -> str:
    """A key of the layout before `InfLlavaModel` -> its name now (unchanged when already current)."""
    import re

    for pattern, repl in LEGACY_KEY_RENAMES:
        if re.match(pattern + r"\.", key):
            return re.sub(pattern, repl, key, count=1)
    return key
