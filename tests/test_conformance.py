"""transformers conformance: the Llava family's layout and conventions, the Auto classes, the processor's
chat template on content parts, tokenization equal to the tokenizer's own, multi-image prompts, the
layout before `InfLlavaModel` still loading, and `infllava export`."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import (
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageTextToText,
    AutoProcessor,
)
from transformers.modeling_outputs import BaseModelOutputWithPooling

import infllava
from infllava import (
    ChatSession,
    InfLlavaConfig,
    InfLlavaForConditionalGeneration,
    InfLlavaImageProcessor,
    InfLlavaModel,
    InfLlavaProcessor,
    answer,
    load,
    tiny_config,
)
from infllava_cli import main as cli_main
from infllava.templates import TEMPLATES, ChatTemplate, get_template, register_template, render
from infllava.tiny import build_tiny_model, make_tiny_tokenizer

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def chatml_tokenizer():
    """SmolLM2's situation: no BOS added by the tokenizer, and its BOS `<|im_start|>` is the template's
    first token (the old chunk rule dropped the newline after <image> because of it)."""
    tok = make_tiny_tokenizer(add_bos=False)
    tok.add_tokens(["<|im_start|>", "<|im_end|>"], special_tokens=True)
    tok.bos_token = "<|im_start|>"
    tok.chat_template = CHATML
    return tok


def image(color=(200, 30, 30), size=(40, 30)):
    return Image.new("RGB", size, color)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = build_tiny_model(tmp_path_factory.mktemp("tiny") / "m")
    model, processor = load(d, device="cpu")
    return d, model, processor


# ------------------------------------------------------------------ model layout and outputs


def test_layout_is_llavas(tiny):
    _, model, _ = tiny
    assert isinstance(model.model, InfLlavaModel)
    assert isinstance(model.lm_head, torch.nn.Linear)
    names = {n for n, _ in model.model.named_children()}
    assert {"vision_tower", "dem", "projector", "language_model"} <= names
    # the base LM is a decoder without a head
    assert not hasattr(model.model.language_model, "lm_head")
    assert all(k.startswith(("model.", "lm_head.")) for k in model.state_dict())


def test_get_image_features_and_forward_follow_llava(tiny):
    _, model, processor = tiny
    px = processor.image_processor([image(), image((10, 200, 10))])["pixel_values"]
    with torch.no_grad():
        out = model.get_image_features(px)
    assert isinstance(out, BaseModelOutputWithPooling)
    T, D = model.config.num_image_tokens, model.config.text_config.hidden_size
    assert len(out.pooler_output) == 2 and all(f.shape == (T, D) for f in out.pooler_output)
    torch.testing.assert_close(torch.stack(out.pooler_output), model.image_tokens(px))
    enc = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image", "image": image()}, {"type": "text", "text": "hi"}]}],
        tokenize=True, return_dict=True)
    with torch.no_grad():
        base = model.model(**enc)
        full = model(**enc)
    assert base.last_hidden_state.shape == (1, enc["input_ids"].shape[1], D)
    assert full.logits.shape == (1, enc["input_ids"].shape[1], model.config.text_config.vocab_size)
    assert full.image_outputs is not None and len(full.image_outputs.pooler_output) == 1
    torch.testing.assert_close(model.lm_head(base.last_hidden_state), full.logits)


def test_auto_classes_round_trip(tiny, tmp_path):
    d, model, processor = tiny
    assert type(AutoModel.from_pretrained(d)) is InfLlavaModel
    from transformers import AutoModelForCausalLM

    assert type(AutoModelForCausalLM.from_pretrained(d)) is InfLlavaForConditionalGeneration
    auto = AutoModelForImageTextToText.from_pretrained(d).eval()
    assert type(auto) is InfLlavaForConditionalGeneration
    proc = AutoProcessor.from_pretrained(d)
    assert type(proc) is InfLlavaProcessor
    if _auto_image_processor_works():  # transformers 5.16-5.18 offer it with torchvision only
        assert type(AutoImageProcessor.from_pretrained(d)) is InfLlavaImageProcessor
    msgs = [{"role": "user", "content": [{"type": "image", "image": image()}, {"type": "text", "text": "what?"}]}]
    a = proc.apply_chat_template(msgs, tokenize=True, return_dict=True)
    b = processor.apply_chat_template(msgs, tokenize=True, return_dict=True)
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["pixel_values"], b["pixel_values"])
    with torch.no_grad():
        torch.testing.assert_close(auto(**a).logits, model(**b).logits, rtol=0, atol=0)
    # and again through save_pretrained of what the Auto classes gave
    auto.save_pretrained(tmp_path / "again")
    proc.save_pretrained(tmp_path / "again")
    again = AutoModelForImageTextToText.from_pretrained(tmp_path / "again").eval()
    again_proc = AutoProcessor.from_pretrained(tmp_path / "again")
    assert again_proc.to_dict() == proc.to_dict()
    with torch.no_grad():
        assert torch.equal(again(**a).logits, auto(**a).logits)


def _auto_image_processor_works() -> bool:
    import transformers
    from packaging.version import Version

    if Version(transformers.__version__) >= Version("5.19"):
        return True  # it must work here
    try:
        AutoImageProcessor.register  # noqa: B018 - the torchvision-only placeholder raises on access
        return True
    except ImportError:
        return False


def _legacy_layout(tiny_dir, dst):
    """The directory as infllava wrote it before InfLlavaModel: top-level keys, causal-LM naming, the old
    processor_config.json (image processor settings nested, `size` the crop side), no <image> in the
    tokenizer."""
    import shutil

    shutil.copytree(tiny_dir, dst)
    sd = load_file(str(dst / "model.safetensors"))
    old = {}
    for k, v in sd.items():
        if k.startswith("model.language_model."):
            old["language_model.model." + k[len("model.language_model."):]] = v
        elif k.startswith("lm_head."):
            old["language_model." + k] = v
        else:
            old[k.removeprefix("model.")] = v
    save_file(old, str(dst / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((dst / "processor_config.json").read_text())
    ip = cfg["image_processor"]
    cfg["image_processor"] = {"image_processor_type": "InfLlavaImageProcessor", "size": ip["crop_size"]["height"],
                              "grid": ip["grid"], "image_mean": ip["image_mean"], "image_std": ip["image_std"],
                              "aspect_mode": "pad", "pad_color": None, "max_pixels": 100000000}
    (dst / "processor_config.json").write_text(json.dumps(cfg))
    make_tiny_tokenizer().save_pretrained(dst)  # a tokenizer without <image>
    (dst / "chat_template.jinja").unlink(missing_ok=True)
    return dst


def test_checkpoints_of_the_old_layout_keep_loading(tiny, tmp_path):
    d, model, processor = tiny
    old = _legacy_layout(d, tmp_path / "old")
    assert any(k.startswith("language_model.model.") for k in load_file(str(old / "model.safetensors")))
    m2, p2 = load(old, device="cpu")
    msgs = [{"role": "user", "content": "<image>\nwhat colour?"}]
    a, b = processor.apply_chat(msgs, image()), p2.apply_chat(msgs, image())
    assert torch.equal(a["input_ids"], b["input_ids"])
    with torch.no_grad():
        assert torch.equal(model(**a).logits, m2(**b).logits)
    assert type(AutoModelForImageTextToText.from_pretrained(old)) is InfLlavaForConditionalGeneration


def test_official_and_foreign_directories_are_refused(tmp_path):
    official = tmp_path / "official"
    official.mkdir()
    (official / "config.json").write_text(json.dumps({"model_type": "llava_llama", "mm_projector_type": "mlp2x_gelu"}))
    with pytest.raises(ValueError, match="infllava convert-official"):
        load(official)
    llama = tmp_path / "llama"
    llama.mkdir()
    (llama / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="not an infllava model.*'llama'"):
        load(llama)


# ------------------------------------------------------------------ processor


def test_processor_attributes(tiny):
    _, model, processor = tiny
    assert processor.image_token == "<image>"
    assert processor.image_token_id == model.config.image_token_id
    assert processor.tokenizer.convert_tokens_to_ids("<image>") == processor.image_token_id
    T = model.config.num_image_tokens
    assert processor.num_image_tokens == T
    assert processor._get_num_multimodal_tokens(image_sizes=[(30, 40), (500, 90)]).num_image_tokens == [T, T]
    assert processor.replace_image_token({}, 0) == "<image>" * T
    assert processor.image_processor.size == {"height": model.config.input_size[0], "width": model.config.input_size[1]}


def test_apply_chat_template_content_parts(tiny, tmp_path):
    _, _, processor = tiny
    path = tmp_path / "red.png"
    image().save(path)
    by_text = processor.apply_chat([{"role": "user", "content": "<image>\nWhat is it?"}], image())
    for part in ({"type": "image", "image": image()}, {"type": "image", "path": str(path)},
                 {"type": "image", "url": f"file://{path}"}, {"type": "image", "url": str(path)}):
        msgs = [{"role": "user", "content": [part, {"type": "text", "text": "What is it?"}]}]
        text = processor.apply_chat_template(msgs, add_generation_prompt=True)
        assert text == processor.build_prompt([{"role": "user", "content": "<image>\nWhat is it?"}])
        enc = processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=True)
        assert torch.equal(enc["input_ids"], by_text["input_ids"])
        torch.testing.assert_close(enc["pixel_values"], by_text["pixel_values"], rtol=0, atol=0)
    ids = processor.apply_chat_template(msgs, tokenize=True)
    assert ids == by_text["input_ids"].tolist()
    with pytest.raises(ValueError, match="nothing is downloaded"):
        processor.apply_chat_template([{"role": "user", "content": [
            {"type": "image", "url": "https://example.com/x.png"}]}], tokenize=True)


def test_chat_template_ids_equal_the_tokenizers_apply_chat_template():
    """For a tokenizer chat template the ids are exactly transformers' own `apply_chat_template(tokenize=True)`
    (one BOS even when the template writes {{ bos_token }} and the tokenizer adds one), images expanded."""
    tok = make_tiny_tokenizer()  # adds a BOS "<s>" to raw text
    tok.add_tokens(["<|im_start|>", "<|im_end|>"], special_tokens=True)
    tok.chat_template = "{{ bos_token }}" + CHATML
    processor = InfLlavaProcessor.from_config(tiny_config(template="chat_template"), tok)
    msgs = [{"role": "user", "content": "<image>\nWhat colour?"}, {"role": "assistant", "content": "red"},
            {"role": "user", "content": "Sure?"}]
    own = tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True)
    own = own["input_ids"] if isinstance(own, dict) or hasattr(own, "keys") else own
    ours = processor.apply_chat_template(msgs, images=[image()], tokenize=True)[0]
    T, img = processor.num_image_tokens, processor.image_token_id
    expanded = [t for i in own for t in ([img] * T if i == img else [i])]
    assert ours == expanded and ours[:2] != [tok.bos_token_id] * 2


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_ids_are_the_tokenizers_own(name):
    """For every registered template: the processor's ids equal the tokenizer's tokenization of the rendered
    text with each <image> written out num_image_tokens times."""
    tok = chatml_tokenizer()
    processor = InfLlavaProcessor.from_config(tiny_config(template=name), tok)
    content = [{"type": "image", "image": image()}, {"type": "text", "text": "What colour?"}]
    msgs = [{"role": "user", "content": content}]
    if name == "plain":
        msgs.append({"role": "assistant", "content": "a red square"})
    text = processor.apply_chat_template(msgs)
    enc = processor.apply_chat_template(msgs, tokenize=True, return_dict=True)
    expanded = text.replace("<image>", "<image>" * processor.num_image_tokens)
    # the rendered text carries its special tokens: tokenized as transformers tokenizes chat templates
    assert enc["input_ids"][0].tolist() == tok(expanded, add_special_tokens=False)["input_ids"]
    assert (enc["input_ids"] == processor.image_token_id).sum() == processor.num_image_tokens


def test_newline_after_image_is_kept_with_a_bos_like_template_start():
    tok = chatml_tokenizer()
    processor = InfLlavaProcessor.from_config(tiny_config(template="chat_template"), tok)
    ids = processor.apply_chat_template([{"role": "user", "content": "<image>\nhi"}], images=[image()],
                                        tokenize=True)[0]
    after = ids[ids.index(processor.image_token_id) + processor.num_image_tokens:]
    assert tok.decode(after[:3]) == "\nhi"


def _official_tokenizer_image_token(prompt, tokenizer, image_id, n):
    """LLaVA's `tokenizer_image_token`, as the official INF-LLaVA code computes it (test oracle)."""
    chunks = [tokenizer(c)["input_ids"] for c in prompt.split("<image>")]
    ids, offset = [], 0
    if chunks and chunks[0] and chunks[0][0] == tokenizer.bos_token_id:
        offset = 1
        ids.append(chunks[0][0])
    for i, c in enumerate(chunks):
        if i:
            ids.extend([image_id] * n)
        ids.extend(c[offset:])
    return ids


