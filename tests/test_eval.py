"""`infllava eval` on the generated benchmark with the tiny model."""

from __future__ import annotations

import json

from infllava.cli import main as cli_main
from infllava.evaluation.hrvqa import write_split
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
    assert cli_main(["eval", str(model), "--data", str(bad)]) == 2
    assert "malformed" in capsys.readouterr().err
