"""The training loop: one process or many (accelerate: DDP; FSDP / DeepSpeed through `accelerate launch`).

Data order is a pure function of (seed, epoch): optimiser step s reads samples
order[s*G : (s+1)*G] (G = global batch), split into micro-batches of `micro_batch_size`, micro-batch
m of process r taking slice m*world + r. So the same global batch gives the same update on 1 or N
processes, and resuming at step s reads exactly the samples an uninterrupted run would.

The loss of a step is the sum of token losses over the global batch divided by the number of
supervised tokens in it (counted across processes before the backward passes), so it does not depend
on how the batch is split.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from contextlib import contextmanager
from dataclasses import asdict
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from ..data.records import load_records, record_image_paths, resolve_image_path
from .build import apply_stage, build_model, fit_projector_input_norm
from .checkpoint import list_checkpoints, load_checkpoint, save_checkpoint, save_sharded_checkpoint
from .config import ConfigError, RunConfig
from .data import SupervisedDataset, collate, grouped_order
from .final import save_final
from .schedule import lr_lambda


# Seconds to sleep after each step: lets the kill / Ctrl-C tests hit a run mid-way. Not for users.
_STEP_DELAY = float(os.environ.get("INFLLAVA_TEST_STEP_DELAY", "0") or 0)


class _StepBatches(torch.utils.data.Sampler):
    """Yields this process's micro-batches (lists of indices), step by step, from `start_step`."""

    def __init__(self, order_fn, start_step, total_steps, steps_per_epoch, G, mb, world, rank):
        self.order_fn, self.start, self.total = order_fn, start_step, total_steps
        self.spe, self.G, self.mb, self.world, self.rank = steps_per_epoch, G, mb, world, rank

    def __iter__(self):
        ga = self.G // (self.mb * self.world)
        for step in range(self.start, self.total):
            order = self.order_fn(step // self.spe)
            base = (step % self.spe) * self.G
            for m in range(ga):
                lo = base + (m * self.world + self.rank) * self.mb
                yield order[lo: lo + self.mb]

    def __len__(self):
        return (self.total - self.start) * (self.G // (self.mb * self.world))


def train(cfg: RunConfig) -> Path:
    """Run a stage; returns the directory of the final model (`OUTPUT/final`)."""
    from accelerate.utils import DistributedType, set_seed

    t = cfg.train
    cfg.check_paths()  # before any work: the data exists
    if t.stage == "align":
        from .align import train_align

        return train_align(cfg)
    acc = _accelerator(t)
    world, rank = acc.num_processes, acc.process_index
    out = Path(t.output_dir)
    set_seed(t.seed)  # the same initial weights on every process and every run
    deepspeed = acc.distributed_type == DistributedType.DEEPSPEED
    layout = _layout(acc)
    ckpt = _resume_path(t.resume, out)
    if ckpt is not None:  # before any work: the checkpoint can be resumed by this launch
        _check_resumable(ckpt, layout, world)
    if layout != "plain" and t.lora.enabled and t.lora.quantization not in (None, "none"):
        raise ConfigError(f"train.lora.quantization (QLoRA) is not supported under {layout}; use one process or DDP")
    with _whole_model_construction(acc) if deepspeed else _nullctx():
        model, processor, provenance = build_model(cfg)
    provenance = apply_stage(model, cfg, provenance)
    if t.feature_cache:
        from ..model.feature_cache import attach_feature_cache

        attach_feature_cache(model, t.feature_cache)

    records, problems = load_records(cfg.data.path)
    if not records:
        raise ConfigError(f"data.path={cfg.data.path}: no usable record ({len(problems)} malformed): nothing to train on")
    check_images_found(records, cfg.data.images)
    pc = model.config
    dataset = SupervisedDataset(records, cfg.data.images, processor.tokenizer, processor.image_processor,
                                processor.template, pc.image_token_id, pc.num_image_tokens, cfg.data.max_length)
    if model.projector.needs_fit:
        n = fit_projector_input_norm(model, _merged_features(model, dataset))
        if rank == 0:
            print(f"projector input statistics fitted on {n} training images", flush=True)
    G, mb = t.global_batch_size, t.micro_batch_size
    if G % (mb * world):
        raise ConfigError(f"train.global_batch_size={G} is not a multiple of micro_batch_size x processes = {mb} x {world}")
    ga = G // (mb * world)  # micro-batches per process per optimiser step
    steps_per_epoch = len(dataset) // G
    if steps_per_epoch == 0:
        raise ConfigError(f"{len(dataset)} samples cannot fill one global batch of {G}")
    total = t.max_steps or max(1, math.ceil(t.epochs * steps_per_epoch))
    lengths = dataset.lengths()

    _cache: dict[int, list[int]] = {}

    def order_fn(epoch):
        if epoch not in _cache:
            if cfg.data.group_by_modality_length:
                _cache[epoch] = grouped_order(lengths, mb, t.seed, epoch)
            else:
                g = torch.Generator().manual_seed(t.seed * 1000 + epoch)
                _cache[epoch] = torch.randperm(len(dataset), generator=g).tolist()
        return _cache[epoch]

    # Parameter groups: (multimodal = DEM + projector, or the rest) x (decayed matrices, or not).
    # train.projector_lr (LLaVA's mm_projector_lr) gives the multimodal modules their own peak LR.
    mm_ids = {id(p) for mod in (model.dem, model.projector) for p in mod.parameters()}
    groups = []
    for is_mm in (True, False):
        params = [p for p in model.parameters() if p.requires_grad and (id(p) in mm_ids) == is_mm]
        lr = (t.projector_lr or t.lr) if is_mm else t.lr
        groups += [{"params": [p for p in params if p.ndim >= 2], "weight_decay": t.weight_decay, "lr": lr},
                   {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0, "lr": lr}]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=t.lr)
    warmup = int(round(t.warmup_ratio * total))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, partial(lr_lambda, warmup=warmup, total=total,
                                                                      kind=t.scheduler))
    state = {"step": 0, "samples": 0, "skipped": 0}
    sharded = _is_sharded(acc)
    if ckpt is not None and not sharded:
        state.update(load_checkpoint(ckpt, model, optimizer, scheduler))
    if deepspeed:  # the run's batch and clipping decide, whatever the accelerate config file says
        acc.state.deepspeed_plugin.deepspeed_config.update(
            train_micro_batch_size_per_gpu=mb, gradient_accumulation_steps=ga, train_batch_size=G,
            gradient_clipping=t.max_grad_norm, zero_allow_untested_optimizer=True)
    model, optimizer = acc.prepare(model, optimizer)
    if sharded:  # FSDP / DeepSpeed: accelerate writes and reads the sharded states
        acc.register_for_checkpointing(scheduler)
        if ckpt is not None:
            acc.load_state(str(ckpt / "accelerate"))
            state.update(json.loads((ckpt / "state.json").read_text()))
    if ckpt is not None:
        _check_same_run(ckpt, state.pop("config", None), cfg)
        acc.print(f"resumed from {ckpt} at step {state['step']}")

    trained = [p for p in model.parameters() if p.requires_grad]
    standin = processor.image_processor.pixels(Image.new("RGB", (8, 8))) if _is_sharded(acc) else None
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=_StepBatches(order_fn, state["step"], total, steps_per_epoch, G, mb, world, rank),
        collate_fn=partial(collate, pad_token_id=_pad_id(processor)), num_workers=cfg.data.num_workers,
        persistent_workers=False,
    )
    log = _Logger(out, acc, t.report_to, cfg) if acc.is_main_process else None
    stop = _StopFlag()
    micro_iter = iter(loader)
    _reset_peak_memory()
    model.train()
    t0, samples_since = time.perf_counter(), 0
    bar = _progress(acc, state["step"], total)
    try:
        while state["step"] < total:
            micros = [next(micro_iter) for _ in range(ga)]
            skipped = [s for b in micros for s in b["skipped"]]
            n_local = sum(int((b["labels"][:, 1:] != -100).sum()) if b["labels"].numel() else 0 for b in micros)
            counts = acc.reduce(torch.tensor([n_local, len(skipped)], device=acc.device), reduction="sum")
            n_global = max(int(counts[0]), 1)
            loss_sum = torch.zeros((), device=acc.device)
            for i, b in enumerate(micros):
                ctx = acc.no_sync(model) if i < ga - 1 else _nullctx()
                with ctx:
                    loss, s = _micro_loss(model, b, acc, n_global, world, standin)
                    if deepspeed:  # the engine steps (and clips) after the last micro-batch; the loss is
                        acc.sync_gradients = i == ga - 1  # already the global mean: no scaling by ga
                        acc.backward(loss, scale_wrt_gas=False)
                    else:
                        acc.backward(loss)
                    loss_sum += s
            if t.max_grad_norm > 0 and not deepspeed:  # every trained weight, as prepared (FSDP replaces them by sharded ones)
                acc.clip_grad_norm_(trained, t.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state["step"] += 1
            state["samples"] += G - int(counts[1])
            state["skipped"] += int(counts[1])
            samples_since += G
            loss_value = float(acc.reduce(loss_sum.detach(), reduction="sum")) / n_global
            if log:
                for sid, why in skipped:
                    log.skip(sid, why)
                bar.update(1)
                if state["step"] % t.log_every == 0 or state["step"] == total:
                    dt = time.perf_counter() - t0
                    rec = {"step": state["step"], "loss": round(loss_value, 6), "lr": scheduler.get_last_lr()[0],
                           "samples_per_s": round(samples_since / dt, 3), "skipped_total": state["skipped"]}
                    fc = acc.unwrap_model(model).vision_tower.feature_cache
                    if fc is not None:
                        rec["feature_cache_hits"], rec["feature_cache_misses"] = fc.hits, fc.misses
                    bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{rec['lr']:.2e}", sps=rec["samples_per_s"])
                    log.metrics(rec)
                    t0, samples_since = time.perf_counter(), 0
            state["last_loss"] = loss_value
            if _STEP_DELAY:
                time.sleep(_STEP_DELAY)
            stopping = stop.requested
            if world > 1:  # a signal may reach only some processes: all stop together
                stopping = bool(acc.reduce(torch.tensor(int(stopping), device=acc.device), reduction="sum"))
            if (t.save_every and state["step"] % t.save_every == 0) or stopping or state["step"] == total:
                _save(acc, out, model, optimizer, scheduler, state, cfg)
            if stopping:
                acc.print(f"stopped at step {state['step']} (checkpoint saved); rerun to resume")
                raise KeyboardInterrupt
        memory = _memory_report(model, optimizer)  # every process's, in the log (benchmarks/train_memory.py)
        if world > 1:
            gathered = [None] * world
            torch.distributed.all_gather_object(gathered, memory)
            memory = gathered
        if log:
            log.event({"event": "memory", "processes": memory if world > 1 else [memory]})
    finally:
        stop.restore()
        bar.close()
        if log:
            log.close()
    if state["samples"] == 0:
        raise ConfigError(f"every sample was skipped ({state['skipped']}; reasons in {out / 'train.log'}): nothing "
                          f"was trained, so no final model is written")
    final = out / "final"
    if _is_sharded(acc):
        full = acc.get_state_dict(model)  # gathered on the main process (all processes take part)
        if acc.is_main_process:  # the trained model is sharded: its full weights go into an unsharded copy
            with _whole_model_construction(acc) if deepspeed else _nullctx():
                plain = _unsharded_model(cfg)
            save_final(plain, processor, final, provenance, full, cfg.train.save_full_model)
    elif acc.is_main_process:
        save_final(acc.unwrap_model(model), processor, final, provenance, save_full_model=cfg.train.save_full_model,
                   rebuild=lambda: _starting_model(cfg))
    acc.wait_for_everyone()
    return final


def _accelerator(t):
    """The run's Accelerator. On CPU, torchrun / `accelerate launch` give gloo DDP; and a sharded launch
    (`accelerate launch --config_file configs/accelerate/{fsdp,deepspeed_zero*}.yaml`, which sets
    ACCELERATE_USE_FSDP / ACCELERATE_USE_DEEPSPEED) gets accelerate's own FSDP2 / DeepSpeed code over gloo:
    accelerate 1.x enables those only on accelerator devices, so the multi-process CPU state is handed to
    them as a GPU run's would be. That is how the sharded paths are tested on CPU machines (tests/test_sharded.py)."""
    from accelerate import Accelerator, DistributedDataParallelKwargs, PartialState
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedType

    # A second train() in one process (tests, notebooks) may ask for another precision: accelerate keeps
    # its settings in a process-wide singleton, so drop them (the distributed set-up itself is kept).
    AcceleratorState._reset_state(reset_partial_state=False)
    cpu = not torch.cuda.is_available()
    kind = sharding_requested()
    if cpu and kind:
        state = PartialState(cpu=True)
        if state.distributed_type != DistributedType.MULTI_CPU:
            raise ConfigError(f"{kind} on CPU needs several processes (accelerate launch --num_processes N, N >= 2); "
                              f"for one process use `infllava train` without the {kind} config")
        state.distributed_type = DistributedType.MULTI_GPU  # read by AcceleratorState to select FSDP
        cpu = False
    return Accelerator(
        cpu=cpu,
        mixed_precision="bf16" if t.precision == "bf16" else "no",
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )


@contextmanager
def _whole_model_construction(acc):
    """Under ZeRO-3, transformers builds models partitioned (deepspeed.zero.Init) while accelerate's DeepSpeed
    config is registered with it. infllava builds the whole model in every process (its parts load like any
    run's) and ZeRO-3 partitions it in `prepare`; so the registration is lifted while the model is built."""
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        acc.state.deepspeed_plugin.set_deepspeed_weakref()


def sharding_requested() -> str | None:
    """"FSDP" or "DeepSpeed" when this process was started by `accelerate launch` with such a config."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        return "DeepSpeed"
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        return "FSDP"
    return None


def _starting_model(cfg: RunConfig):
    """The model the run started from, rebuilt in full precision (the same seed: a preset's random start too)."""
    from accelerate.utils import set_seed

    set_seed(cfg.train.seed)
    return build_model(cfg).model


def _unsharded_model(cfg: RunConfig):
    """The run's model as built before sharding (frozen parts, LoRA wrappers), on CPU: what the gathered
    full weights of a sharded run are loaded into for `save_final`."""
    model = _starting_model(cfg)
    apply_stage(model, cfg)
    return model


def _merged_features(model, dataset, batch: int = 8):
    """Merged visual features (B, T, d) of the dataset's samples with one image each, in order."""
    was_training = model.training
    model.eval()
    pending = []
    try:
        for i in range(len(dataset)):
            item = dataset[i]
            pv = item.get("pixel_values")
            if pv is None or pv.shape[0] != 1:
                continue
            pending.append(pv)
            if len(pending) == batch:
                yield model.encode_images(torch.cat(pending))
                pending = []
        if pending:
            yield model.encode_images(torch.cat(pending))
    finally:
        model.train(was_training)


def _micro_loss(model, b, acc, n_global, world, standin=None):
    """(loss to backpropagate, summed token loss) for one micro-batch. standin: a blank image [1, 3, H, W] that
    a text-only micro-batch runs through the vision path (adding zero), so every process computes the same
    weights' gradients: ZeRO and FSDP reduce the gradients a process has, and desynchronise otherwise (DDP
    handles unused weights itself)."""
    if b["input_ids"].numel() == 0:  # everything skipped: a zero loss still joins the gradient sync
        zero = sum(p.sum() for p in model.parameters() if p.requires_grad) * 0.0
        return zero, torch.zeros((), device=acc.device)
    pixel_values = b["pixel_values"] if b["pixel_values"] is not None else standin
    pixel_values = pixel_values.to(acc.device) if pixel_values is not None else None
    labels = b["labels"].to(acc.device)
    # Logits only where some row is supervised: position t predicts token t + 1. The LM head over a
    # 50k-token vocabulary at every position would otherwise cost a fifth of a small LM's step.
    keep = (labels[:, 1:] != -100).any(0).nonzero().flatten()
    if keep.numel() == 0:  # nothing supervised (all truncated): a zero loss that still reaches every weight
        keep = keep.new_zeros(1)
    with acc.autocast():
        logits = model(input_ids=b["input_ids"].to(acc.device), attention_mask=b["attention_mask"].to(acc.device),
                       pixel_values=pixel_values, logits_to_keep=keep).logits
    token_loss = F.cross_entropy(logits.float().flatten(0, 1), labels[:, keep + 1].flatten(),
                                 ignore_index=-100, reduction="sum")
    # DDP averages gradients over processes: scale so the result is the global per-token mean
    return token_loss * world / n_global, token_loss.detach()


def _is_sharded(acc) -> bool:
    from accelerate.utils import DistributedType

    return acc.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)


def _memory_report(model, optimizer) -> dict:
    """What this process holds at the end of training, in MiB: the model's weights as stored here (a shard
    under FSDP / ZeRO-3), the optimiser's (its states and any master copies of the weights, e.g. ZeRO's
    fp32 partitions), and the peak resident memory of the training steps (Linux; elsewhere the process's)."""
    import resource

    seen: set[int] = set()

    def mib(tensors) -> float:
        total = 0
        for t in tensors:
            t = t.to_local() if hasattr(t, "to_local") else t  # a DTensor: this process's shard
            storage = t.untyped_storage()
            if storage.data_ptr() in seen or storage.nbytes() == 0:
                continue
            seen.add(storage.data_ptr())
            total += storage.nbytes()
        return round(total / 2**20, 1)

    params = mib(getattr(p, "ds_tensor", p) for p in model.parameters())  # ds_tensor: ZeRO-3's partition
    inner = optimizer
    while hasattr(inner, "optimizer"):  # accelerate's wrapper, DeepSpeed's ZeRO optimiser, ... torch's
        inner = inner.optimizer
    opt = [p for g in inner.param_groups for p in g["params"]]
    opt += [v for st in inner.state.values() for v in st.values() if torch.is_tensor(v)]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # the process's, loading included
    try:  # Linux: the peak since _reset_peak_memory (the training steps)
        status = Path("/proc/self/status").read_text()
        peak = int(next(x for x in status.splitlines() if x.startswith("VmHWM:")).split()[1]) / 1024
    except (OSError, StopIteration, ValueError):
        pass
    return {"rank": int(os.environ.get("RANK", 0)), "params_mib": params, "optimizer_mib": mib(opt),
            "peak_rss_mib": round(peak, 1)}


def _reset_peak_memory() -> None:
    """Linux: start the process's peak resident memory (VmHWM) afresh, so the memory report shows the training
    steps' peak rather than loading's (GGUF weights are dequantised while loading, for one)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _layout(acc) -> str:
    """How a checkpoint of this launch stores its states: "FSDP" (full state dicts: any number of processes
    can resume it), "DeepSpeed ZeRO-N" (one partition per process) or "plain" (one process or DDP)."""
    from accelerate.utils import DistributedType

    if acc.distributed_type == DistributedType.FSDP:
        return "FSDP"
    if acc.distributed_type == DistributedType.DEEPSPEED:
        return f"DeepSpeed ZeRO-{acc.state.deepspeed_plugin.zero_stage}"
    return "plain"


def _check_resumable(ckpt: Path, layout: str, world: int) -> None:
    """ConfigError, before any work, when this launch cannot resume `ckpt`: another kind of launch wrote it,
    or DeepSpeed partitions written by another number of processes."""
    try:
        saved = json.loads((ckpt / "state.json").read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"train.resume: {ckpt}/state.json cannot be read ({e})") from e
    was, n = saved.get("layout"), saved.get("processes")
    if was is None:  # written before these were recorded: the checkpoint's files tell
        was = "plain" if (ckpt / "trainable.safetensors").exists() else None
    if was is not None and was != layout:
        raise ConfigError(f"{ckpt} was written by a {was} launch ({n or '?'} processes) and this is a {layout} "
                          f"launch: resume it with the same kind of launch (the same accelerate config), or set "
                          f"train.resume=none to start over")
    if layout.startswith("DeepSpeed") and n is not None and n != world:
        raise ConfigError(f"{ckpt} holds DeepSpeed's per-process partitions of {n} processes; this launch has "
                          f"{world}: resume it with --num_processes {n} (FSDP checkpoints resume on any number)")


def _save(acc, out, model, optimizer, scheduler, state, cfg):
    acc.wait_for_everyone()
    st = dict(state, config=cfg.to_dict(), processes=acc.num_processes, layout=_layout(acc))
    if _is_sharded(acc):
        save_sharded_checkpoint(acc, out, st, cfg.train.keep_last)
    elif acc.is_main_process:
        save_checkpoint(out, acc.unwrap_model(model), optimizer, scheduler, st, cfg.train.keep_last)
    acc.wait_for_everyone()


def check_images_found(records, image_root, probe: int = 64) -> None:
    """ConfigError when none of the first `probe` image paths of the data exists under `image_root` (a wrong
    data.images would otherwise skip every sample and train on nothing)."""
    paths = []
    for r in records:
        try:
            paths += record_image_paths(r)
        except ValueError:
            continue
        if len(paths) >= probe:
            break
    if paths and not any(os.path.exists(resolve_image_path(p, image_root)) for p in paths[:probe]):
        raise ConfigError(f"none of the first {min(len(paths), probe)} image paths of the data exists under "
                          f"data.images={image_root!r} (e.g. {resolve_image_path(paths[0], image_root)}): set data.images "
                          f"to the folder the paths are relative to")


# Settings that may change between a run and its resumption (logging, loading, checkpoint cadence).
_RESUMABLE_CHANGES = {"train.resume", "train.log_every", "train.report_to", "train.save_every", "train.keep_last",
                      "train.max_steps", "train.epochs", "data.num_workers", "train.feature_cache",
                      "train.save_full_model"}


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _check_same_run(ckpt: Path, saved: dict | None, cfg: RunConfig) -> None:
    """Refuse to resume a checkpoint written by a different configuration (silent mixing)."""
    if saved is None:
        return
    old, new = _flatten(saved), _flatten(cfg.to_dict())
    changed = sorted(k for k in set(old) | set(new) if k not in _RESUMABLE_CHANGES and old.get(k) != new.get(k))
    if changed:
        raise ConfigError(
            f"{ckpt} was written with a different configuration ({', '.join(changed[:6])}); "
            "use another train.output_dir, or train.resume=none to start over"
        )


def _resume_path(resume: str, out: Path):
    if resume == "none":
        return None
    if resume == "auto":
        found = list_checkpoints(out)
        return found[-1] if found else None
    p = Path(resume)
    if not p.is_dir():
        raise ConfigError(f"train.resume: {p} is not a checkpoint directory")
    return p


def _pad_id(processor) -> int:
    tok = processor.tokenizer
    return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id


class _nullctx:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


class _StopFlag:
    """First Ctrl-C / SIGTERM: finish the step, save, stop. Second Ctrl-C: stop at once."""

    def __init__(self):
        self.requested = False
        self.previous = {}
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread
            pass

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nstopping after this step (saving a checkpoint); Ctrl-C again to stop at once", flush=True)

    def restore(self):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def _progress(acc, start, total):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, desc="train", disable=not acc.is_main_process, dynamic_ncols=True)


class _Logger:
    """train.log (JSON lines: metrics and skipped samples), plus TensorBoard / W&B when asked."""

    def __init__(self, out: Path, acc, report_to, cfg: RunConfig):
        out.mkdir(parents=True, exist_ok=True)
        self.file = open(out / "train.log", "a", buffering=1)
        self.file.write(json.dumps({"event": "start", "processes": acc.num_processes, "config": asdict(cfg)}) + "\n")
        self.tb = self.wandb = None
        if "tensorboard" in report_to:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ConfigError("train.report_to: tensorboard needs `pip install tensorboard`") from e
            self.tb = SummaryWriter(str(out / "tensorboard"))
        if "wandb" in report_to:
            try:
                import wandb
            except ImportError as e:
                raise ConfigError("train.report_to: wandb needs `pip install wandb`") from e
            self.wandb = wandb.init(project="infllava", dir=str(out), config=asdict(cfg))

    def metrics(self, rec: dict) -> None:
        self.file.write(json.dumps(rec) + "\n")
        if self.tb:
            for k, v in rec.items():
                if k != "step":
                    self.tb.add_scalar(k, v, rec["step"])
        if self.wandb:
            self.wandb.log(rec, step=rec["step"])

    def event(self, rec: dict) -> None:
        self.file.write(json.dumps(rec) + "\n")

    def skip(self, sample_id, reason: str) -> None:
        self.file.write(json.dumps({"event": "skip", "id": sample_id, "reason": reason}) + "\n")

    def close(self) -> None:
        self.file.close()
        if self.tb:
            self.tb.close()
        if self.wandb:
            self.wandb.finish()
