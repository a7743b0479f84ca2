"""lmms-eval with infllava's plugin, in its own environment: `make test-lmms` (.venv-lmms: the core install,
the mini model's parts, then `pip install --no-deps -r requirements-lmms.txt`).

The entry point (`lmms_eval.models`) gives lmms-eval's model lookup our class; the real `lmms-eval`
command (a subprocess) runs `--model infllava --tasks hrvqa` on ~20-28 HR-VQA test questions through the
YAML `write_task` writes, and its predictions and accuracies (overall, per kind, per subtype) are those
of `infllava eval` (`evaluate`) on the same questions; `loglikelihood` equals the log-probability of the
continuation computed directly with the model, and its `is_greedy` follows greedy decoding.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import lmms_eval  # noqa: E402,F401  (this directory runs in .venv-lmms only, where lmms-eval is installed)
import torch  # noqa: E402

from infllava.evaluation.evaluate import evaluate  # noqa: E402
from infllava.evaluation.hrvqa.scenes import ANSWERS, DETAIL_SUBTYPES, GLOBAL_SUBTYPES, KINDS  # noqa: E402
from infllava.evaluation.hrvqa.scoring import iter_questions, load_jsonl  # noqa: E402
from infllava.evaluation.hrvqa.writing import write_benchmark  # noqa: E402
from infllava.evaluation.lmms_eval import HRVQA_YAML, write_task  # noqa: E402
from infllava.processing import load_image  # noqa: E402

MODEL = "inf-llava-mini"
N_IMAGES = 7  # 2-4 questions each
LMMS_EVAL = str(Path(sys.executable).with_name("lmms-eval"))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hrvqa")
    write_benchmark(out, train=0, val=0, test=N_IMAGES, log=lambda *_: None)
    write_task(out)
    return out


@pytest.fixture(scope="module")
def lmm():
    """Our model as lmms-eval builds it (model_args batch_size=4 beats lmms-eval's --batch_size default 1)."""
    from lmms_eval.models import get_model

    return get_model("infllava").create_from_arg_string(f"pretrained={MODEL},device=cpu,batch_size=4",
                                                       {"batch_size": 1, "max_batch_size": None, "device": None})


def test_the_entry_point_gives_lmms_eval_our_model():
    from importlib.metadata import entry_points

    from lmms_eval.models import get_model, list_available_models

    from infllava.evaluation.lmms_eval.model import InfLlava

    assert [ep.value for ep in entry_points(group="lmms_eval.models") if ep.name == "infllava"] == [
        "infllava.evaluation.lmms_eval:manifest"]
    assert "infllava" in list_available_models()
    assert get_model("infllava") is InfLlava


def test_infllava_does_not_import_lmms_eval():
    """Only lmms-eval loads the model module: the package, the plugin's entry module and the task's functions
    import without it."""
    code = ("import sys, infllava, infllava.evaluation.lmms_eval, infllava.evaluation.lmms_eval.tasks.hrvqa.utils\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('lmms_eval', 'datasets', 'loguru'))\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_written_task_points_at_the_data(data):
    from lmms_eval.tasks import TaskManager
    from lmms_eval.utils import load_yaml_config

    from infllava.evaluation.lmms_eval.tasks.hrvqa.utils import METRICS

    assert "hrvqa" in TaskManager(include_path=str(data), include_defaults=False).all_tasks
    config = load_yaml_config(str(data / "hrvqa.yaml"))
    assert config["dataset_kwargs"]["data_files"] == {"test": str(data.resolve() / "test.jsonl")}
    assert config["lmms_eval_specific_kwargs"]["default"]["image_root"] == str(data.resolve())
    assert config["generation_kwargs"]["max_new_tokens"] == 8 and config["generation_kwargs"]["until"] == []
    # every kind and subtype of the benchmark has its metric, and nothing else does
    assert [m["metric"] for m in load_yaml_config(str(HRVQA_YAML))["metric_list"]] == list(METRICS)
    assert set(METRICS) == {"exact_match", *(f"kind_{k}" for k in KINDS),
                            *(f"subtype_{s}" for s in DETAIL_SUBTYPES + GLOBAL_SUBTYPES)}
    with pytest.raises(ValueError, match="val.jsonl"):
        write_task(data, split="val")


def test_lmms_eval_command_scores_as_infllava_eval(data, tmp_path):
    questions = list(iter_questions(data / "test.jsonl"))
    assert len(questions) >= 20
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "datasets")}
    cmd = [LMMS_EVAL, "--model", "infllava", "--model_args", f"pretrained={MODEL},device=cpu,dtype=float32",
           "--tasks", "hrvqa", "--include_path", str(data), "--batch_size", "8",
           "--output_path", str(tmp_path / "out"), "--log_samples"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    results = sorted((tmp_path / "out").rglob("*_results.json"))
    samples = sorted((tmp_path / "out").rglob("*_samples_hrvqa.jsonl"))
    assert proc.returncode == 0 and results and samples, f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    got = json.loads(results[0].read_text())["results"]["hrvqa"]
    answers = {row["doc_id"]: row["filtered_resps"] for row in load_jsonl(samples[0])}

    ref = evaluate(MODEL, data / "test.jsonl", image_root=data, out_path=tmp_path / "eval.json", batch_size=8,
                   max_new_tokens=8, device="cpu", dtype="float32", progress=False)
    preds = json.loads((tmp_path / "eval.json").read_text())["predictions"]
    # the same answers, question by question (lmms-eval's doc_id is the line of test.jsonl)
    assert {questions[i]["id"]: a for i, a in answers.items()} == preds
    assert ref["total"] == len(questions) and 0 < ref["correct"] < ref["total"]
    assert got["exact_match,none"] == pytest.approx(ref["accuracy"], abs=1e-12)
    for kind, entry in ref["by_kind"].items():
        assert got[f"kind_{kind},none"] == pytest.approx(entry["accuracy"], abs=1e-12), kind
    for subtype, entry in ref["by_subtype"].items():
        assert got[f"subtype_{subtype},none"] == pytest.approx(entry["accuracy"], abs=1e-12), subtype
    print(f"lmms-eval {got['exact_match,none']:.4f} / infllava eval {ref['accuracy']:.4f} on {len(questions)} "
          f"questions; per kind " + ", ".join(f"{k} {got[f'kind_{k},none']:.4f}" for k in ref["by_kind"]))


def _direct(model, processor, image, context: str, continuation: str) -> tuple[float, bool]:
    """log P(continuation | chat prompt of context) from one unpadded forward pass over input_ids and
    pixel_values (the processor's content parts, the model's own image path)."""
    content = ([{"type": "image", "image": image}] if image is not None else []) + [{"type": "text", "text": context}]
    enc = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                        tokenize=True, return_dict=True)
    cont = torch.tensor(processor.tokenizer(continuation, add_special_tokens=False)["input_ids"])
    n = enc["input_ids"].shape[1]
    ids = torch.cat([enc["input_ids"][0], cont])[None]
    with torch.inference_mode():
        logits = model(input_ids=ids, pixel_values=enc.get("pixel_values")).logits[0].float()
    steps = logits[n - 1: n - 1 + len(cont)].log_softmax(-1)
    return steps.gather(-1, cont[:, None]).sum().item(), bool((steps.argmax(-1) == cont).all())


