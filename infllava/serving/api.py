"""`infllava serve`: an OpenAI-compatible HTTP server (FastAPI) over the batching `Engine`.

    POST /v1/chat/completions   OpenAI chat completions: text and image_url (data: URLs) content parts, several
                                images, multi-turn, max_tokens / max_completion_tokens, temperature, top_p,
                                stop, seed, stream (SSE chunks ending with `data: [DONE]`,
                                stream_options.include_usage), usage counts
    GET  /v1/models             the served model
    GET  /health                200 while serving, 503 while shutting down
    GET  /metrics               Prometheus text: requests by status, queue depth, batch sizes, tokens, latency

Requests are parsed and checked here, at the edge; every bad request gets OpenAI's error JSON
`{"error": {"message", "type", "code"}}` with a 4xx status and the server keeps serving. Only `data:` image
URLs are read (nothing is downloaded). A client that disconnects has its generation cancelled.
Needs the `serve` extra (fastapi, uvicorn, prometheus-client).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import signal
import time
import uuid
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

from ..processing import ImageLoadError, load_image
from ..templates import content_text, validate_messages
from .engine import Engine, GenerationRequest, QueueFull, ShuttingDown


@dataclass
class ServeSettings:
    """Limits of a server (the `infllava serve` options)."""

    model_name: str = "infllava"
    api_key: str | None = None
    max_batch_size: int = 8
    max_queue: int = 64
    max_image_pixels: int | None = 100_000_000
    max_images_per_request: int = 8
    max_new_tokens_limit: int = 1024
    default_max_tokens: int = 256
    max_body_bytes: int = 32 * 2**20
    batch_window_s: float = 0.02
    # without a temperature in the request: the model's own default (its generation_config samples or not;
    # infllava's models decode greedily, as `infllava chat` and the demo do), not OpenAI's 1.0
    default_temperature: float = 0.0
    encoder_cache_size: int = 64  # images whose visual tokens the engine keeps (several questions about one image)


class APIError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", code: str | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.headers = status, message, type_, code, headers or {}


def _error_response(e: APIError):
    return JSONResponse({"error": {"message": e.message, "type": e.type, "code": e.code}}, status_code=e.status,
                        headers=e.headers)


class Metrics:
    """Prometheus metrics of one server (its own registry: several servers may share a process)."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        r = self.registry = CollectorRegistry()
        self.requests = Counter("infllava_requests", "chat completion requests by HTTP status", ["status"], registry=r)
        self.queue_depth = Gauge("infllava_queue_depth", "requests waiting for a batch", registry=r)
        self.running = Gauge("infllava_running_requests", "requests being decoded", registry=r)
        self.batch_size = Histogram("infllava_batch_size", "requests per batch", registry=r,
                                    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32, 64))
        self.prompt_tokens = Counter("infllava_prompt_tokens", "prompt tokens (image tokens included)", registry=r)
        self.generated_tokens = Counter("infllava_generated_tokens", "generated tokens", registry=r)
        self.latency = Histogram("infllava_request_latency_seconds", "request latency", registry=r,
                                 buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
        self.encoder_cache_hits = Gauge("infllava_encoder_cache_hits", "images whose visual tokens came from the "
                                        "encoder cache (since start)", registry=r)
        self.ttft = Histogram("infllava_time_to_first_token_seconds", "time to the first token", registry=r,
                              buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))


# --------------------------------------------------------------------------------------------- parsing