@pytest.mark.parametrize("question", ["<image>\nWhat is it?", "Compare <image> and <image>.", "no image"])
def test_llama3_ids_are_byte_exact_with_the_official_code(question):
    tok = make_tiny_tokenizer(bos_token="<|begin_of_text|>")  # adds a BOS, as LLaMA-3's tokenizer does
    processor = InfLlavaProcessor.from_config(tiny_config(), tok)
    prompt = processor.build_prompt([{"role": "user", "content": question}])
    want = _official_tokenizer_image_token(prompt, tok, processor.image_token_id, processor.num_image_tokens)
    images = [image()] * question.count("<image>")
    assert processor(text=prompt, images=images or None)["input_ids"][0].tolist() == want
    assert want[:2] == [tok.bos_token_id] * 2  # two BOS, as the released model was trained


# ------------------------------------------------------------------ templates are one registry entry each


def test_a_new_template_is_one_entry(tmp_path, monkeypatch):
    name = "test-brackets"
    monkeypatch.setattr("infllava.templates.TEMPLATES", dict(TEMPLATES))  # the entry goes with the test
    register_template(ChatTemplate(
        name,
        "{%- for m in messages -%}[{{ m['role'] }}] {{ m['content'] }}{{ '<|eot_id|>' if m['role'] == "
        "'assistant' else '\\n' }}{%- endfor -%}{%- if add_generation_prompt -%}{{ '[assistant] ' }}{%- endif -%}",
        stop_strings=("<|eot_id|>",)))
    msgs = [{"role": "user", "content": "<image>\nQ?"}, {"role": "assistant", "content": "A."}]
    assert render(msgs, name) == "[user] <image>\nQ?\n[assistant] A.<|eot_id|>"
    # training labels supervise exactly the answer and its end token
    from infllava.training.labels import IGNORE_INDEX, encode_conversation

    tok = make_tiny_tokenizer()
    ids, labels = encode_conversation(msgs, tok, name, 300, 2, None)
    assert tok.decode([i for i, lab in zip(ids, labels) if lab != IGNORE_INDEX]) == "A.<|eot_id|>"
    # and a model configured with it renders and stops with it
    processor = InfLlavaProcessor.from_config(tiny_config(template=name), tok)
    assert processor.build_prompt(msgs[:1]).endswith("[assistant] ")
    assert tok.convert_tokens_to_ids("<|eot_id|>") in processor.stop_token_ids
    with pytest.raises(ValueError, match="test-brackets"):
        get_template("nope")


