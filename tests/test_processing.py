"""Tests of infllava.processing: image loading, geometry, pixel values, prompts, tokenization, processor."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from infllava.config import CLIP_MEAN, CLIP_STD, tiny_config
from infllava.processing import (
    LLAMA3_ASSISTANT,
    LLAMA3_SEP,
    LLAMA3_SYSTEM,
    LLAMA3_USER,
    ImageLoadError,
    InfLlavaImageProcessor,
    InfLlavaProcessor,
    build_prompt,
    expand2square,
    expand_to_aspect,
    load_image,
    mean_fill_color,
    tokenize_with_images,
)

IMG = 300  # image_token_id of tiny_config (outside the 300-token vocabulary)
FILL = (122, 116, 104)
RED, BLUE = (255, 0, 0), (0, 0, 255)


def solid(size, color=RED, mode="RGB"):
    return Image.new(mode, size, color)


def png_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kw)
    return buf.getvalue()


def normalized(rgb, mean=CLIP_MEAN, std=CLIP_STD) -> torch.Tensor:
    """Hand computation of one normalised pixel, as a [3] tensor."""
    return torch.tensor([(rgb[c] / 255.0 - mean[c]) / std[c] for c in range(3)], dtype=torch.float32)


@pytest.fixture
def processor(tiny_tokenizer) -> InfLlavaProcessor:
    return InfLlavaProcessor.from_config(tiny_config(), tiny_tokenizer)


# ------------------------------------------------------------------ load_image: modes


def _palette(index_color: dict[int, tuple[int, int, int]]) -> list[int]:
    pal = [0] * 768
    for i, c in index_color.items():
        pal[3 * i : 3 * i + 3] = c
    return pal


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda: solid((3, 2), 128, "L"), (128, 128, 128)),
        (lambda: solid((3, 2), (128, 0), "LA"), (128, 128, 128)),
        (lambda: solid((3, 2), (10, 20, 30, 0), "RGBA"), (10, 20, 30)),  # alpha dropped, not composited
        (lambda: solid((3, 2), (64, 128), "La"), (127, 127, 127)),  # premultiplied: 64 * 255 / 128
        (lambda: solid((3, 2), (128, 128, 128), "YCbCr"), (128, 128, 128)),
        (lambda: solid((3, 2), (0, 0, 0, 0), "CMYK"), (255, 255, 255)),
        (lambda: solid((3, 2), (255, 0, 0, 0), "CMYK"), (0, 255, 255)),
        (lambda: solid((3, 2), 1, "1"), (255, 255, 255)),
        (lambda: solid((3, 2), 0, "1"), (0, 0, 0)),
        (lambda: Image.fromarray(np.full((2, 3), 65535, np.uint16)), (255, 255, 255)),  # I;16 white
        (lambda: Image.fromarray(np.full((2, 3), 128 * 257, np.uint16)), (128, 128, 128)),
        (lambda: Image.fromarray(np.full((2, 3), 1000, np.uint16)), (4, 4, 4)),  # scaled, not clipped
        (lambda: Image.frombytes("I;16B", (3, 2), bytes([0x80, 0x80] * 6)), (128, 128, 128)),
        (lambda: Image.frombytes("I;16B", (3, 2), bytes([0xFF, 0xFF] * 6)), (255, 255, 255)),
        (lambda: Image.fromarray(np.full((2, 3), 65535, np.int32), "I"), (255, 255, 255)),
        (lambda: Image.fromarray(np.full((2, 3), 100 * 257, np.int32), "I"), (100, 100, 100)),
        (lambda: Image.fromarray(np.full((2, 3), 128.0, np.float32), "F"), (128, 128, 128)),
        (lambda: Image.fromarray(np.full((2, 3), 300.0, np.float32), "F"), (255, 255, 255)),
    ],
    ids=["L", "LA", "RGBA", "La", "YCbCr", "CMYK-white", "CMYK-cyan", "1-white", "1-black", "I16-white", "I16-128",
         "I16-1000", "I16B-128", "I16B-white", "I-white", "I-100", "F-128", "F-over"],
)
def test_modes_to_rgb(make, expected):
    out = load_image(make())
    assert out.mode == "RGB" and out.size == (3, 2)
    assert np.all(np.asarray(out) == np.array(expected, np.uint8))


def test_palette_modes(tmp_path):
    p = Image.new("P", (4, 4), 5)
    p.putpalette(_palette({5: (10, 20, 30), 7: (200, 100, 50)}))
    p.putpixel((0, 0), 7)
    for img in (p, load_image(png_bytes(p))):
        out = load_image(img)
        assert out.mode == "RGB" and out.getpixel((1, 1)) == (10, 20, 30) and out.getpixel((0, 0)) == (200, 100, 50)
    # P with a transparent index: the palette colour is kept (alpha dropped)
    path = tmp_path / "trns.png"
    p.save(path, transparency=5)
    with Image.open(path) as reopened:
        assert reopened.mode == "P" and reopened.info.get("transparency") == 5
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = load_image(path)
    assert out.getpixel((1, 1)) == (10, 20, 30) and out.getpixel((0, 0)) == (200, 100, 50)
    pa = Image.new("PA", (2, 2), (5, 0))
    pa.putpalette(_palette({5: (10, 20, 30)}))
    assert load_image(pa).getpixel((1, 1)) == (10, 20, 30)


def test_16bit_png_file(tmp_path):
    arr = np.array([[0, 257, 65535]], np.uint16)
    path = tmp_path / "sixteen.png"
    Image.fromarray(arr).save(path)
    out = load_image(path)
    assert out.mode == "RGB"
    assert np.asarray(out)[0, :, 0].tolist() == [0, 1, 255]


def test_inputs_path_bytes_pil_are_equivalent(tmp_path):
    img = Image.fromarray(np.arange(48, dtype=np.uint8).reshape(4, 4, 3))
    path = tmp_path / "a.png"
    img.save(path)
    ref = np.asarray(img)
    for src in (path, str(path), path.read_bytes(), img):
        assert np.array_equal(np.asarray(load_image(src)), ref)
    with open(path, "rb") as f:
        assert np.array_equal(np.asarray(load_image(f)), ref)
        assert not f.closed
    assert load_image(img) is not img


# ------------------------------------------------------------------ load_image: EXIF and errors


def test_exif_orientation(tmp_path):
    img = solid((20, 10), RED)
    img.paste(BLUE, (10, 0, 20, 10))  # left red, right blue
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    path = tmp_path / "rot.png"
    img.save(path, exif=exif.tobytes())
    out = load_image(path)
    assert out.size == (10, 20)
    assert out.getpixel((5, 2)) == RED and out.getpixel((5, 17)) == BLUE  # left half went to the top
    jpg = tmp_path / "rot.jpg"
    img.save(jpg, exif=exif.tobytes(), quality=95)
    assert load_image(jpg).size == (10, 20)


def test_truncated_jpeg(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "broken_photo.jpg"
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path, quality=90)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError, match="broken_photo.jpg.*truncated"):
        load_image(path)


def test_not_an_image_and_missing(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is text, not pixels")
    with pytest.raises(ImageLoadError, match="notes.png.*not a recognised image"):
        load_image(path)
    with pytest.raises(ImageLoadError, match="nowhere.jpg.*not found"):
        load_image(tmp_path / "nowhere.jpg")
    with pytest.raises(ImageLoadError, match="not a recognised image"):
        load_image(b"garbage bytes")
    with pytest.raises(TypeError):
        load_image(12345)


def test_pixel_limit(tmp_path):
    path = tmp_path / "big.png"
    solid((100, 100)).save(path)
    with pytest.raises(ImageLoadError, match=r"big.png.*100x100.*max_pixels=9,999") as err:
        load_image(path, max_pixels=9_999)
    assert "larger `max_pixels`" in str(err.value)
    assert load_image(path, max_pixels=10_000).size == (100, 100)
    assert load_image(path, max_pixels=None).size == (100, 100)
    with pytest.raises(ImageLoadError, match="max_pixels"):
        load_image(solid((100, 100)), max_pixels=50)
    proc = InfLlavaImageProcessor(size=4, grid=(1, 1), max_pixels=50)
    with pytest.raises(ImageLoadError, match="max_pixels"):
        proc.pixels(path)


def test_pillow_bomb_limits(tmp_path, monkeypatch):
    path = tmp_path / "bomb.png"
    solid((20, 20)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 400 px > 2 * limit: Pillow raises
    with pytest.raises(ImageLoadError, match="bomb.png.*MAX_IMAGE_PIXELS"):
        load_image(path, max_pixels=None)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300)  # warning zone: our own max_pixels governs
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_image(path).size == (20, 20)
    with pytest.raises(ImageLoadError, match="max_pixels"):
        load_image(path, max_pixels=399)


def test_degenerate_sizes():
    proc = InfLlavaImageProcessor(size=4, grid=(3, 3))
    for size in [(1, 1), (1, 5000)]:
        img = load_image(solid(size, RED))
        assert img.size == size
        assert proc.pixels(img).shape == (1, 3, 12, 12)
    assert torch.allclose(proc.pixels(solid((1, 1), RED))[0, :, 6, 6], normalized(RED), atol=1e-6)
    sq = expand2square(load_image(solid((1, 5000), RED)), FILL)
    assert sq.size == (5000, 5000) and sq.getpixel((2499, 0)) == RED and sq.getpixel((2500, 0)) == FILL
    sq = expand2square(load_image(solid((5000, 1), RED)), FILL)
    assert sq.size == (5000, 5000) and sq.getpixel((0, 2499)) == RED and sq.getpixel((0, 2500)) == FILL


# ------------------------------------------------------------------ geometry


def test_mean_fill_color():
    assert mean_fill_color(CLIP_MEAN) == FILL
    assert InfLlavaImageProcessor(size=4).fill_color == FILL
    assert InfLlavaImageProcessor(size=4, pad_color=(1, 2, 3)).fill_color == (1, 2, 3)


def test_expand2square_geometry():
    wide = expand2square(solid((4, 2), RED), FILL)  # paste at (0, 1)
    assert wide.size == (4, 4)
    rows = np.asarray(wide)[:, 0].tolist()
    assert rows == [list(FILL), list(RED), list(RED), list(FILL)]
    tall = expand2square(solid((2, 5), RED), FILL)  # paste at ((5 - 2) // 2, 0) = (1, 0)
    assert tall.size == (5, 5)
    cols = np.asarray(tall)[0, :].tolist()
    assert cols == [list(FILL), list(RED), list(RED), list(FILL), list(FILL)]
    square = solid((3, 3), RED)
    assert expand2square(square, FILL) is square


def test_expand_to_aspect_non_square_grid():
    # target width:height = 2:1 (grid n_h=1, n_w=2)
    tall = expand_to_aspect(solid((10, 10), RED), (2, 1), FILL)
    assert tall.size == (20, 10)
    row = np.asarray(tall)[5]
    assert (row[:5] == FILL).all() and (row[5:15] == RED).all() and (row[15:] == FILL).all()
    wide = expand_to_aspect(solid((30, 10), RED), (2, 1), FILL)  # too wide: rows added
    assert wide.size == (30, 15)
    col = np.asarray(wide)[:, 0]
    assert (col[:2] == FILL).all() and (col[2:12] == RED).all() and (col[12:] == FILL).all()
    assert expand_to_aspect(solid((4, 2)), (2, 1), FILL).size == (4, 2)


def test_processor_non_square_grid():
    proc = InfLlavaImageProcessor(size=10, grid=(1, 2))  # 10 high, 20 wide
    out = proc.pixels(solid((10, 10), RED))
    assert out.shape == (1, 3, 10, 20)
    assert torch.allclose(out[0, :, 5, 10], normalized(RED), atol=1e-6)
    assert torch.allclose(out[0, :, 5, 0], normalized(FILL), atol=1e-6)
    assert torch.allclose(out[0, :, 5, 19], normalized(FILL), atol=1e-6)
    tall = InfLlavaImageProcessor(size=10, grid=(2, 1)).pixels(solid((10, 10), RED))
    assert tall.shape == (1, 3, 20, 10)
    assert torch.allclose(tall[0, :, 0, 5], normalized(FILL), atol=1e-6)
    assert torch.allclose(tall[0, :, 10, 5], normalized(RED), atol=1e-6)


def test_resize_mode_squashes():
    proc = InfLlavaImageProcessor(size=10, grid=(1, 1), aspect_mode="resize")
    out = proc.pixels(solid((30, 10), RED))
    assert out.shape == (1, 3, 10, 10)
    assert torch.allclose(out[0], normalized(RED)[:, None, None].expand(3, 10, 10), atol=1e-6)
    with pytest.raises(ValueError, match="aspect_mode"):
        InfLlavaImageProcessor(size=10, aspect_mode="crop")


# ------------------------------------------------------------------ pixel values


def test_pixel_values_hand_computed():
    img = Image.new("RGB", (2, 1))
    img.putpixel((0, 0), (10, 20, 30))
    img.putpixel((1, 0), (200, 100, 50))
    out = InfLlavaImageProcessor(size=2, grid=(1, 1)).pixels(img)  # pad to 2x2 (image on row 0), no resize
    assert out.dtype == torch.float32 and out.shape == (1, 3, 2, 2)
    expected = torch.stack(
        [
            torch.stack([normalized((10, 20, 30)), normalized((200, 100, 50))], dim=-1),
            torch.stack([normalized(FILL), normalized(FILL)], dim=-1),
        ],
        dim=-2,
    )  # [3, H, W]
    assert torch.allclose(out[0], expected, atol=1e-6)


def test_matches_clip_image_processor_for_square_grid():
    import transformers

    # the PIL backend (what CLIPImageProcessor falls back to without torchvision)
    CLIPImageProcessor = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8))
    ours = InfLlavaImageProcessor(size=28, grid=(3, 3)).pixels(img)
    clip = CLIPImageProcessor(
        size={"shortest_edge": 84}, crop_size={"height": 84, "width": 84}, image_mean=CLIP_MEAN, image_std=CLIP_STD
    )
    ref = clip(expand2square(img, FILL), return_tensors="pt")["pixel_values"]
    assert ours.shape == ref.shape == (1, 3, 84, 84)
    assert torch.allclose(ours, ref.float(), atol=1e-5)


def test_image_processor_batch_and_dict_round_trip():
    proc = InfLlavaImageProcessor.from_config(tiny_config(grid=(2, 3)))
    assert proc.input_size == (56, 84)
    out = proc.pixels([solid((5, 7), RED), solid((9, 3), BLUE)])
    assert out.shape == (2, 3, 56, 84)
    assert proc.pixels([]).shape == (0, 3, 56, 84)
    clone = InfLlavaImageProcessor.from_dict(proc.to_dict())
    assert clone.to_dict() == proc.to_dict()
    assert torch.equal(clone.pixels([solid((5, 7), RED), solid((9, 3), BLUE)]), out)
    assert torch.equal(proc([solid((5, 7), RED), solid((9, 3), BLUE)])["pixel_values"], out)  # transformers' call


# ------------------------------------------------------------------ prompts


def test_llama3_prompt_exact():
    messages = [
        {"role": "user", "content": "<image>\nWhat is this?"},
        {"role": "assistant", "content": "A cat."},
        {"role": "user", "content": "What colour is it?"},
    ]
    expected = (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives "
        "helpful, detailed, and polite answers to the user's questions.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n<image>\nWhat is this?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nA cat.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWhat colour is it?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert build_prompt(messages, "llama3") == expected
    assert build_prompt(messages, "llama3", add_generation_prompt=False) == expected[: -len(LLAMA3_ASSISTANT)]
    # a complete conversation (ends with the assistant) gets nothing appended
    full = messages + [{"role": "assistant", "content": "Orange."}]
    assert build_prompt(full, "llama3") == expected + "Orange.<|eot_id|>"
    # LLaVA's MPT style: an empty message renders as its bare role
    assert build_prompt(messages[:1] + [{"role": "assistant", "content": ""}], "llama3") == (
        LLAMA3_SYSTEM + LLAMA3_SEP + LLAMA3_USER + "<image>\nWhat is this?" + LLAMA3_SEP + LLAMA3_ASSISTANT
    )


def test_plain_prompt():
    user = {"role": "user", "content": "<image>\nignored text"}
    assert build_prompt([user], "plain") == "<image>"
    assert build_prompt([user, {"role": "assistant", "content": "a red square"}], "plain") == "<image>a red square\n"
    with pytest.raises(ValueError, match="single-turn"):
        build_prompt([user, {"role": "assistant", "content": "x"}, user], "plain")


def test_chat_template_prompt(tiny_tokenizer):
    msgs = [{"role": "user", "content": "hi"}]
    with pytest.raises(ValueError, match="no chat template"):
        build_prompt(msgs, "chat_template", tiny_tokenizer)
    with pytest.raises(ValueError, match="needs a tokenizer"):
        build_prompt(msgs, "chat_template")
    tiny_tokenizer.chat_template = (
        "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}[assistant]{% endif %}"
    )
    assert build_prompt(msgs, "chat_template", tiny_tokenizer) == "[user]hi[assistant]"
    assert build_prompt(msgs, "chat_template", tiny_tokenizer, add_generation_prompt=False) == "[user]hi"


@pytest.mark.parametrize(
    "messages",
    [
        [],
        [{"role": "assistant", "content": "hi"}],
        [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
        [{"role": "system", "content": "s"}],
        [{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}],
        [{"role": "user"}],
        [{"role": "user", "content": 3}],
    ],
)
def test_bad_messages(messages):
    with pytest.raises(ValueError):
        build_prompt(messages, "llama3")


def test_llama3_system_message_replaces_the_default_system_text():
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    assert build_prompt(msgs, "llama3") == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        + LLAMA3_USER + "hi" + LLAMA3_SEP + LLAMA3_ASSISTANT)


def test_unknown_template():
    with pytest.raises(ValueError, match="template"):
        build_prompt([{"role": "user", "content": "a"}], "vicuna")


# ------------------------------------------------------------------ tokenize_with_images


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_tokenize_with_bos(tiny_tokenizer):
    tok = tiny_tokenizer
    bos = tok.bos_token_id
    out = tokenize_with_images("ab<image>cd", tok, IMG, 4)
    assert out == [bos] + _ids(tok, "ab") + [IMG] * 4 + _ids(tok, "cd")
    # placeholder first: the empty chunk 0 still yields the single BOS
    assert tokenize_with_images("<image>\nhi", tok, IMG, 3) == [bos] + [IMG] * 3 + _ids(tok, "\nhi")
    # adjacent placeholders and a trailing one
    assert tokenize_with_images("x<image><image>", tok, IMG, 2) == [bos] + _ids(tok, "x") + [IMG] * 4
    assert tokenize_with_images("no image", tok, IMG, 2) == [bos] + _ids(tok, "no image")


def test_tokenize_run_position_in_llama3_prompt(tiny_tokenizer):
    prompt = build_prompt([{"role": "user", "content": "<image>\nDescribe."}], "llama3")
    out = tokenize_with_images(prompt, tiny_tokenizer, IMG, 16)
    first = out.index(IMG)
    assert out[first : first + 16] == [IMG] * 16 and out.count(IMG) == 16
    head = prompt.split("<image>")[0]
    assert out[:first] == [tiny_tokenizer.bos_token_id] + _ids(tiny_tokenizer, head)
    assert out[first + 16 :] == _ids(tiny_tokenizer, prompt.split("<image>")[1])


def test_tokenize_double_bos_like_official(tiny_tokenizer_factory):
    # LLaMA-3: the tokenizer adds <|begin_of_text|> and the template starts with it too -> two BOS
    tok = tiny_tokenizer_factory(bos_token="<|begin_of_text|>")
    bos = tok.bos_token_id
    prompt = "<|begin_of_text|>hi<image>yo"
    assert tokenize_with_images(prompt, tok, IMG, 2) == [bos, bos] + _ids(tok, "hi") + [IMG, IMG] + _ids(tok, "yo")


def test_tokenize_without_bos(tiny_tokenizer_factory):
    tok = tiny_tokenizer_factory(add_bos=False)
    assert tok("ab")["input_ids"] == _ids(tok, "ab")
    assert tokenize_with_images("ab<image>cd", tok, IMG, 3) == _ids(tok, "ab") + [IMG] * 3 + _ids(tok, "cd")
    assert tokenize_with_images("<image>cd", tok, IMG, 1) == [IMG] + _ids(tok, "cd")


# ------------------------------------------------------------------ processor


def test_processor_single(processor, tiny_tokenizer):
    prompt = processor.build_prompt([{"role": "user", "content": "<image>\nWhat is it?"}])
    out = processor(prompt, solid((30, 20), RED))
    assert set(out) == {"input_ids", "attention_mask", "pixel_values"}
    assert out["input_ids"].dtype == torch.long and out["input_ids"].shape[0] == 1
    assert out["input_ids"][0].tolist() == tokenize_with_images(prompt, tiny_tokenizer, IMG, 16)
    assert (out["input_ids"] == IMG).sum() == 16
    assert out["attention_mask"].all()
    assert out["pixel_values"].shape == (1, 3, 84, 84)
    no_img = processor(processor.build_prompt([{"role": "user", "content": "hello"}]))
    assert "pixel_values" not in no_img


def test_placeholder_count_mismatch(processor):
    two = processor.build_prompt([{"role": "user", "content": "<image> and <image>"}])
    with pytest.raises(ValueError, match=r"2 '<image>' placeholder.*1 image"):
        processor(two, solid((4, 4)))
    one = processor.build_prompt([{"role": "user", "content": "<image> only"}])
    with pytest.raises(ValueError, match=r"1 '<image>' placeholder.*2 image"):
        processor(one, [solid((4, 4)), solid((4, 4))])
    with pytest.raises(ValueError, match=r"1 '<image>' placeholder.*0 image"):
        processor(one)
    none = processor.build_prompt([{"role": "user", "content": "no placeholder"}])
    with pytest.raises(ValueError, match=r"0 '<image>' placeholder.*2 image"):
        processor(none, [solid((4, 4)), solid((4, 4))])
    with pytest.raises(ValueError, match=r"3 '<image>' placeholder.*2 image"):
        processor([two, one], [solid((4, 4)), solid((4, 4))])


def test_auto_placeholder(processor):
    msgs = [{"role": "user", "content": "What is it?"}]
    explicit = processor.build_prompt([{"role": "user", "content": "<image>\nWhat is it?"}])
    img = solid((8, 8), RED)
    want = processor(explicit, img, add_special_tokens=False)  # a rendered prompt carries its BOS itself
    # raw prompt: inserted at the start of the first user message
    got = processor(processor.build_prompt(msgs), img, add_special_tokens=False)
    assert torch.equal(got["input_ids"], want["input_ids"])
    # chat helpers
    assert processor.chat_prompt(msgs, num_images=1) == explicit
    assert processor.chat_prompt(msgs, num_images=0) == processor.build_prompt(msgs)
    assert msgs[0]["content"] == "What is it?"  # not mutated
    got = processor.apply_chat(msgs, img)
    assert torch.equal(got["input_ids"], want["input_ids"])
    assert torch.equal(got["pixel_values"], want["pixel_values"])


def test_left_and_right_padding(processor, tiny_tokenizer):
    short = processor.build_prompt([{"role": "user", "content": "<image>\nHi"}])
    long = processor.build_prompt([{"role": "user", "content": "<image>\nA much longer question here?"}])
    red, blue = solid((6, 6), RED), solid((6, 6), BLUE)
    single = [tokenize_with_images(p, tiny_tokenizer, IMG, 16) for p in (short, long)]
    n_pad = len(single[1]) - len(single[0])
    assert n_pad > 0

    out = processor([short, long], [red, blue])
    ids, mask = out["input_ids"], out["attention_mask"]
    assert ids.shape == mask.shape == (2, len(single[1]))
    assert ids[0, :n_pad].tolist() == [tiny_tokenizer.pad_token_id] * n_pad
    assert ids[0, n_pad:].tolist() == single[0] and ids[1].tolist() == single[1]
    assert mask[0].tolist() == [0] * n_pad + [1] * len(single[0]) and mask[1].all()
    # images follow placeholder order
    assert torch.allclose(out["pixel_values"][0, :, 40, 40], normalized(RED), atol=1e-6)
    assert torch.allclose(out["pixel_values"][1, :, 40, 40], normalized(BLUE), atol=1e-6)

    right = processor([short, long], [[red], [blue]], padding_side="right")
    assert right["input_ids"][0, : len(single[0])].tolist() == single[0]
    assert right["input_ids"][0, len(single[0]) :].tolist() == [tiny_tokenizer.pad_token_id] * n_pad
    assert right["attention_mask"][0].tolist() == [1] * len(single[0]) + [0] * n_pad
    assert torch.equal(right["pixel_values"], out["pixel_values"])

    lists = processor([short, long], [red, blue], return_tensors=None)
    assert lists["input_ids"] == ids.tolist() and lists["attention_mask"] == mask.tolist()
    with pytest.raises(ValueError, match="padding_side"):
        processor(short, red, padding_side="middle")


def test_per_prompt_images_and_batch_chat(processor):
    with_img = [{"role": "user", "content": "Describe."}]
    text_only = [{"role": "user", "content": "Tell a joke."}]
    out = processor.apply_chat([with_img, text_only], [solid((5, 5), RED), None])
    assert out["pixel_values"].shape == (1, 3, 84, 84)
    assert (out["input_ids"][0] == IMG).sum() == 16 and (out["input_ids"][1] == IMG).sum() == 0
    # one image per prompt, no placeholders anywhere: one each, placeholders inserted
    prompts = [processor.build_prompt(with_img), processor.build_prompt(text_only)]
    out = processor(prompts, [solid((5, 5), RED), solid((5, 5), BLUE)])
    assert out["pixel_values"].shape[0] == 2 and ((out["input_ids"] == IMG).sum(1) == 16).all()


def test_pad_falls_back_to_eos(tiny_tokenizer_factory):
    tok = tiny_tokenizer_factory(pad=False)
    assert tok.pad_token_id is None
    proc = InfLlavaProcessor.from_config(tiny_config(), tok)
    out = proc(text=["a", "abc"])
    assert out["input_ids"][0, :2].tolist() == [tok.eos_token_id] * 2


def test_decode_pass_through(processor, tiny_tokenizer):
    ids = tiny_tokenizer("hello world")["input_ids"]
    assert processor.decode(ids, skip_special_tokens=True) == "hello world"
    assert processor.batch_decode([ids, ids], skip_special_tokens=True) == ["hello world"] * 2


def test_save_load_round_trip(processor, tmp_path):
    processor.image_processor.aspect_mode = "resize"
    processor.save_pretrained(tmp_path / "proc")
    loaded = InfLlavaProcessor.from_pretrained(tmp_path / "proc")
    assert loaded.to_dict() == processor.to_dict()
    msgs = [[{"role": "user", "content": "What?"}], [{"role": "user", "content": "<image>\nA longer one"}]]
    imgs = [solid((7, 3), RED), solid((3, 9), BLUE)]
    a, b = processor.apply_chat(msgs, imgs), loaded.apply_chat(msgs, imgs)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    with pytest.raises(FileNotFoundError, match="processor_config.json"):
        InfLlavaProcessor.from_pretrained(tmp_path)


def test_from_config_sizes(tiny_tokenizer):
    cfg = tiny_config(grid=(2, 3))
    proc = InfLlavaProcessor.from_config(cfg, tiny_tokenizer)
    assert proc.image_token_id == cfg.image_token_id == IMG
    assert proc.num_image_tokens == cfg.num_image_tokens == 16
    assert proc.template == "llama3"
    assert proc.image_processor.input_size == cfg.input_size == (56, 84)
