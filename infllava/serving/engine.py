"""The batching engine behind `infllava serve`: requests in, streamed text out; the model code knows no HTTP.

One worker thread owns the model. It takes the waiting requests (up to `max_batch_size`, gathering for
`batch_window_s` after the first), then for the batch:

1. encodes every image of every request in one tower call (`model.image_tokens`), except those in its encoder
   cache (the visual tokens of the last `encoder_cache_size` images, keyed by their pixels: several questions
   about one image encode it once);
2. prefills the left-padded prompts together (the processor's ids: message text never becomes control
   tokens);
3. decodes step by step with the KV cache: each row samples with its own settings (greedy, or its own
   temperature / top_p / seed), streams its new text, and leaves the batch when it finishes (eos, a stop
   string, its max_tokens, its client gone): its row is dropped from the cache, so a finished or
   cancelled request frees its slot and its compute at once.

Requests that arrive while a batch decodes wait for the next batch (the gathering window is the joining
point; joining a running batch between decode steps would need caches of different lengths merged).
Greedy answers equal those of the request alone (left padding with the matching position ids; tested).

Notation: B rows in the batch, L prompt length, V vocabulary.
"""

from __future__ import annotations

import inspect
import itertools
from collections import OrderedDict
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..processing.images import image_key
from ..templates import first_stop


class QueueFull(Exception):
    """The engine's queue is full (the API answers 429)."""


class ShuttingDown(Exception):
    """The engine no longer accepts requests (the API answers 503)."""


@dataclass
class GenerationRequest:
    """One conversation to answer. `emit(kind, payload)` receives ("delta", text) pieces and one final
    ("done", {"finish_reason", "prompt_tokens", "completion_tokens"}) or ("error", message); it is called
    from the engine's thread."""

    messages: list[dict]
    images: list[Any]
    prompt_ids: list[int]
    max_tokens: int
    emit: Callable[[str, Any], None]
    temperature: float = 0.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    cancelled: bool = False
    created: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None

    def cancel(self) -> None:
        """The client is gone: the engine drops the request at its next step."""
        self.cancelled = True


@dataclass
class _Row:
    req: GenerationRequest
    generated: list[int] = field(default_factory=list)
    sent: int = 0  # characters of the answer already emitted
    generator: torch.Generator | None = None


