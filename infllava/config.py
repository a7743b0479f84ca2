"""Typed configuration of an INF-LLaVA model, and presets.

`InfLlavaConfig` is a transformers composite config: a `vision_config` (any transformers vision
model, e.g. CLIP or SigLIP), a `text_config` (any transformers causal LM) and the fields of the two
INF-LLaVA modules (arXiv 2407.16198, Sec. 3): the Dual-perspective Cropping Module (grid) and the
Dual-perspective Enhancement Module (DEM). Every size is read from here; nothing in the model code
hard-codes 336, 24, 1024 or 3.

Presets: `official_config()` (CLIP ViT-L/14-336 + LLaMA-3-8B, as released) and `tiny_config()`
(a few-KB model for tests and the demo).
"""

from __future__ import annotations

from typing import Literal

from transformers import AutoConfig, PreTrainedConfig

try:  # transformers >= 5.20 builds sub-configs from a declared default
    from transformers.configuration_utils import SubConfigSpec
except ImportError:  # earlier 5.x: the sub-configs are built in __post_init__ (as their LlavaConfig does)
    SubConfigSpec = None

CLIP_VIT_L_14_336 = dict(
    model_type="clip_vision_model",
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=24,
    num_attention_heads=16,
    image_size=336,
    patch_size=14,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
    projection_dim=768,
)

THUMBNAIL_MERGE = ("mean", "sum", "concat")  # InfLlavaConfig.thumbnail_merge choices

