"""One loader for every source of a model: a shipped name, a full directory, a parts directory.

    model, processor, provenance = load_model("inf-llava-mini")      # or a directory

- a name of `SHIPPED` (models shipped inside the package as parts, e.g. "inf-llava-mini");
- a full directory (`save_pretrained`, `infllava export`, `infllava convert-official`): config.json with
  model_type "infllava", weights, processor; the layout before `InfLlavaModel` loads too (keys renamed);
- a parts directory (`parts.json`): small deltas (DEM, projector, LoRA) over pip-packaged backbones;
- an official INF-LLaVA checkpoint (model_type "llava_llama" / `mm_*` fields) is refused with the command
  that converts it; any other model_type is refused before anything is built.

`Provenance` records what the model was built from, for training to continue from it and for export.
Device and dtype are decided here (`resolve_device_dtype`) and nowhere else.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch

# Models that ship inside the package as parts (small deltas over pip-installed backbones), by name:
# `infllava.load("inf-llava-mini")`, `infllava chat inf-llava-mini ...`.
SHIPPED = {"inf-llava-mini": Path(__file__).resolve().parent / "assets" / "inf-llava-mini"}


class NotAnInfLlavaModel(ValueError):
    """The source is not a model infllava loads (with what to do instead)."""


@dataclass(frozen=True)
class Provenance:
    """What a loaded model was built from.

    source: what was asked for (a name or a path, as given).
    path: the directory read.
    layout: "full" (all weights in the directory) or "parts" (deltas over packaged backbones).
    packaged: {"vision_tower": ..., "language_model": ...} when the backbones come from pip packages
        (a parts directory, or a training run over them); None otherwise.
    lm_lora: (factors, meta) of the LoRA deltas already merged into the LM, which a further run over the
        packaged LM must keep (`parts.combine_lora`); None when there are none.
    lm_delta: why the LM differs from its packaged one in a way LoRA factors do not hold (full
        fine-tuning); such a model cannot be shipped as parts. None otherwise.
    template: the conversation template the model chats in, as loaded; a training stage in a training-only
        template (plain) hands it back to the model it saves.
    """

    source: str
    path: Path | None = None
    layout: str = "full"
    packaged: dict[str, str] | None = None
    lm_lora: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = field(default=None, repr=False)
    lm_delta: dict[str, Any] | None = None
    template: str | None = None  # the conversation template the model chats in (kept across a training-only one)


class LoadedModel(NamedTuple):
    model: Any
    processor: Any
    provenance: Provenance


def resolve_device_dtype(device: str | torch.device | None = None, dtype: str | torch.dtype | None = None):
    """cuda if present else cpu; bfloat16 on cuda, float32 on cpu, unless told otherwise. ValueError for a
    device torch does not know, or one this machine (or this torch build) does not have."""
    if device is None or device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"unknown device {device!r} (use cpu, cuda, cuda:N, mps)") from None
    available = {"cpu": lambda: True, "cuda": torch.cuda.is_available,
                 "mps": lambda: getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available(),
                 "xpu": lambda: hasattr(torch, "xpu") and torch.xpu.is_available()}
    if not available.get(dev.type, lambda: True)():
        build = "a CPU-only torch build" if dev.type == "cuda" and torch.version.cuda is None else "this machine"
        raise ValueError(f"device {str(device)!r} is not available ({build}); use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device {str(device)!r} does not exist: {torch.cuda.device_count()} CUDA device(s)")
    if dtype is None or dtype == "auto":
        dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    elif isinstance(dtype, str):
        if dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"unknown dtype {dtype!r} (use float32, bfloat16 or float16)")
        dtype = getattr(torch, dtype)
    return dev, dtype


def check_weight_files(path: Path) -> None:
    """ValueError naming a weights file that is empty, truncated or not safetensors (read from its header,
    before any model is built)."""
    from safetensors import safe_open

    files = sorted(path.glob("*.safetensors"))
    if not files and not any(path.glob("*.bin")) and not (path / "parts.json").is_file():
        raise ValueError(f"{path}: no weights (*.safetensors) in the model directory")
    for f in files:
        size = f.stat().st_size
        if size == 0:
            raise ValueError(f"{f} is empty (0 bytes): the weights file is incomplete; copy or download it again")
        try:
            with safe_open(str(f), framework="pt") as h:
                keys = list(h.keys())
                last = keys[-1] if keys else None
                if last is not None:
                    h.get_slice(last)  # the header's extent is checked against the file's size
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
            raise ValueError(f"{f} is truncated or not a safetensors file ({' '.join(str(e).split())}); "
                             f"copy or download it again") from e


def resolve_source(source: str | Path) -> Path:
    """The directory of a model: a shipped name's assets, or the path itself (checked)."""
    path = Path(source)
    if str(source) in SHIPPED and not path.exists():
        path = SHIPPED[str(source)]
    if not path.exists():
        names = ", ".join(SHIPPED)
        raise FileNotFoundError(f"{source}: no such directory, and not a shipped model name ({names})")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: no config.json; not a model directory")
    return path


