"""Training data: labels per template, record files, the lazy dataset, collation, grouping, data check."""

from __future__ import annotations

import json
from functools import partial

import numpy as np
import pytest
import torch
from PIL import Image

from infllava.data.records import SampleError, load_records, to_messages
from infllava.processing import (
    IMAGE_PLACEHOLDER,
    InfLlavaImageProcessor,
    build_prompt,
    tokenize_with_images,
)
from infllava.tiny import make_tiny_tokenizer
from infllava.training.data import (
    SupervisedDataset,
    check_dataset,
    collate,
    grouped_order,
)
from infllava.processing import tokenize_with_offsets
from infllava.training.labels import (
    IGNORE_INDEX,
    encode_conversation,
    encode_record,
)

IMG = 300  # image token id: outside the tiny vocabulary, as in tiny_config
N_IMG = 4  # image tokens per image (small, to keep sequences short)
EOT = "<|eot_id|>"

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def tok():
    return make_tiny_tokenizer()


@pytest.fixture(scope="module")
def chatml_tok():
    t = make_tiny_tokenizer()
    t.add_tokens(["<|im_start|>", "<|im_end|>"], special_tokens=True)
    t.chat_template = CHATML
    return t


@pytest.fixture(scope="module")
def image_processor():
    return InfLlavaImageProcessor(size=8, grid=(3, 3))


def conv(*turns, image=None, id="s"):
    record = {"id": id, "conversations": [{"from": "human" if i % 2 == 0 else "gpt", "value": v} for i, v in enumerate(turns)]}
    if image is not None:
        record["image"] = image
    return record


def supervised_runs(ids, labels):
    """Contiguous runs of supervised positions, as lists of label ids (checked equal to input ids)."""
    runs, cur = [], []
    for i, l in zip(ids, labels):
        if l == IGNORE_INDEX:
            if cur:
                runs.append(cur)
                cur = []
        else:
            assert l == i
            cur.append(l)
    if cur:
        runs.append(cur)
    return runs


def decoded_runs(tokenizer, ids, labels):
    return [tokenizer.decode(r, clean_up_tokenization_spaces=False) for r in supervised_runs(ids, labels)]


def encode(record, tokenizer, template="llama3", max_length=4096):
    return encode_record(record, tokenizer, template, IMG, N_IMG, max_length)


def write_image(path, size=(40, 24), color=(200, 30, 30)):
    Image.new("RGB", size, color).save(path)
    return path