# OpenAI CLIP normalisation (also the pad colour of expand2square, x 255).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class InfLlavaConfig(PreTrainedConfig):
    r"""Configuration of `InfLlavaForConditionalGeneration`.

    Fields (all validated in `__post_init__`):
        vision_config: transformers config of the vision tower (default: CLIP ViT-L/14-336).
        text_config: transformers config of the causal LM (default: LLaMA).
        grid: (n_h, n_w) number of sub-images per side; the model input is n_h*S x n_w*S pixels for a
            tower of input size S. Official: (3, 3).
        vision_feature_layer: which hidden state of the tower is used (LLaVA's `mm_vision_select_layer`);
            negative counts from the end (-2: output of the second-to-last layer). Later layers are
            never computed (they are not even built).
        drop_cls: drop the tower's first token (CLS). None: decided by the tower type.
        vision_chunk_size: at most this many crops go through the tower in one call (bounds memory).
        dem_num_heads: heads of the DEM cross-attention (official 8).
        dem_ffn_ratio: the DEM bottleneck FFN is Linear(d, d/ratio) - GELU - Linear(d/ratio, d/2).
        dem_share_attention: one attention module for both directions (official) or one per direction.
        dem_downsample: how the n_h*h x n_w*w fused map returns to h x w. "bilinear": the official
            `F.interpolate(bilinear, align_corners=False)`, which for an odd grid is a strided subsample;
            "avgpool": the paper's average pooling over each n_h x n_w cell; "maxpool" (ours): the maximum
            over each cell, per channel, so a small object's response in one position of a cell is not
            divided by n_h*n_w (the DEM output at all positions of the map is computed, as for avgpool);
            "unshuffle" (ours): each cell's n_h*n_w positions are concatenated (pixel unshuffle, as
            InternVL's token merge) and a learned Linear(n_h*n_w*d, d) maps them back to d, initialised
            to the average (so it starts as avgpool); it can keep which position of the cell a small
            object's response came from, which a fixed pooling cannot. It adds weights (`dem.downsample`).
            "mlpavg" (ours): the mean over each cell of x + MLP(x), one MLP Linear(d, d)-GELU-Linear(d, d)
            shared by every position (`dem.cell_mlp`, last layer zero-initialised: it starts as avgpool).
            Unlike unshuffle's per-position weights, what it learns to read in one position (a digit)
            it reads in all n_h*n_w, from n_h*n_w times as many examples.
        dem_local_residual (ours; off in the official model): the DEM's map before the downsampling is the
            local map plus a learned per-channel gate times the fused enhancement, L + g * rms(L) * fused,
            g zero at initialisation (`dem.local_gate`, as ReZero / LayerScale), rms(L) the local feature's
            magnitude at that position (g = 1: the fusion at the local features' own scale). The full model
            then starts as exactly the local-only view (avgpool, or unshuffle / mlpavg at their avgpool
            init) and the training opens the gate as far as the second perspective helps; the fusion can no longer
            overwrite what the local crop alone reads (INF-LLaVA-mini measured the official fusion losing
            the small dot's colour and the digit that the local view keeps).
        views: which views feed the visual tokens (ablations; the token count is the same for all):
            "full" (DCM + DEM, as released); "thumbnail" (the low-resolution view only, LLaVA-1.5-like);
            "local" (thumbnail + local crops, their map average-pooled per n_h x n_w cell, no DEM);
            "global" (thumbnail + global crops, likewise: the mean of the global crops per position).
        thumbnail_merge: how the thumbnail features meet the DEM output: "mean" (official, (t + d) / 2),
            "sum" (the paper's element-wise addition) or "concat" (ours: [t, d] along the channels, so
            the projector's input is 2 x the tower width and sees the two apart; the token count is
            unchanged). Measured on INF-LLaVA-mini, averaging or adding the thumbnail's feature is where
            a small object's identity (a digit) stops being linearly readable; concatenation keeps it.
            With views="thumbnail" there is nothing to merge and the projector's input is the tower width.
        projector_type: "linear" or "mlp{N}x_gelu" (official "mlp2x_gelu").
        projector_input_norm: standardise the projector's input per channel with fixed statistics of
            the training images' visual features (fitted once, before the first training step, and
            saved with the projector as `projector.input_mean` / `projector.input_std`). Off in the
            official model. A frozen CNN's features share one large mean direction (measured on
            EfficientNet-Lite0 stage 8: 45% of their energy), so every visual token starts nearly the
            same and the LM has little to tell them apart by; standardising removes it.
        image_token_id: id of the placeholder token in `input_ids` that image features replace.
            It may lie outside the LM vocabulary: placeholder positions are never embedded.
        image_mean / image_std / image_pad_color: pixel normalisation and expand2square colour.
        template: the conversation template, a name of `infllava.templates` ("llama3": official, "plain",
            "chat_template": the tokenizer's own).
    """

    model_type = "infllava"
    if SubConfigSpec is not None:
        sub_configs_defaults = {
            "vision_config": SubConfigSpec(
                config_class=AutoConfig,
                model_type="clip_vision_model",
                init_kwargs={k: v for k, v in CLIP_VIT_L_14_336.items() if k != "model_type"},
            ),
            "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama"),
        }
    else:
        sub_configs = {"vision_config": AutoConfig, "text_config": AutoConfig}

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    grid: list[int] | tuple[int, int] = (3, 3)
    vision_feature_layer: int = -2
    drop_cls: bool | None = None
    vision_chunk_size: int = 32
    dem_num_heads: int = 8
    dem_ffn_ratio: int = 16
    dem_share_attention: bool = True
    dem_downsample: str = "bilinear"
    dem_local_residual: bool = False
    views: Literal["full", "thumbnail", "local", "global"] = "full"
    thumbnail_merge: Literal["mean", "sum", "concat"] = "mean"
    projector_type: str = "mlp2x_gelu"
    projector_input_norm: bool = False
    image_token_id: int = 128257
    image_mean: list[float] | tuple[float, ...] = CLIP_MEAN
    image_std: list[float] | tuple[float, ...] = CLIP_STD
    template: str = "llama3"
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        if SubConfigSpec is None:  # transformers < 5.20: build the sub-configs here
            self.vision_config = _sub_config(self.vision_config, CLIP_VIT_L_14_336)
            self.text_config = _sub_config(self.text_config, {"model_type": "llama"})
        super().__post_init__(**kwargs)
        self.grid = [int(g) for g in self.grid]
        self.image_mean = [float(x) for x in self.image_mean]
        self.image_std = [float(x) for x in self.image_std]
        if self.text_config is not None and getattr(self.text_config, "tie_word_embeddings", False):
            self.tie_word_embeddings = True
        self.validate_fields()

    def validate_fields(self) -> None:
        """Raise ValueError naming the first inconsistent field."""
        if len(self.grid) != 2 or min(self.grid) < 1:
            raise ValueError(f"grid must be two positive integers (n_h, n_w), got {self.grid!r}")
        from .model.dem import get_downsample  # here: the model imports this module

        get_downsample(self.dem_downsample)  # ValueError naming the registered variants
        if self.views not in ("full", "thumbnail", "local", "global"):
            raise ValueError(f"views must be 'full', 'thumbnail', 'local' or 'global', got {self.views!r}")
        if self.thumbnail_merge not in THUMBNAIL_MERGE:
            raise ValueError(f"thumbnail_merge must be one of {', '.join(THUMBNAIL_MERGE)}, got {self.thumbnail_merge!r}")
        from .templates import get_template

        get_template(self.template)  # ValueError naming the registered templates
        if self.dem_num_heads < 1 or self.dem_ffn_ratio < 1:
            raise ValueError(f"dem_num_heads and dem_ffn_ratio must be >= 1, got {self.dem_num_heads} and "
                             f"{self.dem_ffn_ratio}")
        if self.vision_chunk_size < 1:
            raise ValueError(f"vision_chunk_size must be >= 1, got {self.vision_chunk_size}")
        if len(self.image_mean) != 3 or len(self.image_std) != 3 or min(self.image_std) <= 0:
            raise ValueError("image_mean and image_std must be 3 numbers each, std > 0")
        if self.vision_config is not None:
            d = self.vision_config.hidden_size
            if d % self.dem_num_heads:
                raise ValueError(
                    f"dem_num_heads={self.dem_num_heads} does not divide the tower width {d}"
                )
            if d % 2 or d < self.dem_ffn_ratio:
                raise ValueError(f"tower width {d} must be even and >= dem_ffn_ratio={self.dem_ffn_ratio}")
            layers = self.vision_config.num_hidden_layers
            if not -(layers + 1) <= self.vision_feature_layer <= layers:
                raise ValueError(
                    f"vision_feature_layer={self.vision_feature_layer} is outside the tower's "
                    f"{layers} layers"
                )
        if not (self.projector_type == "linear" or _parse_mlp_depth(self.projector_type)):
            raise ValueError(f"projector_type must be 'linear' or 'mlp<N>x_gelu', got {self.projector_type!r}")

    # ---- derived sizes (never stored) ----
    @property
    def tower_image_size(self) -> int:
        """Input side S of one crop."""
        return int(self.vision_config.image_size)

    @property
    def input_size(self) -> tuple[int, int]:
        """(H, W) of the high-resolution model input: (n_h * S, n_w * S)."""
        return self.grid[0] * self.tower_image_size, self.grid[1] * self.tower_image_size

    @property
    def feature_grid(self) -> tuple[int, int]:
        """(h, w) of the tower's patch grid for one crop."""
        side = self.tower_image_size // int(self.vision_config.patch_size)
        return side, side

    @property
    def projector_input_size(self) -> int:
        """Width of the merged visual features the projector reads: the tower width, twice it when
        thumbnail_merge="concat" puts the thumbnail's and the DEM's features side by side."""
        d = int(self.vision_config.hidden_size)
        return 2 * d if self.thumbnail_merge == "concat" and self.views != "thumbnail" else d

    @property
    def num_image_tokens(self) -> int:
        h, w = self.feature_grid
        return h * w

    @property
    def drops_cls(self) -> bool:
        if self.drop_cls is not None:
            return bool(self.drop_cls)
        from .model.towers import tower_has_cls  # here: the towers import this module

        return tower_has_cls(self.vision_config)