class Engine:
    """Batches `GenerationRequest`s over one model (see the module docstring)."""

    def __init__(self, model, processor, max_batch_size: int = 8, max_queue: int = 64, batch_window_s: float = 0.02,
                 on_batch: Callable[[int], None] | None = None, encoder_cache_size: int = 64):
        if max_batch_size < 1 or max_queue < 1 or batch_window_s < 0:
            raise ValueError("max_batch_size and max_queue must be >= 1, batch_window_s >= 0")
        self.model, self.processor = model, processor
        self.max_batch_size, self.max_queue, self.batch_window_s = max_batch_size, max_queue, batch_window_s
        self.on_batch = on_batch
        self._queue: queue.Queue[GenerationRequest] = queue.Queue()
        self._accepting = True
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="infllava-engine", daemon=True)
        eos = model.generation_config.eos_token_id
        self._eos = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        lm_params = inspect.signature(model.model.language_model.forward).parameters
        self._cache_arg = "cache" if "cache" in lm_params else "past_key_values"
        self.busy = 0  # requests being decoded now
        self.encoder_cache_size = encoder_cache_size  # images whose visual tokens are kept (0: none)
        self._encoded: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.encoder_cache_hits = 0
        self._thread.start()

    # ---- the API side ----
    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    def submit(self, req: GenerationRequest) -> None:
        if not self._accepting:
            raise ShuttingDown("the server is shutting down")
        if self._queue.qsize() >= self.max_queue:
            raise QueueFull(f"the queue is full ({self.max_queue} requests waiting)")
        self._queue.put(req)

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop accepting; cancel what waits; let the running batch finish within `timeout` s, then cancel it."""
        self._accepting = False
        while True:
            try:
                self._queue.get_nowait().emit("error", "the server is shutting down")
            except queue.Empty:
                break
        self._stop.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._cancel_all = True
            self._thread.join(timeout)

    _cancel_all = False

    # ---- the worker ----
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                first = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            batch = [first]
            deadline = time.perf_counter() + self.batch_window_s
            while len(batch) < self.max_batch_size:
                wait = deadline - time.perf_counter()
                try:
                    batch.append(self._queue.get(timeout=max(wait, 0)) if wait > 0 else self._queue.get_nowait())
                except queue.Empty:
                    break
            batch = [r for r in batch if not r.cancelled]
            if not batch:
                continue
            self.busy = len(batch)
            try:
                if self.on_batch:
                    self.on_batch(len(batch))
                self._generate(batch)
            except Exception as e:  # noqa: BLE001 - a failing batch fails its requests, not the server
                for r in batch:
                    r.emit("error", f"generation failed: {' '.join(str(e).split())}")
            finally:
                self.busy = 0

    @torch.inference_mode()
    def _generate(self, batch: list[GenerationRequest]) -> None:
        model, proc = self.model, self.processor
        p = next(model.parameters())
        device = p.device
        images = [im for r in batch for im in r.images]
        feats = self._image_features(images, device, p.dtype) if images else None
        enc = proc.pad([r.prompt_ids for r in batch], "left")
        input_ids = torch.tensor(enc["input_ids"], device=device)
        mask = torch.tensor(enc["attention_mask"], device=device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        rows = [_Row(r, generator=_generator(r.seed, device)) for r in batch]
        embeds = model.embed_inputs(input_ids, image_features=feats)
        out = model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True,
                    logits_to_keep=1)
        cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
        logits = out.logits[:, -1]  # (B, V)
        next_pos = positions[:, -1:] + 1
        for _ in itertools.count():
            tokens = torch.stack([self._sample(logits[i], row) for i, row in enumerate(rows)])  # (B,)
            keep = []
            for i, row in enumerate(rows):
                if self._advance(row, int(tokens[i])) is None:
                    keep.append(i)
            if len(keep) < len(rows):
                if not keep:
                    return
                idx = torch.tensor(keep, device=device)
                cache.batch_select_indices(idx)
                rows = [rows[i] for i in keep]
                tokens, mask, next_pos = tokens[idx], mask[idx], next_pos[idx]
            mask = torch.cat([mask, mask.new_ones(len(rows), 1)], -1)
            out = model(input_ids=tokens[:, None], attention_mask=mask, position_ids=next_pos, use_cache=True,
                        **{self._cache_arg: cache})
            cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
            logits = out.logits[:, -1]
            next_pos = next_pos + 1

    def _image_features(self, images: list, device, dtype) -> torch.Tensor:
        """(N, T, D) visual tokens of the batch's images: those seen recently come from the encoder cache
        (keyed by their pixels; several questions about one image encode it once), the others are encoded
        together in one tower call."""
        keys = [image_key(im) for im in images]
        known = {k: self._encoded[k] for k in keys if k in self._encoded}
        todo = list(dict.fromkeys(k for k in keys if k not in known))
        if todo:
            first = {k: im for k, im in zip(keys, images)}
            pixels = self.processor.image_processor.pixels([first[k] for k in todo]).to(device, dtype)
            known.update(zip(todo, self.model.image_tokens(pixels)))
        for k in keys:
            self._encoded[k] = known[k]
            self._encoded.move_to_end(k)
        while len(self._encoded) > self.encoder_cache_size:
            self._encoded.popitem(last=False)
        self.encoder_cache_hits += len(keys) - len(todo)
        return torch.stack([known[k] for k in keys])

    def _sample(self, logits: torch.Tensor, row: _Row) -> torch.Tensor:
        req = row.req
        if req.temperature <= 0:
            return logits.argmax(-1)
        probs = torch.softmax(logits.float() / req.temperature, -1)
        if req.top_p < 1:
            sorted_p, order = probs.sort(descending=True)
            cut = sorted_p.cumsum(-1) - sorted_p > req.top_p  # keep the smallest set reaching top_p
            sorted_p[cut] = 0
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
        return torch.multinomial(probs / probs.sum(), 1, generator=row.generator)[0]

    def _advance(self, row: _Row, token: int) -> str | None:
        """Add `token` to `row`, emit its new text; the finish reason when the row is done, else None."""
        req = row.req
        if req.cancelled or self._cancel_all:
            req.emit("error", "cancelled")
            return "cancelled"
        if req.first_token_at is None:
            req.first_token_at = time.perf_counter()
        finish = None
        if token in self._eos:
            finish = "stop"
        else:
            row.generated.append(token)
        text = self.processor.tokenizer.decode(row.generated, skip_special_tokens=True)
        cut = first_stop(text, req.stop)
        if cut is not None:
            text, finish = text[:cut], "stop"
        if finish is None and len(row.generated) >= req.max_tokens:
            finish = "length"
        # hold back what could still become a stop string, and an unfinished multi-byte character
        hold = 0 if finish else max((len(s) - 1 for s in req.stop), default=0)
        ready = len(text) - hold
        if not finish and text.endswith("\ufffd"):
            ready = min(ready, len(text) - 1)
        if ready > row.sent:
            req.emit("delta", text[row.sent: ready])
            row.sent = ready
        if finish:
            req.emit("done", {"finish_reason": finish, "prompt_tokens": len(req.prompt_ids),
                              "completion_tokens": len(row.generated)})
        return finish


def _generator(seed: int | None, device) -> torch.Generator | None:
    if seed is None:
        return None
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g
