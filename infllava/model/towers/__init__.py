"""Vision towers: one interface, a registry by `vision_config.model_type`.

A tower turns crops into patch tokens. Every tower answers the same interface (`Tower`):

    tower = build_tower(vision_config, feature_layer=-2)
    tower.module                   the nn.Module holding the weights (`VisionTower` registers it as
                                   `model`, so the state-dict keys are the module's own)
    tower.forward_features(x)      (N, 3, S, S) -> (N, T, d) patch tokens, CLS dropped where there is one
    tower.forward_tokens(x)        (N, 3, S, S) -> (N, [1 +] T, d) every output token, CLS first
    tower.hidden_size              d
    tower.has_cls                  whether forward_tokens starts with a CLS token
    tower.load_pretrained(path)    weights from the pip package that ships them, or from `path`
    Tower.packaged_config(name)    (config, mean, std) of a tower a pip package ships under `name`

`tower_has_cls(vision_config)` answers the CLS question from the config alone (no tower is built).

Towers: `vit.py` (transformers ViTs: CLIP, SigLIP and any vision model with `encoder.layers`; also
the fallback for an unregistered model_type) and `efficientnet_lite.py` (the EfficientNet-Lite CNN).
Adding a tower is one module in this package: a `Tower` subclass decorated with
`@register_tower("its_model_type")`; every module here is imported below, so nothing else needs editing
(tests/test_towers.py runs the common checks on every registered tower and asks for a test config).
"""

from __future__ import annotations

import importlib
import os
import pkgutil

import torch
import torch.nn as nn
from transformers import PreTrainedConfig

__all__ = ["Tower", "build_tower", "packaged_tower_config", "register_tower", "registered_towers", "tower_class",
           "tower_has_cls"]


class Tower:
    """The interface of a vision tower (see the module docstring).

    A subclass sets `config` and `hidden_size` and provides `module` and `forward_tokens`; it
    overrides `config_has_cls` if its output starts with a CLS token and `load_pretrained` if a pip
    package ships its weights. Its constructor is `Tower(config, feature_layer=-2)`; a tower without
    hidden layers to choose from ignores `feature_layer`.

    A tower that is its own nn.Module (our CNN) returns itself as `module`; a transformers model,
    which cannot be subclassed for every architecture, is held by a thin tower whose `module` is it.
    """

    model_types: tuple[str, ...] = ()  # set by `register_tower`
    config: PreTrainedConfig
    hidden_size: int

    @property
    def module(self) -> nn.Module:
        raise NotImplementedError

    @classmethod
    def config_has_cls(cls, config: PreTrainedConfig) -> bool:
        """Whether a tower built from `config` outputs a CLS token first (decided from the config alone)."""
        return False

    @property
    def has_cls(self) -> bool:
        return self.config_has_cls(self.config)

    def forward_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) -> (N, [1 +] T, d): every output token, the CLS token first where `has_cls`."""
        raise NotImplementedError

    def forward_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) -> (N, T, d): the patch tokens, row-major (the CLS token dropped)."""
        tokens = self.forward_tokens(pixel_values)
        return tokens[:, 1:] if self.has_cls else tokens

    @classmethod
    def packaged_config(cls, name: str, stage=None, image_size: int | None = None):
        """(vision config, image_mean, image_std) of the tower a pip package ships under `name` (e.g.
        "efficientnet-lite0"), None when `name` is not one of this tower's packaged names."""
        return None

    def load_pretrained(self, path: str | os.PathLike | None = None):
        raise NotImplementedError(
            f"no packaged weights for the {self.config.model_type!r} tower ({type(self).__name__}): load its weights "
            "with the model's from_pretrained, or copy a transformers checkpoint into `vision_tower.model`"
        )


_REGISTRY: dict[str, type[Tower]] = {}
_FALLBACK: list[type[Tower]] = []  # the tower of a model_type nobody registered (at most one)


def register_tower(*model_types: str, fallback: bool = False):
    """Class decorator: `cls` is the tower of these `vision_config.model_type`s (and, with
    fallback=True, of every model_type no tower registered)."""

    def add(cls: type[Tower]) -> type[Tower]:
        if not (isinstance(cls, type) and issubclass(cls, Tower)):
            raise TypeError(f"{cls!r} is not a Tower subclass")
        for model_type in model_types:
            if _REGISTRY.get(model_type, cls) is not cls:
                raise ValueError(f"model_type {model_type!r} already has a tower: {_REGISTRY[model_type].__name__}")
            _REGISTRY[model_type] = cls
        if fallback:
            if _FALLBACK and _FALLBACK[0] is not cls:
                raise ValueError(f"the fallback tower is already {_FALLBACK[0].__name__}")
            _FALLBACK[:] = [cls]
        cls.model_types = tuple(dict.fromkeys(cls.model_types + model_types))
        return cls

    return add


def registered_towers() -> dict[str, type[Tower]]:
    """{model_type: tower class} of every registered model type (the fallback not included)."""
    return dict(_REGISTRY)


def tower_class(vision_config: PreTrainedConfig | str) -> type[Tower]:
    """The tower class of a vision config (or of a model_type)."""
    model_type = vision_config if isinstance(vision_config, str) else vision_config.model_type
    if model_type in _REGISTRY:
        return _REGISTRY[model_type]
    if _FALLBACK:
        return _FALLBACK[0]
    raise ValueError(f"no vision tower registered for model_type {model_type!r} (registered: {sorted(_REGISTRY)})")


def build_tower(vision_config: PreTrainedConfig, feature_layer: int = -2) -> Tower:
    """The tower of `vision_config`, built without pretrained weights (see `Tower.load_pretrained`)."""
    return tower_class(vision_config)(vision_config, feature_layer)


def packaged_tower_config(name: str, stage=None, image_size: int | None = None):
    """(vision config, image_mean, image_std) of a tower shipped by a pip package under `name`, asked of every
    registered tower; None when no tower ships one by that name."""
    for cls in dict.fromkeys(list(_REGISTRY.values()) + _FALLBACK):
        found = cls.packaged_config(name, stage=stage, image_size=image_size)
        if found is not None:
            return found
    return None


def tower_has_cls(vision_config: PreTrainedConfig) -> bool:
    """Whether the tower of `vision_config` outputs a CLS token (LLaVA drops it: `mm_vision_select_feature:
    patch`). Decided from the config alone; this is the default of `InfLlavaConfig.drops_cls`."""
    return tower_class(vision_config).config_has_cls(vision_config)


# Every tower module of this package registers itself on import; importing them all here is what makes
# adding a tower a single new file.
for _info in pkgutil.iter_modules(__path__):
    if not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")