def _int_field(body: dict, name: str, low: int, high: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise APIError(400, f"'{name}' must be an integer, got {type(value).__name__}", code="invalid_type")
    if value < low or (high is not None and value > high):
        bound = f">= {low}" + (f" and <= {high}" if high is not None else "")
        raise APIError(400, f"'{name}' must be {bound}, got {value}", code="invalid_value")
    return value


def _float_field(body: dict, name: str, low: float, high: float, default: float, low_open: bool = False) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise APIError(400, f"'{name}' must be a number, got {type(value).__name__}", code="invalid_type")
    if value != value or value > high or value < low or (low_open and value == low):
        raise APIError(400, f"'{name}' must be in {'(' if low_open else '['}{low}, {high}], got {value}",
                       code="invalid_value")
    return float(value)


def _decode_image(url: Any, settings: ServeSettings):
    if not isinstance(url, str):
        raise APIError(400, "image_url.url must be a string", code="invalid_type")
    if not url.startswith("data:"):
        raise APIError(400, "only data URLs are accepted for images (data:image/...;base64,...); nothing is "
                            "downloaded", code="invalid_image_url")
    head, sep, data = url.partition(",")
    if not sep or ";base64" not in head:
        raise APIError(400, "an image data URL must be base64: data:image/png;base64,...", code="invalid_image_url")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise APIError(400, "the image data URL is not valid base64", code="invalid_base64") from None
    try:
        return load_image(raw, max_pixels=settings.max_image_pixels)
    except ImageLoadError as e:
        raise APIError(400, f"image: {' '.join(str(e).split())}", code="invalid_image") from None


def parse_messages(messages: Any, settings: ServeSettings) -> tuple[list[dict], list[Any]]:
    """OpenAI messages -> (our messages with "<image>" placeholders in their text, the decoded images)."""
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "'messages' must be a non-empty list", code="invalid_messages")
    out, images = [], []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise APIError(400, f"messages[{i}] must be an object", code="invalid_messages")
        role, content = msg.get("role"), msg.get("content")
        if role not in ("system", "user", "assistant"):
            raise APIError(400, f"messages[{i}].role must be system, user or assistant, got {role!r}",
                           code="invalid_role")
        if isinstance(content, str):
            text = content
        elif isinstance(content, list):
            parts = []
            for j, part in enumerate(content):
                kind = part.get("type") if isinstance(part, dict) else None
                if kind == "text":
                    if not isinstance(part.get("text"), str):
                        raise APIError(400, f"messages[{i}].content[{j}].text must be a string", code="invalid_type")
                    parts.append({"type": "text", "text": part["text"]})
                elif kind == "image_url":
                    url = part.get("image_url")
                    url = url.get("url") if isinstance(url, dict) else url
                    images.append(url)
                    parts.append({"type": "image"})
                else:
                    raise APIError(400, f"messages[{i}].content[{j}] must be a text or image_url part, got {kind!r}",
                                   code="invalid_content")
            text = content_text(parts)
        else:
            raise APIError(400, f"messages[{i}].content must be a string or a list of parts", code="invalid_content")
        if role == "user" and not text.strip():
            raise APIError(400, f"messages[{i}] (user) is empty", code="empty_message")
        out.append({"role": role, "content": text})
    if len(images) > settings.max_images_per_request:
        raise APIError(400, f"{len(images)} images in one request; the limit is {settings.max_images_per_request}",
                       code="too_many_images")
    try:
        validate_messages(out)
    except ValueError as e:
        raise APIError(400, str(e), code="invalid_messages") from None
    if out[-1]["role"] != "user":
        raise APIError(400, "the last message must be from the user", code="invalid_messages")
    return out, [_decode_image(u, settings) for u in images]


def parse_request(body: Any, settings: ServeSettings) -> dict:
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object", code="invalid_json")
    model = body.get("model")
    if model is not None and model != settings.model_name:
        raise APIError(404, f"model {model!r} does not exist; this server serves {settings.model_name!r}",
                       code="model_not_found")
    for unsupported in ("tools", "tool_choice", "functions", "function_call", "logprobs", "top_logprobs",
                        "response_format", "audio", "modalities"):
        if body.get(unsupported) not in (None, False, [], "none"):
            raise APIError(400, f"'{unsupported}' is not supported by this server", code="unsupported_parameter")
    n = _int_field(body, "n", 1)
    if n is not None and n != 1:
        raise APIError(400, "'n' > 1 is not supported: send n requests", code="unsupported_parameter")
    max_tokens = _int_field(body, "max_completion_tokens", 1, settings.max_new_tokens_limit)
    if max_tokens is None:
        max_tokens = _int_field(body, "max_tokens", 1, settings.max_new_tokens_limit)
    stop = body.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
        raise APIError(400, "'stop' must be a non-empty string or a list of up to 4 of them", code="invalid_value")
    seed = _int_field(body, "seed", -(2**63))
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise APIError(400, "'stream' must be a boolean", code="invalid_type")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise APIError(400, "'stream_options' must be an object", code="invalid_type")
    messages, images = parse_messages(body.get("messages"), settings)
    return dict(messages=messages, images=images, max_tokens=max_tokens or settings.default_max_tokens,
                temperature=_float_field(body, "temperature", 0.0, 2.0, settings.default_temperature),
                top_p=_float_field(body, "top_p", 0.0, 1.0, 1.0, low_open=True), stop=stop, seed=seed,
                stream=stream, include_usage=bool(options.get("include_usage")))