# ------------------------------------------------------------------ several images


def test_two_images_in_one_prompt_are_each_images_features_in_order(tiny):
    _, model, processor = tiny
    red, green = image(), image((20, 200, 20), (25, 60))
    msgs = [{"role": "user", "content": [{"type": "image", "image": red}, {"type": "text", "text": "and"},
                                         {"type": "image", "image": green}, {"type": "text", "text": "differ?"}]}]
    enc = processor.apply_chat_template(msgs, tokenize=True, return_dict=True)
    assert enc["pixel_values"].shape[0] == 2
    with torch.no_grad():
        embeds = model.embed_inputs(enc["input_ids"], enc["pixel_values"])
        one = model.image_tokens(processor.image_processor([red])["pixel_values"])[0]
        two = model.image_tokens(processor.image_processor([green])["pixel_values"])[0]
    slots = (enc["input_ids"][0] == processor.image_token_id).nonzero().flatten()
    T = processor.num_image_tokens
    torch.testing.assert_close(embeds[0, slots[:T]], one)
    torch.testing.assert_close(embeds[0, slots[T:]], two)


def test_image_count_mismatch_names_both_counts(tiny):
    _, model, processor = tiny
    with pytest.raises(ValueError, match="2 '<image>' placeholder.*1 image"):
        processor(text=processor.build_prompt([{"role": "user", "content": "<image> <image> hi"}]), images=[image()])
    enc = processor.apply_chat_template([{"role": "user", "content": "<image> <image> hi"}],
                                        images=[image(), image()], tokenize=True, return_dict=True)
    with pytest.raises(ValueError, match=r"2 images of .* but 1 image"):
        model(input_ids=enc["input_ids"], pixel_values=enc["pixel_values"][:1])