def test_loglikelihood_is_the_models_log_probability(lmm, data):
    from lmms_eval.api.instance import Instance

    docs = load_jsonl(data / "test.jsonl")
    lmm.task_dict = {"hrvqa": {"test": docs}}
    qs = list(iter_questions(docs))

    def doc_to_visual(doc):
        return [load_image(data / doc["image"])]

    def request(kind, args, i):
        return Instance(request_type=kind, arguments=args, idx=0,
                        metadata={"task": "hrvqa", "doc_id": i, "repeats": 1})

    ctx = [q["prompt"].replace("<image>", "").strip() for q in qs]
    greedy = lmm.generate_until([request("generate_until", (ctx[0], {"max_new_tokens": 4, "until": []},
                                                                doc_to_visual, 0, "hrvqa", "test"), 0)])[0]
    assert greedy
    wrong = next(a for a in ANSWERS[qs[0]["subtype"]] if a != greedy and not greedy.startswith(a))
    pairs = [  # (doc, context, continuation, visual, expected is_greedy or None)
        (0, ctx[0], greedy, doc_to_visual, True),
        (0, ctx[0], wrong, doc_to_visual, False),
        (1, ctx[1], lambda doc: next(iter_questions([doc]))["answer"], doc_to_visual, None),  # the task's target
        (2, "What is two plus two? Answer with one word.", " four", None, None),  # no image
    ]
    got = lmm.loglikelihood([request("loglikelihood", (c, cont, vis, i, "hrvqa", "test"), i)
                             for i, c, cont, vis, _ in pairs])
    model, processor = lmm.model, lmm.processor
    for (i, c, cont, vis, expected), (logprob, is_greedy) in zip(pairs, got):
        text = cont if isinstance(cont, str) else cont(docs[i])
        want, want_greedy = _direct(model, processor, vis(docs[i])[0] if vis else None, c, text)
        assert logprob == pytest.approx(want, abs=1e-4), (c, text)
        assert logprob < 0 and is_greedy == want_greedy, (c, text)
        if expected is not None:
            assert is_greedy is expected, (c, text, greedy)


def test_what_the_model_refuses(lmm):
    from infllava.evaluation.lmms_eval.model import InfLlava

    with pytest.raises(NotImplementedError, match="generate_until_multi_round"):
        lmm.generate_until_multi_round([])
    with pytest.raises(TypeError, match="unknown model_args.*temprature"):
        InfLlava.create_from_arg_string(f"pretrained={MODEL},temprature=0")
    with pytest.raises(ValueError, match="batch_size"):
        InfLlava.create_from_arg_string(f"pretrained={MODEL},batch_size=0")
