"""Load on `infllava serve`: the same N requests (HR-VQA images and questions) sent by C concurrent clients, streamed
through the `openai` client; prints requests/s, generated tokens/s, p50 / p95 latency and time to first token
for each client count, and counts failed requests.

    python benchmarks/serve_load.py --serve inf-llava-mini --data .cache/hrvqa-eval --clients 1 8 --requests 4
    python benchmarks/serve_load.py --url http://127.0.0.1:8000 --data DIR ...     # a server already running

`--data` is a folder written by `infllava hrvqa` (its test.jsonl and images). Every client count sends the
same questions, in the same order, after one warm-up request.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def questions(data: Path, n: int, split: str) -> list[tuple[str, str]]:
    out = []
    with open(data / f"{split}.jsonl", encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            text = rec["conversations"][0]["value"].replace("<image>", "").strip()
            out.append((str(data / rec["image"]), text))
            if len(out) == n:
                break
    return out


def data_url(path: str) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()


def one(client, model, image, text, max_tokens):
    t0 = time.perf_counter()
    first, tokens = None, 0
    stream = client.chat.completions.create(
        model=model, max_tokens=max_tokens, temperature=0, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(image)}},
                                               {"type": "text", "text": text}]}])
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content and first is None:
            first = time.perf_counter() - t0
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    return time.perf_counter() - t0, first if first is not None else time.perf_counter() - t0, tokens


def run(url, model, qs, clients, max_tokens):
    from openai import OpenAI

    client = OpenAI(base_url=url + "/v1", api_key=os.environ.get("INFLLAVA_API_KEY", "none"), max_retries=0,
                    timeout=600)
    work = list(qs)  # the same requests for every client count, shared out round-robin
    results, failures, lock = [], [], threading.Lock()

    def worker(k):
        for image, text in work[k::clients]:
            try:
                r = one(client, model, image, text, max_tokens)
                with lock:
                    results.append(r)
            except Exception as e:  # noqa: BLE001 - counted and reported
                with lock:
                    failures.append(repr(e))

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat = sorted(r[0] for r in results)
    ttft = sorted(r[1] for r in results)
    q = lambda xs, p: xs[min(len(xs) - 1, int(round(p * (len(xs) - 1))))] if xs else float("nan")  # noqa: E731
    return {"clients": clients, "requests": len(results), "failed": len(failures), "wall_s": wall,
            "req_per_s": len(results) / wall, "tok_per_s": sum(r[2] for r in results) / wall,
            "p50_s": statistics.median(lat) if lat else float("nan"), "p95_s": q(lat, 0.95),
            "ttft_p50_s": statistics.median(ttft) if ttft else float("nan"), "ttft_p95_s": q(ttft, 0.95),
            "errors": failures[:3]}


def start_server(model, max_batch_size):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "infllava_cli", "serve", model, "--port", str(port),
                             "--max-batch-size", str(max_batch_size), "--served-model-name", "bench"],
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if urllib.request.urlopen(url + "/health", timeout=2).status == 200:
                return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("the server did not start")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", default=None, help="a running server (else --serve starts one)")
    ap.add_argument("--serve", default=None, help="start `infllava serve MODEL` for the run")
    ap.add_argument("--model", default="bench", help="the model id the server serves (with --url)")
    ap.add_argument("--data", required=True, help="an `infllava hrvqa` folder")
    ap.add_argument("--split", default="test")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--requests", type=int, default=4,
                    help="requests per client at the largest client count (the total is sent at every count)")
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--max-batch-size", type=int, default=8, help="with --serve")
    ap.add_argument("--question", default=None, help="ask this instead of the benchmark's questions (e.g. a "
                                                     "question with a long answer, to load the decoding)")
    args = ap.parse_args()
    if args.url is None and not args.serve:
        raise SystemExit("give --url of a running server or --serve MODEL")
    qs = questions(Path(args.data), max(args.clients) * args.requests, args.split)
    if args.question:
        qs = [(image, args.question) for image, _ in qs]
    warm = questions(Path(args.data), 1, "heldout" if (Path(args.data) / "heldout.jsonl").is_file() else args.split)

    def measure(clients):
        """One client count; with --serve on a fresh server (its encoder cache empty), warmed on another image."""
        proc = None
        url, model = (args.url, args.model) if args.url else (None, "bench")
        if args.serve:
            proc, url = start_server(args.serve, args.max_batch_size)
        try:
            run(url, model, warm, 1, args.max_tokens)  # warm-up
            return run(url, model, qs, clients, args.max_tokens)
        finally:
            if proc is not None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(60)

    import torch

    print(f"server {args.serve or args.url}; {os.cpu_count()} CPUs; torch {torch.__version__}; "
          f"the same {len(qs)} requests at each client count, max_tokens {args.max_tokens}, greedy, streamed"
          + (f", question {args.question!r}" if args.question else ", HR-VQA questions")
          + ("; a fresh server (empty encoder cache) per client count" if args.serve else ""))
    print("| clients | requests | failed | requests/s | generated tokens/s | p50 latency | p95 latency | "
          "p50 TTFT | p95 TTFT |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows = [measure(c) for c in args.clients]
    for r in rows:
        print(f"| {r['clients']} | {r['requests']} | {r['failed']} | {r['req_per_s']:.2f} | {r['tok_per_s']:.2f} | "
              f"{r['p50_s']:.2f} s | {r['p95_s']:.2f} s | {r['ttft_p50_s']:.2f} s | {r['ttft_p95_s']:.2f} s |")
        for e in r["errors"]:
            print(f"   error: {e}")
    if len(rows) > 1:
        print(f"throughput {rows[-1]['clients']} clients / 1 client: {rows[-1]['req_per_s'] / rows[0]['req_per_s']:.2f}x")


if __name__ == "__main__":
    main()