def test_session_and_cli_take_several_images(tiny, tmp_path, capsys):
    d, model, processor = tiny
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    image().save(a)
    image((0, 0, 250)).save(b)
    session = ChatSession(model, processor, images=[a, b], max_new_tokens=4)
    assert session.image_features.shape[0] == 2
    got = session.ask("Which is blue, <image> or <image>?")
    want = answer(model, processor, [a, b], "Which is blue, <image> or <image>?", max_new_tokens=4)
    assert got == want
    with pytest.raises(ValueError, match="1 '<image>' placeholder.*2 image"):
        answer(model, processor, [a, b], "Just <image>?")
    assert cli_main(["chat", str(d), "--image", str(a), "--image", str(b), "--max-new-tokens", "4",
                     "Which is blue?"]) == 0
    assert capsys.readouterr().out.strip() == answer(model, processor, [a, b], "Which is blue?", max_new_tokens=4)


# ------------------------------------------------------------------ export


def test_export_writes_a_directory_the_auto_classes_load(tiny, tmp_path):
    d, model, processor = tiny
    dst = tmp_path / "exported"
    assert cli_main(["export", str(d), str(dst)]) == 0
    assert {"config.json", "model.safetensors", "processor_config.json", "tokenizer.json",
            "chat_template.jinja"} <= {p.name for p in dst.iterdir()}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".exported")]  # no temporary left
    auto = AutoModelForImageTextToText.from_pretrained(dst).eval()
    proc = AutoProcessor.from_pretrained(dst)
    msgs = [{"role": "user", "content": [{"type": "image", "image": image()}, {"type": "text", "text": "hi"}]}]
    enc = proc.apply_chat_template(msgs, tokenize=True, return_dict=True)
    with torch.no_grad():
        assert torch.equal(auto(**enc).logits, model(**enc).logits)
    assert "<image>" in (dst / "tokenizer.json").read_text()
    assert cli_main(["export", str(d), str(dst)]) == 1  # exists: refused (a failure, exit 1), nothing touched
    assert cli_main(["export", str(d), str(d / "inside")]) == 1


