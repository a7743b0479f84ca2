"""`infllava serve`: the batching engine, and the real HTTP server driven by the official `openai` client and raw
HTTP (every bad request gets OpenAI's error JSON, and the server keeps serving)."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from openai import OpenAI

import infllava
from infllava.serving.engine import Engine, GenerationRequest
from infllava.tiny import build_tiny_model

ROOT = Path(__file__).resolve().parent.parent
KEY = "test-key"


def data_url(color=(200, 10, 10), size=(40, 30)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, model_dir, *flags):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "infllava_cli", "serve", str(model_dir), "--port", str(self.port),
             "--served-model-name", "tiny", *map(str, flags)],
            env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stdout.read().decode()}")
            try:
                if urllib.request.urlopen(self.url + "/health", timeout=2).status == 200:
                    return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError("server did not come up")

    def client(self, key=KEY):
        return OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=120)

    def post(self, body, key=KEY, raw: bytes | None = None, headers=None):
        data = raw if raw is not None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + "/v1/chat/completions", data=data, method="POST",
                                     headers={"Content-Type": "application/json", **(headers or {}),
                                              **({"Authorization": f"Bearer {key}"} if key else {})})
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                return r.status, json.loads(r.read()), dict(r.headers)
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}"), dict(e.headers)

    def metric(self, name: str) -> float:
        text = urllib.request.urlopen(self.url + "/metrics", timeout=10).read().decode()
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and not line.startswith("#"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("serve") / "model")


@pytest.fixture(scope="module")
def server(model_dir):
    s = Server(model_dir, "--api-key", KEY, "--max-image-pixels", 5000, "--max-images-per-request", 2,
               "--max-new-tokens-limit", 64, "--max-body-mb", 1, "--batch-window-ms", 100)
    yield s
    s.stop()


def user(text, *images):
    return [{"role": "user", "content": [*({"type": "image_url", "image_url": {"url": u}} for u in images),
                                         {"type": "text", "text": text}]}]


# ---------------------------------------------------------------------------------- the engine


def test_greedy_answers_are_the_same_alone_and_in_a_batch(model_dir):
    model, processor = infllava.load(model_dir, device="cpu")
    red, blue = Image.new("RGB", (40, 30), (200, 10, 10)), Image.new("RGB", (20, 50), (10, 10, 200))
    asks = [([{"role": "user", "content": "<image>\nWhat colour?"}], [red], 12),
            ([{"role": "user", "content": "Say something long."}], [], 15),
            ([{"role": "user", "content": "<image>\n<image>\nCompare them."}], [red, blue], 18),
            ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
              {"role": "user", "content": "<image>\nand now?"}], [blue], 21)]
    engine = Engine(model, processor, max_batch_size=8, batch_window_s=0.5)

    def run(batch):
        results, done = [{} for _ in batch], threading.Event()
        left = [len(batch)]

        def emit_for(i):
            def emit(kind, payload):
                results[i].setdefault("text", "")
                if kind == "delta":
                    results[i]["text"] += payload
                else:
                    results[i]["end"] = (kind, payload)
                    left[0] -= 1
                    if not left[0]:
                        done.set()
            return emit

        for i, (msgs, imgs, max_tokens) in enumerate(batch):
            ids = processor.tokenize_chats([msgs], [len(imgs)])["input_ids"][0].tolist()
            engine.submit(GenerationRequest(msgs, imgs, ids, max_tokens, emit_for(i)))
        assert done.wait(120)
        return results

    together = run(asks)
    hits = engine.encoder_cache_hits
    assert hits == 2  # the second red and the second blue image: encoded once in the batch
    alone = [run([a])[0] for a in asks]
    assert engine.encoder_cache_hits == hits + 4  # the 4 images of the single runs were all cached by now
    engine.encoder_cache_size = 0  # and without the cache, the same answers
    uncached = [run([a])[0] for a in asks]
    engine.shutdown()
    assert [r["text"] for r in uncached] == [r["text"] for r in alone]
    assert [r["text"] for r in together] == [r["text"] for r in alone]
    assert all(r["end"][0] == "done" for r in together)
    # and they are what infllava.answer / ChatSession generate
    session = infllava.ChatSession(model, processor, images=[red], max_new_tokens=12)
    assert session.ask("What colour?") == together[0]["text"].strip()


# ---------------------------------------------------------------------------------- the server, good requests


def test_openai_client_chat_stream_and_usage(server):
    c = server.client()
    assert [m.id for m in c.models.list().data] == ["tiny"]
    r = c.chat.completions.create(model="tiny", messages=user("What colour?", data_url()), max_tokens=6, temperature=0)
    assert r.object == "chat.completion" and r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.completion_tokens <= 6 and r.usage.prompt_tokens > 16 and r.usage.total_tokens == \
        r.usage.prompt_tokens + r.usage.completion_tokens
    stream = c.chat.completions.create(model="tiny", messages=user("What colour?", data_url()), max_tokens=6,
                                       temperature=0, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == r.choices[0].message.content  # streamed = whole, greedy
    assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens and not chunks[-1].choices
    # several images, multi-turn, stop strings, max_completion_tokens, a seeded sample is reproducible
    two = c.chat.completions.create(model="tiny", max_completion_tokens=5, messages=[
        *user("Compare", data_url(), data_url((0, 0, 200))), {"role": "assistant", "content": "they differ"},
        {"role": "user", "content": "how?"}])
    assert two.usage.completion_tokens <= 5
    a, b = (c.chat.completions.create(model="tiny", messages=user("hi"), max_tokens=8, temperature=1.0, top_p=0.9,
                                      seed=7).choices[0].message.content for _ in range(2))
    assert a == b
    full = c.chat.completions.create(model="tiny", messages=user("hi"), max_tokens=20, temperature=0)
    text = full.choices[0].message.content
    if len(text) > 3:
        cut = c.chat.completions.create(model="tiny", messages=user("hi"), max_tokens=20, temperature=0,
                                        stop=[text[2:4]])
        assert cut.choices[0].message.content == text[: text.index(text[2:4])]


def test_concurrent_requests_are_batched(server):
    before = server.metric("infllava_batch_size_sum")
    batches_before = server.metric("infllava_batch_size_count")
    c = server.client()
    results = [None] * 6

    def ask(i):
        results[i] = c.chat.completions.create(model="tiny", messages=user(f"question {i}"), max_tokens=30,
                                               temperature=0).choices[0].message.content

    start = threading.Barrier(6)
    threads = [threading.Thread(target=lambda i=i: (start.wait(), ask(i))) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r is not None for r in results)
    served = server.metric("infllava_batch_size_sum") - before
    batches = server.metric("infllava_batch_size_count") - batches_before
    assert served == 6 and batches < 6  # some requests shared a batch
    alone = [c.chat.completions.create(model="tiny", messages=user(f"question {i}"), max_tokens=30,
                                       temperature=0).choices[0].message.content for i in range(6)]
    assert alone == results


# ---------------------------------------------------------------------------------- the server, bad requests


GOOD = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


@pytest.mark.parametrize("case, body, status, match", [
    ("malformed JSON", b"{not json", 400, "not valid JSON"),
    ("not an object", [1, 2], 400, "must be a JSON object"),
    ("no messages", {"model": "tiny"}, 400, "'messages' must be a non-empty list"),
    ("empty messages", {**GOOD, "messages": []}, 400, "non-empty list"),
    ("wrong type", {**GOOD, "max_tokens": "ten"}, 400, "'max_tokens' must be an integer"),
    ("unknown role", {**GOOD, "messages": [{"role": "tool", "content": "x"}]}, 400, "role must be"),
    ("empty user message", {**GOOD, "messages": [{"role": "user", "content": "  "}]}, 400, "is empty"),
    ("not alternating", {**GOOD, "messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]},
     400, "alternate"),
    ("bad base64", {**GOOD, "messages": user("x", "data:image/png;base64,@@@@")}, 400, "not valid base64"),
    ("not an image", {**GOOD, "messages": user("x", "data:image/png;base64," + base64.b64encode(b"hello").decode())},
     400, "not a recognised image"),
    ("remote URL", {**GOOD, "messages": user("x", "https://example.com/a.png")}, 400, "only data URLs"),
    ("over the pixel limit", {**GOOD, "messages": user("x", data_url(size=(100, 100)))}, 400, "max_pixels"),
    ("too many images", {**GOOD, "messages": user("x", data_url(), data_url(), data_url())}, 400, "limit is 2"),
    ("prompt over the context", {**GOOD, "messages": [{"role": "user", "content": "x" * 5000}]}, 400,
     "longer than the model's context of 4096"),
    ("max_tokens 0", {**GOOD, "max_tokens": 0}, 400, "'max_tokens' must be >= 1"),
    ("max_tokens over the limit", {**GOOD, "max_tokens": 65}, 400, "<= 64"),
    ("temperature < 0", {**GOOD, "temperature": -1}, 400, "'temperature' must be in"),
    ("top_p > 1", {**GOOD, "top_p": 1.5}, 400, "'top_p' must be in"),
    ("n > 1", {**GOOD, "n": 2}, 400, "'n' > 1 is not supported"),
    ("tools", {**GOOD, "tools": [{"type": "function", "function": {"name": "f"}}]}, 400, "'tools' is not supported"),
    ("logprobs", {**GOOD, "logprobs": True}, 400, "'logprobs' is not supported"),
    ("unknown model", {**GOOD, "model": "gpt-9"}, 404, "does not exist"),
    ("body over the limit", {**GOOD, "messages": [{"role": "user", "content": "x" * (2 * 2**20)}]}, 413,
     "limit"),
])
def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(server, case, body, status, match):
    raw = body if isinstance(body, bytes) else None
    code, payload, _ = server.post(None if raw else body, raw=raw)
    assert code == status, payload
    assert set(payload["error"]) >= {"message", "type", "code"} and match in payload["error"]["message"]
    code, payload, _ = server.post(GOOD)
    assert code == 200 and payload["choices"][0]["message"]["role"] == "assistant"


def test_api_key(server):
    for key in (None, "wrong"):
        code, payload, headers = server.post(GOOD, key=key)
        assert code == 401 and payload["error"]["type"] == "authentication_error"
    with pytest.raises(Exception, match="401"):
        server.client(key="wrong").models.list()
    assert server.post(GOOD)[0] == 200


def test_full_queue_is_429_and_a_gone_client_frees_its_slot(model_dir):
    s = Server(model_dir, "--max-queue", 1, "--max-batch-size", 1, "--batch-window-ms", 0,
               "--max-new-tokens-limit", 4000)
    try:
        long = {**GOOD, "max_tokens": 4000, "temperature": 0}
        statuses = []

        def ask():
            statuses.append(s.post(long, key=None)[0:3:2])

        threads = [threading.Thread(target=ask) for _ in range(5)]
        for t in threads:
            t.start()
            time.sleep(0.05)
        for t in threads:
            t.join()
        codes = sorted(c for c, _ in statuses)
        assert 429 in codes and 200 in codes
        assert all(h.get("retry-after") == "1" or h.get("Retry-After") == "1" for c, h in statuses if c == 429)
        # a streaming client that goes away mid-answer: its generation stops and the slot frees at once
        req = urllib.request.Request(s.url + "/v1/chat/completions", method="POST",
                                     data=json.dumps({**long, "stream": True}).encode(),
                                     headers={"Content-Type": "application/json"})
        resp = urllib.request.urlopen(req, timeout=60)
        assert resp.readline().startswith(b"data: ")
        assert s.metric("infllava_running_requests") == 1
        resp.close()
        deadline = time.time() + 10
        while s.metric("infllava_running_requests") and time.time() < deadline:
            time.sleep(0.1)
        assert s.metric("infllava_running_requests") == 0  # long before its 4000 tokens
        t0 = time.time()
        assert s.post(GOOD, key=None)[0] == 200 and time.time() - t0 < 5
    finally:
        s.stop()


def test_sigterm_stops_cleanly(model_dir):
    s = Server(model_dir, "--max-new-tokens-limit", 4000)
    threading.Thread(target=lambda: s.post({**GOOD, "max_tokens": 3000}, key=None), daemon=True).start()
    time.sleep(0.5)
    t0 = time.time()
    s.proc.send_signal(signal.SIGTERM)
    assert s.proc.wait(30) == 0 and time.time() - t0 < 30