def check_model_type(path: Path) -> dict[str, Any]:
    """config.json of `path`, refused unless it is an infllava model (naming what to do instead)."""
    cfg_file = path / "config.json"
    try:
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise NotAnInfLlavaModel(f"{cfg_file} is not readable JSON ({e})") from e
    if not isinstance(cfg, dict):
        raise NotAnInfLlavaModel(f"{cfg_file} does not hold a JSON object")
    kind = cfg.get("model_type")
    if kind == "infllava":
        return cfg
    if kind == "llava_llama" or "mm_projector_type" in cfg or "mm_hidden_size" in cfg:
        raise NotAnInfLlavaModel(
            f"{path} is an official INF-LLaVA (LLaVA) checkpoint; convert it once with: "
            f"infllava convert-official {path} DST, then load DST"
        )
    raise NotAnInfLlavaModel(f"{path} is not an infllava model (config.json model_type {kind!r}, expected 'infllava')")


def load_model(source: str | Path, device: str | None = None, dtype: str | torch.dtype | None = None,
               quantization: str | None = None) -> LoadedModel:
    """(model, processor, provenance) from any source (module docstring), in eval mode on `device`.
    `quantization` "nf4" or "int8": the LM's linear layers through bitsandbytes (`infllava.quantization`)."""
    from .checkpoints.official import check_shards
    from .model import InfLlavaForConditionalGeneration
    from .parts import LM_DELTA_FILE, is_parts_dir, load_parts, read_manifest
    from .quantization import check_quantization, quantize_language_model

    path = resolve_source(source)
    check_model_type(path)
    device, dtype = resolve_device_dtype(device, dtype)
    quantization = check_quantization(quantization)
    check_shards(path)
    if not is_parts_dir(path):  # a parts directory checks its files against the sha256 in parts.json
        check_weight_files(path)
    if is_parts_dir(path):
        model, processor = load_parts(path, dtype)
        spec = read_manifest(path)
        lora = None
        if spec.get("lora"):
            from safetensors.torch import load_file

            lora = (load_file(str(path / "lora.safetensors")), spec["lora"])
        provenance = Provenance(str(source), path, "parts", packaged={k: spec[k] for k in ("vision_tower",
                                "language_model")}, lm_lora=lora, template=model.config.template)
    else:
        processor = load_processor(path)  # before the weights: a broken tokenizer fails fast, named
        model = InfLlavaForConditionalGeneration.from_pretrained(path, dtype=dtype)
        lm_delta = lora = None
        if (path / LM_DELTA_FILE).exists():  # its LM changed beyond LoRA factors
            lm_delta = json.loads((path / LM_DELTA_FILE).read_text())
        elif (path / "lora.safetensors").exists():
            if not (path / "lora.json").is_file():
                raise ValueError(f"{path}: lora.safetensors without lora.json (its rank and alpha)")
            from safetensors.torch import load_file

            # its LM holds these factors merged: a run from it saves them combined with its own
            lora = (load_file(str(path / "lora.safetensors")), json.loads((path / "lora.json").read_text()))
        provenance = Provenance(str(source), path, "full", lm_lora=lora, lm_delta=lm_delta,
                                template=model.config.template)
    if quantization:
        quantize_language_model(model, quantization, dtype)
    model.to(device).eval()
    set_stop_tokens(model, processor)
    return LoadedModel(model, processor, provenance)


def load_processor(path: Path, tokenizer: Any = None):
    """The directory's processor, a corrupt tokenizer or processor file named."""
    from .processing import InfLlavaProcessor

    try:
        return InfLlavaProcessor.from_pretrained(path, tokenizer=tokenizer)
    except (FileNotFoundError, ValueError) as e:
        if "processor_config.json" in str(e) or tokenizer is not None:
            raise
        raise ValueError(f"{path}: the tokenizer files ({_tokenizer_files(path)}) cannot be read: "
                         f"{' '.join(str(e).split())}") from e
    except Exception as e:  # noqa: BLE001 - tokenizers raise their own types (e.g. a JSON parse error)
        raise ValueError(f"{path}: the tokenizer files ({_tokenizer_files(path)}) cannot be read: "
                         f"{type(e).__name__}: {' '.join(str(e).split())}") from e


def _tokenizer_files(path: Path) -> str:
    names = [n for n in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json")
             if (path / n).exists()]
    return ", ".join(names) or "none found"


def set_stop_tokens(model, processor) -> None:
    """Generation stops at the template's stop tokens as well as the tokenizer's EOS."""
    ids = set(processor.stop_token_ids)
    eos = model.generation_config.eos_token_id
    ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    model.generation_config.eos_token_id = sorted(ids)
    if model.generation_config.pad_token_id is None:
        tok = processor.tokenizer
        model.generation_config.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else sorted(ids)[0]