def test_public_api():
    for name in ("InfLlavaConfig", "InfLlavaModel", "InfLlavaForConditionalGeneration", "InfLlavaProcessor",
                 "InfLlavaImageProcessor", "load", "answer", "ChatSession"):
        assert hasattr(infllava, name) and name in infllava.__all__
    assert InfLlavaConfig is infllava.InfLlavaConfig


@pytest.mark.parametrize("name", [n for n in TEMPLATES if n != "plain"])
def test_engines_render_what_we_render(name, tmp_path):
    """The processor's saved chat template, rendered by transformers' own tokenizer.apply_chat_template on
    content parts (what an engine does with the exported directory), gives our prompt."""
    processor = InfLlavaProcessor.from_config(tiny_config(template=name), chatml_tokenizer())
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Two?"}, {"type": "image"}]},
            {"role": "assistant", "content": "yes"},
            {"role": "user", "content": [{"type": "text", "text": "Sure?"}]}]
    ours = processor.apply_chat_template(msgs)
    processor.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tmp_path)
    assert tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == ours
    assert ours.count("<image>") == 2 and "<image>\nTwo?\n<image>" in ours
    again = InfLlavaProcessor.from_pretrained(tmp_path)  # saving and loading does not stack the template
    assert again.chat_template == processor.chat_template and again.apply_chat_template(msgs) == ours