# --------------------------------------------------------------------------------------------- the app


def create_app(model, processor, settings: ServeSettings):
    """The FastAPI app serving `model` (an engine thread starts with it and stops at shutdown)."""
    from contextlib import asynccontextmanager

    metrics = Metrics()
    engine = Engine(model, processor, settings.max_batch_size, settings.max_queue, settings.batch_window_s,
                    on_batch=metrics.batch_size.observe, encoder_cache_size=settings.encoder_cache_size)
    context = getattr(model.config.text_config, "max_position_embeddings", None)
    state = {"serving": True}

    @asynccontextmanager
    async def lifespan(app):
        yield
        state["serving"] = False
        await asyncio.to_thread(engine.shutdown, 10.0)

    app = FastAPI(title="infllava", lifespan=lifespan)
    app.state.engine = engine

    def check_key(request: Request) -> None:
        if settings.api_key is None:
            return
        given = request.headers.get("authorization", "")
        if given != f"Bearer {settings.api_key}":
            raise APIError(401, "missing or wrong API key (Authorization: Bearer KEY)", "authentication_error",
                           "invalid_api_key", {"WWW-Authenticate": "Bearer"})

    @app.get("/health")
    async def health():
        ok = state["serving"]
        return JSONResponse({"status": "ok" if ok else "shutting down"}, status_code=200 if ok else 503)

    @app.get("/v1/models")
    async def models(request: Request):
        try:
            check_key(request)
        except APIError as e:
            return _error_response(e)
        return {"object": "list", "data": [{"id": settings.model_name, "object": "model", "created": 0,
                                            "owned_by": "infllava"}]}

    @app.get("/metrics")
    async def prometheus():
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        metrics.queue_depth.set(engine.queue_depth)
        metrics.running.set(engine.busy)
        metrics.encoder_cache_hits.set(engine.encoder_cache_hits)
        return PlainTextResponse(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        start = time.perf_counter()
        try:
            check_key(request)
            body = await _read_body(request, settings.max_body_bytes)
            try:
                parsed = json.loads(body)
            except (ValueError, UnicodeDecodeError) as e:
                raise APIError(400, f"the request body is not valid JSON ({' '.join(str(e).split())})",
                               code="invalid_json") from None
            req_args = await asyncio.to_thread(parse_request, parsed, settings)
            # rendering and tokenizing off the event loop, as parsing is
            prompt_ids = (await asyncio.to_thread(processor.tokenize_chats, [req_args["messages"]],
                                                  [len(req_args["images"])]))["input_ids"][0].tolist()
            placed = prompt_ids.count(processor.image_token_id) // processor.num_image_tokens
            if placed != len(req_args["images"]):
                raise APIError(400, f"the messages hold {placed} '<image>' placeholder(s) but {len(req_args['images'])} "
                                    f"image(s)", code="invalid_messages")
            if context and len(prompt_ids) > context:
                raise APIError(400, f"the prompt is {len(prompt_ids)} tokens, longer than the model's context of "
                                    f"{context} tokens", code="context_length_exceeded")
            if not state["serving"]:
                raise APIError(503, "the server is shutting down", "server_error", "shutting_down")
        except APIError as e:
            metrics.requests.labels(str(e.status)).inc()
            return _error_response(e)
        except ValueError as e:  # the template refused the conversation
            metrics.requests.labels("400").inc()
            return _error_response(APIError(400, " ".join(str(e).split()), code="invalid_messages"))
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        max_tokens = req_args["max_tokens"] if not context else min(req_args["max_tokens"], context - len(prompt_ids))
        gen = GenerationRequest(req_args["messages"], req_args["images"], prompt_ids, max(max_tokens, 1),
                                lambda kind, payload: loop.call_soon_threadsafe(events.put_nowait, (kind, payload)),
                                req_args["temperature"], req_args["top_p"], req_args["stop"], req_args["seed"])
        try:
            engine.submit(gen)
        except QueueFull as e:
            metrics.requests.labels("429").inc()
            return _error_response(APIError(429, str(e), "rate_limit_error", "queue_full", {"Retry-After": "1"}))
        except ShuttingDown as e:
            metrics.requests.labels("503").inc()
            return _error_response(APIError(503, str(e), "server_error", "shutting_down"))
        rid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())

        def finished(info: dict) -> None:
            metrics.requests.labels("200").inc()
            metrics.prompt_tokens.inc(info["prompt_tokens"])
            metrics.generated_tokens.inc(info["completion_tokens"])
            metrics.latency.observe(time.perf_counter() - start)
            if gen.first_token_at is not None:
                metrics.ttft.observe(gen.first_token_at - start)

        def usage(info: dict) -> dict:
            return {"prompt_tokens": info["prompt_tokens"], "completion_tokens": info["completion_tokens"],
                    "total_tokens": info["prompt_tokens"] + info["completion_tokens"]}

        if req_args["stream"]:
            def chunk(delta: dict, finish=None, use=None, choices=True) -> str:
                body = {"id": rid, "object": "chat.completion.chunk", "created": created,
                        "model": settings.model_name,
                        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}] if choices else []}
                if use is not None:
                    body["usage"] = use
                return f"data: {json.dumps(body)}\n\n"

            async def stream():
                try:
                    yield chunk({"role": "assistant", "content": ""})
                    while True:
                        kind, payload = await events.get()
                        if kind == "delta":
                            yield chunk({"content": payload})
                        elif kind == "done":
                            finished(payload)
                            yield chunk({}, payload["finish_reason"])
                            if req_args["include_usage"]:
                                yield chunk({}, use=usage(payload), choices=False)
                            yield "data: [DONE]\n\n"
                            return
                        else:
                            metrics.requests.labels("500").inc()
                            err = {"error": {"message": payload, "type": "server_error", "code": None}}
                            yield f"data: {json.dumps(err)}\n\n"
                            return
                finally:
                    gen.cancel()  # a client gone mid-stream: its generation stops, its batch slot frees

            return StreamingResponse(stream(), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

        pieces: list[str] = []
        while True:
            try:
                kind, payload = await asyncio.wait_for(events.get(), timeout=0.5)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    gen.cancel()
                    return JSONResponse({"error": {"message": "client disconnected", "type": "cancelled",
                                                   "code": None}}, status_code=499)
                continue
            if kind == "delta":
                pieces.append(payload)
            elif kind == "done":
                finished(payload)
                return {"id": rid, "object": "chat.completion", "created": created, "model": settings.model_name,
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(pieces)},
                                     "finish_reason": payload["finish_reason"]}],
                        "usage": usage(payload)}
            else:
                metrics.requests.labels("500").inc()
                return _error_response(APIError(500, payload, "server_error"))

    return app