def write_truncated_jpeg(path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(path, quality=90)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


# --------------------------------------------------------------------------------------------
# tokenize_with_offsets
# --------------------------------------------------------------------------------------------

TEXTS = [
    "",
    "plain text, no image",
    "<image>",
    "<image>\nWhat is this?",
    "Look: <image> and <image><image> done",
    "ends with an image <image>",
    "héllo wörld ✓ <image> ünïcode",
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n<image>\nHi<|eot_id|>",
    "<s>starts with the bos text <image>",
]


@pytest.mark.parametrize("variant", ["bos", "no_bos", "chatml"])
@pytest.mark.parametrize("text", TEXTS)
def test_tokenize_with_offsets_matches_processing(text, variant, tok, chatml_tok):
    tokenizer = {"bos": tok, "no_bos": make_tiny_tokenizer(add_bos=False), "chatml": chatml_tok}[variant]
    ids, starts, _ = tokenize_with_offsets(text, tokenizer, IMG, N_IMG)
    assert ids == tokenize_with_images(text, tokenizer, IMG, N_IMG)
    assert len(starts) == len(ids)
    placeholder_positions = [i for i in range(len(text)) if text.startswith(IMAGE_PLACEHOLDER, i)]
    image_starts = [s for t, s in zip(ids, starts) if t == IMG]
    assert image_starts == [p for p in placeholder_positions for _ in range(N_IMG)]
    real = [s for t, s in zip(ids, starts) if t != IMG and s >= 0]
    assert real == sorted(real) and all(0 <= s < len(text) for s in real)
    for t, s in zip(ids, starts):
        if t != IMG and s >= 0 and text[s].isascii() and not text.startswith("<", s):
            assert tokenizer.decode([t]) == text[s]  # byte-level: one ASCII char per token
    if variant != "no_bos" and not text.startswith("<s>"):
        assert ids[0] == tokenizer.bos_token_id and starts[0] == -1


# --------------------------------------------------------------------------------------------
# llama3
# --------------------------------------------------------------------------------------------


def test_llama3_supervised_text_and_inference_prefix(tok):
    record = conv("<image>\nWhat colour is the square?", "It is red.", image="a.jpg")
    sample = encode(record, tok)
    assert decoded_runs(tok, sample.input_ids, sample.labels) == ["It is red." + EOT]
    messages = to_messages(record)
    full = tokenize_with_images(build_prompt(messages, "llama3", add_generation_prompt=False), tok, IMG, N_IMG)
    assert sample.input_ids == full
    prompt = tokenize_with_images(build_prompt(messages[:-1], "llama3", add_generation_prompt=True), tok, IMG, N_IMG)
    assert sample.input_ids[: len(prompt)] == prompt
    assert all(l == IGNORE_INDEX for l in sample.labels[: len(prompt)])
    assert sample.input_ids.count(IMG) == N_IMG
    assert all(l == IGNORE_INDEX for t, l in zip(sample.input_ids, sample.labels) if t == IMG)
    assert sample.image_paths == ["a.jpg"] and sample.id == "s"


def test_llama3_multi_turn(tok):
    answers = ["A cat.", "It sits on a mat.", "Yes, it is grey."]
    record = conv("<image>\nWhat is it?", answers[0], "Where?", answers[1], "Grey?", answers[2], image="a.jpg")
    sample = encode(record, tok)
    assert decoded_runs(tok, sample.input_ids, sample.labels) == [a + EOT for a in answers]
    messages = to_messages(record)
    for k in (1, 3, 5):  # each answer follows exactly what inference would feed at that point
        prompt = tokenize_with_images(build_prompt(messages[:k], "llama3", add_generation_prompt=True), tok, IMG, N_IMG)
        assert sample.input_ids[: len(prompt)] == prompt
        assert sample.labels[len(prompt)] != IGNORE_INDEX and sample.labels[len(prompt) - 1] == IGNORE_INDEX


def test_text_only_sample(tok):
    record = conv("What is 2+2?", "4")
    sample = encode(record, tok)
    assert IMG not in sample.input_ids and sample.image_paths == []
    assert decoded_runs(tok, sample.input_ids, sample.labels) == ["4" + EOT]


def test_image_record_without_placeholder_gets_one(tok):
    record = conv("Describe the picture.", "A red square.", image="a.jpg")
    messages = to_messages(record)
    assert messages[0]["content"] == "<image>\nDescribe the picture."
    assert record["conversations"][0]["value"] == "Describe the picture."  # record untouched
    sample = encode(record, tok)
    assert sample.input_ids.count(IMG) == N_IMG
    assert decoded_runs(tok, sample.input_ids, sample.labels) == ["A red square." + EOT]


def test_roles_user_assistant_and_image_list(tok):
    record = {
        "conversations": [
            {"from": "user", "value": "<image> vs <image>"},
            {"from": "assistant", "value": "Same."},
        ],
        "image": ["a.jpg", "b.jpg"],
    }
    sample = encode(record, tok)
    assert sample.input_ids.count(IMG) == 2 * N_IMG and sample.image_paths == ["a.jpg", "b.jpg"]


# --------------------------------------------------------------------------------------------
# plain
# --------------------------------------------------------------------------------------------


def test_plain_supervised_text(tok):
    record = conv("<image>\nDescribe this image briefly.", "A red square on white.", image="a.jpg")
    sample = encode(record, tok, "plain")
    assert decoded_runs(tok, sample.input_ids, sample.labels) == ["A red square on white.\n"]
    # the user text is dropped: BOS, the image run, the caption
    prompt = tokenize_with_images(build_prompt(to_messages(record)[:1], "plain"), tok, IMG, N_IMG)
    assert prompt == [tok.bos_token_id] + [IMG] * N_IMG
    assert sample.input_ids[: len(prompt)] == prompt
    assert sample.labels[: len(prompt)] == [IGNORE_INDEX] * len(prompt)
    assert all(l != IGNORE_INDEX for l in sample.labels[len(prompt):])


def test_plain_rejects_multi_turn_and_text_only(tok):
    with pytest.raises(SampleError) as err:
        encode(conv("<image>\nA?", "a", "B?", "b", image="a.jpg"), tok, "plain")
    assert err.value.kind == "bad_record"
    with pytest.raises(SampleError) as err:
        encode(conv("Describe.", "text only"), tok, "plain")
    assert err.value.kind == "bad_record"


# --------------------------------------------------------------------------------------------
# chat_template
# --------------------------------------------------------------------------------------------


def test_chat_template_supervised_text_and_inference_prefix(chatml_tok):
    answers = ["A dog.", "Brown, mostly."]
    record = conv("<image>\nWhat animal?", answers[0], "Colour?", answers[1], image="a.jpg")
    sample = encode(record, chatml_tok, "chat_template")
    assert decoded_runs(chatml_tok, sample.input_ids, sample.labels) == [a + "<|im_end|>" for a in answers]
    messages = to_messages(record)
    full = build_prompt(messages, "chat_template", chatml_tok, add_generation_prompt=False)
    # rendered text carries its special tokens: tokenized as transformers tokenizes chat templates
    assert sample.input_ids == tokenize_with_images(full, chatml_tok, IMG, N_IMG, add_special_tokens=False)
    for k in (1, 3):
        prompt_text = build_prompt(messages[:k], "chat_template", chatml_tok, add_generation_prompt=True)
        prompt = tokenize_with_images(prompt_text, chatml_tok, IMG, N_IMG, add_special_tokens=False)
        assert sample.input_ids[: len(prompt)] == prompt
    # the "\n" the template writes after <|im_end|> is not supervised
    assert sample.labels[-1] == IGNORE_INDEX and chatml_tok.decode([sample.input_ids[-1]]) == "\n"


def test_chat_template_not_prefix_stable(chatml_tok):
    t = make_tiny_tokenizer()
    t.chat_template = "{{ messages | length }}:" + CHATML  # the header changes with every message
    with pytest.raises(SampleError, match="prefix-stable") as err:
        encode(conv("Hi", "Hello"), t, "chat_template")
    assert err.value.kind == "bad_record"


def test_template_that_drops_answers_is_empty():
    t = make_tiny_tokenizer()
    t.chat_template = "{% for m in messages %}{% if m['role'] == 'user' %}U: {{ m['content'] }}\n{% endif %}{% endfor %}"
    with pytest.raises(SampleError) as err:
        encode(conv("Hi", "Hello"), t, "chat_template")
    assert err.value.kind == "empty"


# --------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------


def test_truncated_answer_raises_and_exact_fit_passes(tok, chatml_tok):
    record = conv("<image>\nDescribe.", "word " * 30, image="a.jpg")
    full = encode(record, tok, max_length=None)
    n = len(full.input_ids)
    with pytest.raises(SampleError) as err:
        encode(record, tok, max_length=n - 1)
    assert err.value.kind == "truncated"
    assert encode(record, tok, max_length=n).input_ids == full.input_ids
    # unsupervised tail (the template's trailing "\n") is cut, the answer stays whole
    cm = encode(record, chatml_tok, "chat_template", max_length=None)
    last = max(i for i, l in enumerate(cm.labels) if l != IGNORE_INDEX)
    capped = encode(record, chatml_tok, "chat_template", max_length=last + 1)
    assert capped.input_ids == cm.input_ids[: last + 1] and capped.labels == cm.labels[: last + 1]
    # image tokens that would not fit: truncated as well
    with pytest.raises(SampleError) as err:
        encode(conv("x " * 50 + "<image>", "y", image="a.jpg"), tok, max_length=60)
    assert err.value.kind == "truncated"


@pytest.mark.parametrize("answer", ["", "   \n "])
def test_empty_answer(tok, answer):
    with pytest.raises(SampleError) as err:
        encode(conv("Hi", answer), tok)
    assert err.value.kind == "empty_answer"


@pytest.mark.parametrize(
    "roles",
    [["gpt", "human"], ["human", "human", "gpt"], ["human", "gpt", "human"], ["human", "gpt", "gpt"]],
)
def test_not_alternating(tok, roles):
    record = {"conversations": [{"from": r, "value": "x"} for r in roles]}
    with pytest.raises(SampleError) as err:
        encode(record, tok)
    assert err.value.kind == "not_alternating"


def test_placeholder_mismatch(tok):
    for record in (
        conv("<image><image> two", "ok", image="a.jpg"),
        conv("<image> but no image", "ok"),
        conv("<image>", "ok", image=["a.jpg", "b.jpg"]),
    ):
        with pytest.raises(SampleError) as err:
            encode(record, tok)
        assert err.value.kind == "placeholder_mismatch"


def test_bad_records(tok):
    for record in ({"id": 1}, {"conversations": []}, {"conversations": [{"from": "robot", "value": "x"}]},
                   {"conversations": [{"from": "human", "value": 3}, {"from": "gpt", "value": "x"}]},
                   conv("<image>", "x", image=7)):
        with pytest.raises(SampleError) as err:
            encode(record, tok)
        assert err.value.kind == "bad_record"


def test_encode_conversation_direct(tok):
    messages = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]
    ids, labels = encode_conversation(messages, tok, "llama3", IMG, N_IMG, 512)
    assert decoded_runs(tok, ids, labels) == ["A" + EOT]
    with pytest.raises(SampleError) as err:
        encode_conversation(messages[:1], tok, "llama3", IMG, N_IMG, 512)
    assert err.value.kind == "not_alternating"