def test_engine_calls(tiny):
    """What vLLM's Transformers backend and lmms-eval / transformers serve do with a processor's output."""
    _, model, processor = tiny
    prompt = processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text",
                                                                                         "text": "hi"}]}])
    out = processor(text=[prompt], images=[image()], videos=None, return_mm_token_type_ids=True,
                    add_special_tokens=False, return_tensors="pt")
    assert out["mm_token_type_ids"].sum() == processor.num_image_tokens
    assert (out["mm_token_type_ids"].bool() == (out["input_ids"] == processor.image_token_id)).all()
    enc = processor.apply_chat_template([{"role": "user", "content": [{"type": "image", "image": image()},
                                                                      {"type": "text", "text": "hi"}]}],
                                        tokenize=True, return_dict=True).to("cpu")  # a BatchFeature
    with torch.no_grad():
        feats = model.get_image_features(enc["pixel_values"], return_dict=True).pooler_output
        assert torch.equal(torch.cat(feats), model.image_tokens(enc["pixel_values"])[0])
        gen = model.generate(**enc, max_new_tokens=3, do_sample=False)
    assert enc["input_ids"].shape[1] < gen.shape[1] <= enc["input_ids"].shape[1] + 3
    with pytest.raises(ValueError, match="images and text only"):
        processor(text=[prompt], images=[image()], videos=["v.mp4"])


def test_array_images_and_positional_text_first(tiny, tmp_path):
    import numpy as np

    _, _, processor = tiny
    pil = image()
    arr = np.asarray(pil)
    chw = torch.from_numpy(arr).permute(2, 0, 1).float() / 255
    want = processor.image_processor([pil])["pixel_values"]
    for src in (arr, chw, arr[None]):
        torch.testing.assert_close(processor.image_processor(src)["pixel_values"], want, rtol=0, atol=1e-6)
    path = tmp_path / "x.png"
    pil.save(path)
    prompt = processor.build_prompt([{"role": "user", "content": "<image>\nhi"}])
    a = processor(prompt, str(path), add_special_tokens=False)  # infllava's order before 0.2: text, images
    b = processor(images=str(path), text=prompt, add_special_tokens=False)
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["pixel_values"], b["pixel_values"])


def test_system_message_through_the_saved_template(tmp_path):
    from transformers import AutoTokenizer

    for name in ("llama3", "chat_template"):
        processor = InfLlavaProcessor.from_config(tiny_config(template=name), chatml_tokenizer())
        msgs = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}]
        ours = processor.apply_chat_template(msgs)
        assert "Be brief." in ours and ours.count("Be brief.") == 1
        processor.save_pretrained(tmp_path / name)
        tok = AutoTokenizer.from_pretrained(tmp_path / name)
        assert tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == ours
    with pytest.raises(Exception, match="unknown role"):
        tok = InfLlavaProcessor.from_config(tiny_config(), chatml_tokenizer())
        from transformers.utils.chat_template_utils import render_jinja_template

        render_jinja_template([[{"role": "tool", "content": "x"}]], chat_template=tok.chat_template)
