"""The same N image+question requests through vLLM (the infllava plugin) and through infllava's own batched
generation (the continuous-batching engine behind `infllava serve`); requests/s and generated tokens/s for
both, measured side by side in one run, and how many greedy answers agree.

    python benchmarks/vllm_throughput.py --model DIR --data .cache/hrvqa-eval --requests 32 --max-batch-size 8
    python benchmarks/vllm_throughput.py --model DIR --data DIR --requests 64 --max-batch-size 64 --device cuda

DIR is a directory written by `infllava export` (vLLM loads only such a directory); `--data` a folder written
by `infllava hrvqa`: one question per test image, so neither engine reuses an image's encoding. Runs in an
environment with vLLM (`make test-vllm` builds .venv-vllm on CPU). Each engine first answers 2 warm-up
requests; then all N requests are submitted at once and timed to the last answer. `--question` asks every
image the same open question instead of HR-VQA's one-word ones (a decode-heavy load).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import threading
import time
from pathlib import Path

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")  # GiB, on CPU
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def requests(data: Path, n: int, question: str | None) -> list[tuple[Path, str]]:
    """One (image, prompt) per test image: its first question, or `question`."""
    out = []
    with open(data / "test.jsonl", encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            prompt = rec["conversations"][0]["value"]
            out.append((data / rec["image"], f"<image>\n{question}" if question else prompt))
            if len(out) == n:
                return out
    raise SystemExit(f"{data / 'test.jsonl'} has {len(out)} images; --requests {n} asks for more")


def run_infllava(model, processor, items, max_tokens: int, max_batch_size: int, repeats: int) -> list:
    """[(seconds, answers, generated tokens)] per timed run."""
    from infllava.serving.engine import Engine, GenerationRequest

    engine = Engine(model, processor, max_batch_size=max_batch_size, max_queue=len(items) + 2, encoder_cache_size=0)
    try:
        def submit_all(batch):
            done = threading.Event()
            texts, tokens, left = [""] * len(batch), [0], [len(batch)]
            lock = threading.Lock()

            def emitter(i):
                def emit(kind, payload):
                    if kind == "delta":
                        texts[i] += payload
                        return
                    with lock:
                        if kind == "done":
                            tokens[0] += payload["completion_tokens"]
                        else:
                            texts[i] = f"<error: {payload}>"
                        left[0] -= 1
                        if left[0] == 0:
                            done.set()
                return emit

            t0 = time.perf_counter()
            for i, (image, prompt) in enumerate(batch):
                messages = [{"role": "user", "content": prompt}]
                ids = processor.tokenize_chats([messages], [1])["input_ids"][0].tolist()
                engine.submit(GenerationRequest(messages, [image], ids, max_tokens, emitter(i)))
            done.wait()
            return time.perf_counter() - t0, [t.strip() for t in texts], tokens[0]

        submit_all(items[:2])  # warm-up
        return [submit_all(items) for _ in range(repeats)]
    finally:
        engine.shutdown()


def run_vllm(model_dir: str, processor, items, max_tokens: int, max_batch_size: int, device: str, repeats: int):
    from vllm import LLM, SamplingParams

    from infllava.serving.vllm_plugin import vllm_input

    kwargs = dict(enforce_eager=True, gpu_memory_utilization=0.3, dtype="float32") if device == "cpu" else {}
    llm = LLM(model=model_dir, max_model_len=2048, max_num_seqs=max_batch_size, limit_mm_per_prompt={"image": 1},
              seed=0, **kwargs)
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    inputs = [vllm_input(processor, image, prompt) for image, prompt in items]
    llm.generate(inputs[:2], params, use_tqdm=False)  # warm-up
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        outs = llm.generate(inputs, params, use_tqdm=False)
        # generated tokens as infllava counts them: a stop token that ended the answer is not one
        tokens = sum(len(o.outputs[0].token_ids) - (o.outputs[0].finish_reason == "stop") for o in outs)
        runs.append((time.perf_counter() - t0, [o.outputs[0].text.strip() for o in outs], tokens))
    return runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a directory written by `infllava export`")
    ap.add_argument("--data", required=True, type=Path, help="a folder written by `infllava hrvqa`")
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--max-batch-size", type=int, default=8, help="both engines' batch limit")
    ap.add_argument("--question", help="ask every image this instead of its HR-VQA question")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=1, help="timed runs per engine (the median is printed)")
    args = ap.parse_args()

    from PIL import Image

    import infllava
    import torch

    items = [(Image.open(p).convert("RGB"), q) for p, q in requests(args.data, args.requests, args.question)]
    dtype = "float32" if args.device == "cpu" else "bfloat16"
    model, processor = infllava.load(args.model, device=args.device, dtype=dtype)
    rows = {}
    mine = run_infllava(model, processor, items, args.max_tokens, args.max_batch_size, args.repeats)
    del model
    theirs = run_vllm(args.model, processor, items, args.max_tokens, args.max_batch_size, args.device, args.repeats)
    for name, runs in (("infllava engine", mine), ("vLLM", theirs)):
        secs = statistics.median(r[0] for r in runs)
        tokens = runs[0][2]
        rows[name] = (len(items) / secs, tokens / secs, secs, tokens)
    agree = sum(a == b for a, b in zip(mine[0][1], theirs[0][1]))
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{os.cpu_count()} CPUs"
    print(f"model {args.model}; {where}; torch {torch.__version__}; {platform.python_version()}; "
          f"{len(items)} requests submitted at once, one per image, max_tokens {args.max_tokens}, greedy, "
          f"batch limit {args.max_batch_size}; "
          f"{'question ' + repr(args.question) if args.question else 'HR-VQA questions'}; "
          f"median of {args.repeats} timed run(s) after 2 warm-up requests")
    print("| engine | requests/s | generated tokens/s | seconds | generated tokens |")
    print("|---|---|---|---|---|")
    for name, (rps, tps, secs, tokens) in rows.items():
        print(f"| {name} | {rps:.2f} | {tps:.1f} | {secs:.1f} | {tokens} |")
    print(f"vLLM / infllava engine: {rows['vLLM'][0] / rows['infllava engine'][0]:.2f}x requests/s; "
          f"greedy answers equal on {agree} of {len(items)}")
    for (a, b), (_, q) in zip(zip(mine[0][1], theirs[0][1]), items):
        if a != b:
            print(f"  differ: {q!r}: infllava {a!r}, vLLM {b!r}")


if __name__ == "__main__":
    main()
