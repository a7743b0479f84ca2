"""`infllava eval` on the generated benchmark with the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

from infllava_cli import main as cli_main
from infllava.evaluation.hrvqa.writing import write_split
from infllava.tiny import build_tiny_model


def test_eval_writes_per_kind_scores(tmp_path, capsys):
    model = build_tiny_model(tmp_path / "model")
    data = write_split(tmp_path / "bench", "test", 3)
    out = tmp_path / "scores.json"
    assert cli_main(["eval", str(model), "--data", str(data), "--images", str(tmp_path / "bench"),
                     "--out", str(out), "--batch-size", "3", "--max-new-tokens", "2"]) == 0
    text = capsys.readouterr().out
    assert "detail" in text and "global" in text
    result = json.loads(out.read_text())
    records = [json.loads(line) for line in data.read_text().splitlines()]
    assert set(result["predictions"]) == {r["id"] for r in records}
    scores = result["scores"]
    assert scores["total"] == len(records)
    assert sum(v["total"] for v in scores["by_kind"].values()) == len(records)


def test_eval_bad_data_is_a_message(tmp_path, capsys):
    model = build_tiny_model(tmp_path / "model")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1, "conversations": []}\n{oops\n')
    assert cli_main(["eval", str(model), "--data", str(bad)]) == 1
    assert "malformed" in capsys.readouterr().err


def test_predict_with_shared_image_features_equals_plain_generate(tmp_path):
    import torch
    from PIL import Image

    from infllava.evaluation.evaluate import predict
    from infllava.inference import load

    model, processor = load(build_tiny_model(tmp_path / "model"), device="cpu")
    Image.new("RGB", (30, 20), (200, 30, 30)).save(tmp_path / "a.png")
    Image.new("RGB", (20, 30), (30, 30, 200)).save(tmp_path / "b.png")
    q = lambda i, img, text: {"id": i, **({"image": img} if img else {}),  # noqa: E731
                              "conversations": [{"from": "human", "value": text}, {"from": "gpt", "value": "x"}]}
    records = [q("1", "a.png", "<image>\nWhat colour?"), q("2", "a.png", "Which shape is it, really?"),
               q("3", None, "Say hi."), q("4", "b.png", "<image>\nAnd this?")]
    preds, skipped = predict(model, processor, records, tmp_path, batch_size=3, max_new_tokens=4, progress=False)
    assert skipped == {}
    for r in records:
        img = [str(tmp_path / r["image"])] if "image" in r else None
        text = r["conversations"][0]["value"]
        enc = processor.apply_chat([{"role": "user", "content": text}], images=img)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=4, do_sample=False)
        ref = processor.tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()
        assert preds[r["id"]] == ref, r["id"]


def test_eval_with_a_feature_cache_gives_the_same_predictions(tmp_path):
    from infllava.evaluation.evaluate import evaluate

    model = build_tiny_model(tmp_path / "model")
    data = write_split(tmp_path / "bench", "test", 2)
    kw = dict(image_root=tmp_path / "bench", batch_size=3, max_new_tokens=2)
    plain = evaluate(model, data, out_path=tmp_path / "a.json", **kw)
    cached = evaluate(model, data, out_path=tmp_path / "b.json", feature_cache=tmp_path / "cache", **kw)
    again = evaluate(model, data, out_path=tmp_path / "c.json", feature_cache=tmp_path / "cache", **kw)
    files = list((tmp_path / "cache").rglob("*.safetensors"))
    assert files  # the tower's outputs were stored, and read back by the second run
    preds = [json.loads((tmp_path / f"{n}.json").read_text())["predictions"] for n in "abc"]
    assert preds[0] == preds[1] == preds[2]
    assert plain["accuracy"] == cached["accuracy"] == again["accuracy"]


def test_mini_table_prints_rows_and_differences(tmp_path):
    """experiments/mini_table.py turns `infllava eval --out` files into the README's rows; a file that is
    not a score file is an error naming it."""
    import subprocess
    import sys

    def scores(acc):
        sub = {s: {"accuracy": acc} for s in ("color", "shape", "digit", "count", "relation", "higher", "largest")}
        return {"scores": {"accuracy": acc, "total": 10, "by_kind": {"detail": {"accuracy": acc},
                                                                     "global": {"accuracy": acc / 2}},
                           "by_subtype": sub}}
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    (tmp_path / "a" / "s.json").write_text(json.dumps(scores(0.5)))
    (tmp_path / "b" / "s.json").write_text(json.dumps(scores(0.25)))
    script = Path(__file__).parents[1] / "experiments" / "mini_table.py"
    out = subprocess.run([sys.executable, str(script), "--diff", f"full={tmp_path / 'a' / 's.json'}",
                          str(tmp_path / "b" / "s.json")], capture_output=True, text=True, check=True).stdout
    lines = out.splitlines()
    assert lines[2] == "| full | 50.0 | 50.0 | 25.0 | " + " | ".join(["50.0"] * 7) + " |"
    assert lines[3].startswith("| b | 25.0 | 25.0 | 12.5 |")
    assert lines[4] == "| full - b | +25.0 | +25.0 | +12.5 | " + " | ".join(["+25.0"] * 7) + " |"
    (tmp_path / "bad.json").write_text(json.dumps({"scores": {"accuracy": 0.1}}))
    bad = subprocess.run([sys.executable, str(script), str(tmp_path / "bad.json")], capture_output=True, text=True)
    assert bad.returncode != 0 and "bad.json" in bad.stderr and "by_kind" in bad.stderr
    # simple-scene score files (mixture-val, generalise) get their own columns, never beside HR-VQA rows
    simple = {"scores": {"accuracy": 0.6, "total": 5, "by_kind": {"simple": {"accuracy": 0.6}}, "by_subtype": {
        s: {"accuracy": a} for s, a in (("color", 1.0), ("shape", 0.8), ("presence", 0.5), ("count", 0.4),
                                        ("position", 0.2))}}}
    (tmp_path / "gen").mkdir()
    (tmp_path / "gen" / "s.json").write_text(json.dumps(simple))
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "gen" / "s.json")], capture_output=True,
                         text=True, check=True).stdout.splitlines()
    assert out[0] == "| simple scenes, 5 questions | overall | color | shape | presence | count | position |"
    assert out[2] == "| gen | 60.0 | 100.0 | 80.0 | 50.0 | 40.0 | 20.0 |"
    mixed = subprocess.run([sys.executable, str(script), str(tmp_path / "gen" / "s.json"), str(tmp_path / "b" / "s.json")],
                           capture_output=True, text=True)
    assert mixed.returncode != 0 and "cannot share a table" in mixed.stderr