# --------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------


def test_load_records_json_and_jsonl(tmp_path):
    recs = [conv("a", "b", id="x"), {"conversations": [{"from": "human", "value": "c"}, {"from": "gpt", "value": "d"}]}]
    js = tmp_path / "data.json"
    js.write_text(json.dumps(recs, indent=1))
    records, problems = load_records(js)
    assert [r["id"] for r in records] == ["x", 1] and problems == []

    lines = [json.dumps(recs[0] | {"note": "a\u2028b"}, ensure_ascii=False), "{not json", "", json.dumps(recs[1]), json.dumps([1]), json.dumps({"id": "n", "x": 1})]
    jl = tmp_path / "data.json"  # JSONL content under a .json name: detected from the content
    jl.write_text("\n".join(lines) + "\n")
    records, problems = load_records(jl)
    assert [r["id"] for r in records] == ["x", 2]  # index among entries (blank lines not counted)
    wheres = [w for w, _ in problems]
    assert wheres == ["line 2", "line 5", "n"]
    assert problems[0][1].startswith("line 2:")
    assert "'n'" in problems[2][1] and "conversations" in problems[2][1]


def test_load_records_first_line_malformed(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"id": 1, "conversations": [\n' + json.dumps(conv("a", "b", id=2)) + "\n")
    records, problems = load_records(path)
    assert [r["id"] for r in records] == [2] and [w for w, _ in problems] == ["line 1"]


def test_load_records_broken_json_list(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[\n  {"id": 1, "conversations": []},\n  {"id": 2 "conversations": []}\n]')
    with pytest.raises(ValueError, match=r"broken\.json.*line 3"):
        load_records(path)


# --------------------------------------------------------------------------------------------
# dataset, collate
# --------------------------------------------------------------------------------------------


class CountingProcessor(InfLlavaImageProcessor):
    calls = 0

    def pixels(self, images):
        type(self).calls += 1
        return super().pixels(images)


@pytest.fixture
def dataset(tmp_path, tok):
    write_image(tmp_path / "ok.png")
    write_image(tmp_path / "b.png", size=(10, 30))
    write_truncated_jpeg(tmp_path / "broken.jpg")
    records = [
        conv("<image>\nWhat?", "A red box.", image="ok.png", id="img"),
        conv("Hello there", "Hi!", id="text"),
        conv("<image>", "x", image="missing.png", id="missing"),
        conv("<image>", "x", image="broken.jpg", id="broken"),
        conv("Q", " ", id="empty"),
        conv("<image> <image>", "two", image=["ok.png", str(tmp_path / "b.png")], id="two"),
    ]
    CountingProcessor.calls = 0
    return SupervisedDataset(records, tmp_path, tok, CountingProcessor(size=8), "llama3", IMG, N_IMG, 512)


def test_dataset_items_and_skips(dataset):
    item = dataset[0]
    assert item["pixel_values"].shape == (1, 3, 24, 24) and item["pixel_values"].dtype == torch.float32
    assert item["input_ids"].dtype == torch.long and item["input_ids"].shape == item["labels"].shape
    assert CountingProcessor.calls == 1
    text = dataset[1]
    assert text["pixel_values"] is None and CountingProcessor.calls == 1  # no vision work
    assert dataset[2]["skip"].startswith("missing_image:") and dataset[2]["id"] == "missing"
    assert dataset[3]["skip"].startswith("unreadable_image:") and "broken.jpg" in dataset[3]["skip"]
    assert dataset[4]["skip"].startswith("empty_answer:")
    assert dataset[5]["pixel_values"].shape == (2, 3, 24, 24)  # relative and absolute paths


def test_dataset_lengths(dataset):
    lengths = dataset.lengths()
    assert lengths[0] == 2 + 3 + N_IMG  # "<image>\nWhat?" -> 2 words, "A red box." -> 3
    assert lengths[1] == -3
    assert lengths[5] == 3 + 2 * N_IMG  # "<image> <image>", "two"
    assert [l > 0 for l in lengths] == [True, False, True, True, False, True]


def test_collate(dataset, tok):
    batch = collate([dataset[i] for i in range(6)], pad_token_id=tok.pad_token_id)
    assert batch["ids"] == ["img", "text", "two"]
    assert [i for i, _ in batch["skipped"]] == ["missing", "broken", "empty"]
    lens = [len(dataset[i]["input_ids"]) for i in (0, 1, 5)]
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (3, max(lens))
    assert batch["attention_mask"].sum(1).tolist() == lens
    for row, n in enumerate(lens):
        assert (batch["input_ids"][row, n:] == tok.pad_token_id).all()
        assert (batch["labels"][row, n:] == IGNORE_INDEX).all()
        assert torch.equal(batch["input_ids"][row, :n], dataset[[0, 1, 5][row]]["input_ids"])
    assert batch["pixel_values"].shape == (3, 3, 24, 24)
    assert torch.equal(batch["pixel_values"][0], dataset[0]["pixel_values"][0])

    text_only = collate([dataset[1]], pad_token_id=0)
    assert text_only["pixel_values"] is None
    nothing = collate([dataset[2], dataset[4]], pad_token_id=0)
    assert nothing["input_ids"].shape == (0, 0) and len(nothing["skipped"]) == 2 and nothing["ids"] == []

    loader = torch.utils.data.DataLoader(dataset, batch_size=3, collate_fn=partial(collate, pad_token_id=0))
    assert sum(len(b["ids"]) for b in loader) == 3


# --------------------------------------------------------------------------------------------
# grouped order
# --------------------------------------------------------------------------------------------


def _chunks(order, bs):
    return [order[i : i + bs] for i in range(0, len(order), bs)]


@pytest.mark.parametrize("n_mm,n_text", [(400, 120), (37, 23), (0, 9), (5, 0)])
def test_grouped_order(n_mm, n_text):
    rng = np.random.default_rng(1)
    lengths = [int(x) for x in rng.integers(1, 500, n_mm)] + [-int(x) for x in rng.integers(1, 500, n_text)]
    lengths = [lengths[i] for i in rng.permutation(len(lengths))]
    bs = 4
    order = grouped_order(lengths, bs, seed=3, epoch=0)
    assert sorted(order) == list(range(len(lengths)))
    assert order == grouped_order(lengths, bs, seed=3, epoch=0)
    if len(lengths) > 100:  # (a single mega-batch is sorted: its order hardly depends on the seed)
        assert order != grouped_order(lengths, bs, seed=3, epoch=1)
        assert order != grouped_order(lengths, bs, seed=4, epoch=0)
    chunks = _chunks(order, bs)
    both_remainders = n_mm % bs and n_text % bs
    checked = chunks[:-2] if both_remainders else chunks
    for chunk in checked:
        assert len({lengths[i] > 0 for i in chunk}) == 1
    longest = max(range(len(lengths)), key=lambda i: abs(lengths[i]))
    if n_mm >= bs or n_text >= bs:
        assert abs(lengths[longest]) == max(abs(lengths[i]) for i in chunks[0])
    if n_mm == 400:  # similar lengths within a batch: far less spread than random batches
        spread = np.mean([np.ptp([abs(lengths[i]) for i in c]) for c in chunks])
        assert spread < 60


# --------------------------------------------------------------------------------------------
# data check
# --------------------------------------------------------------------------------------------


def test_check_dataset(tmp_path, tok, image_processor):
    images = tmp_path / "images"
    images.mkdir()
    write_image(images / "ok.png")
    write_truncated_jpeg(images / "cut.jpg")
    records = [
        conv("<image>\nWhat?", "Red.", image="ok.png", id="good_img"),
        conv("Hi", "Hello", id="good_text"),
        "MALFORMED",
        {"id": "no_conv", "turns": []},
        conv("<image>", "x", image="gone.png", id="missing"),
        conv("<image>", "x", image="cut.jpg", id="cut"),
        conv("<image><image>", "x", image="ok.png", id="mismatch"),
        {"id": "order", "conversations": [{"from": "gpt", "value": "x"}, {"from": "human", "value": "y"}]},
        conv("Q", "", id="blank"),
        conv("Q", "long answer " * 40, id="long"),
    ]
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join("{oops" if r == "MALFORMED" else json.dumps(r) for r in records) + "\n")
    report = check_dataset(path, images, tok, "llama3", IMG, N_IMG, 300, image_processor=image_processor)
    assert report.total == 10 and report.ok == 2
    expected = {
        "malformed": ["line 3"],
        "bad_record": ["no_conv"],
        "missing_image": ["missing"],
        "unreadable_image": ["cut"],
        "placeholder_mismatch": ["mismatch"],
        "not_alternating": ["order"],
        "empty_answer": ["blank"],
        "truncated": ["long"],
        "empty": [],
    }
    assert report.problems == expected
    text = report.format()
    for kind, ids in expected.items():
        if ids:
            assert f"{kind}: 1 ({ids[0]})" in text
    assert "empty:" not in text
    assert text.splitlines()[-1] == "10 sample(s) checked: 2 ok, 8 with problems"

    # without image verification the truncated file passes (it exists); without a processor
    # load_image does the full decode
    quick = check_dataset(path, images, tok, "llama3", IMG, N_IMG, 300, verify_images=False)
    assert quick.problems["unreadable_image"] == [] and quick.problems["missing_image"] == ["missing"]
    plain_decode = check_dataset(path, images, tok, "llama3", IMG, N_IMG, 300, num_workers=1)
    assert plain_decode.problems == expected


def test_check_dataset_empty_kind_and_format_limit(tmp_path):
    t = make_tiny_tokenizer()
    t.chat_template = "{% for m in messages %}{% if m['role'] == 'user' %}U: {{ m['content'] }}\n{% endif %}{% endfor %}"
    path = tmp_path / "d.json"
    path.write_text(json.dumps([conv("q", "a", id=f"r{i}") for i in range(8)]))
    report = check_dataset(path, None, t, "chat_template", IMG, N_IMG, 100)
    assert report.problems["empty"] == [f"r{i}" for i in range(8)] and report.ok == 0
    line = report.format(max_ids=3).splitlines()[0]
    assert line.startswith("empty: 8 (r0, r1, r2, ... (5 more))")