async def _read_body(request, limit: int) -> bytes:
    """The body, or 413 when it is over `limit` bytes. A body up to 8x the limit is read to its end first (and
    dropped), so that the client, still sending, receives the 413 instead of a broken connection."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > 8 * limit:
        raise APIError(413, f"the request body is {int(declared)} bytes; the limit is {limit}", code="body_too_large")
    chunks, size = [], 0
    async for piece in request.stream():
        size += len(piece)
        if size > 8 * limit:
            break
        if size <= limit:
            chunks.append(piece)
    if size > limit:
        raise APIError(413, f"the request body is over the limit of {limit} bytes", code="body_too_large")
    return b"".join(chunks)


def serve(model_source: str, host: str = "127.0.0.1", port: int = 8000, device=None, dtype=None,
          settings: ServeSettings | None = None, log_level: str = "warning", quantization: str | None = None) -> None:
    """Load `model_source` (anything `infllava.load` takes; `quantization` nf4 / int8 for the LM) and serve it
    until SIGINT / SIGTERM."""
    import uvicorn

    from ..inference import load

    model, processor = load(model_source, device=device, dtype=dtype, quantization=quantization)
    settings = settings or ServeSettings()
    gc = model.generation_config
    settings.default_temperature = float(gc.temperature or 1.0) if gc.do_sample else 0.0
    if settings.max_image_pixels != processor.image_processor.max_pixels:
        processor.image_processor.max_pixels = settings.max_image_pixels
    app = create_app(model, processor, settings)
    print(f"serving {settings.model_name} on http://{host}:{port}/v1 (OpenAI chat completions)", flush=True)
    # uvicorn shuts down gracefully on SIGTERM (stops accepting, finishes or cancels what runs, bounded), then
    # raises the signal again for the previous handler: this one lets the process exit with status 0
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=10)
    finally:
        signal.signal(signal.SIGTERM, previous)