def _sub_config(value, default: dict):
    """A sub-config from a dict (by its model_type), None (the default) or a config (as it is)."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if isinstance(value, PreTrainedConfig):
        return value
    fields = dict(default if value is None else value)
    model_type = fields.pop("model_type", default["model_type"])
    return CONFIG_MAPPING[model_type](**fields)


def _parse_mlp_depth(projector_type: str) -> int:
    """'mlp2x_gelu' -> 2; 0 if it does not parse."""
    if projector_type.startswith("mlp") and projector_type.endswith("x_gelu"):
        middle = projector_type[3:-6]
        if middle.isdigit() and int(middle) >= 1:
            return int(middle)
    return 0


def official_config(**overrides) -> InfLlavaConfig:
    """The released INF-LLaVA: CLIP ViT-L/14-336, 3x3 grid, LLaMA-3-8B-Instruct (+1 pad token)."""
    text = dict(
        model_type="llama",
        vocab_size=128257,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        bos_token_id=128000,
        eos_token_id=128009,
        pad_token_id=128256,
    )
    kwargs = dict(vision_config=dict(CLIP_VIT_L_14_336), text_config=text, image_token_id=128257)
    kwargs.update(overrides)
    return InfLlavaConfig(**kwargs)


def tiny_config(grid=(3, 3), image_size: int = 28, patch_size: int = 7, vocab_size: int = 300, **overrides) -> InfLlavaConfig:
    """A tiny random model (a few hundred KB) for tests and the demo: CLIP-shaped tower, LLaMA LM."""
    vision = dict(
        model_type="clip_vision_model",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=patch_size,
        hidden_act="quick_gelu",
        projection_dim=16,
    )
    text = dict(
        model_type="llama",
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    kwargs = dict(
        vision_config=vision,
        text_config=text,
        grid=list(grid),
        dem_num_heads=4,
        dem_ffn_ratio=4,
        image_token_id=vocab_size,  # outside the vocabulary, as the official -200 is
    )
    kwargs.update(overrides)
    return InfLlavaConfig(**kwargs)
