"""Conversation templates: one registry, asked by the processor, inference, training and the configs.

A template is one `ChatTemplate` entry: a Jinja chat template (the format transformers' tokenizers and
processors use, so other engines render exactly what we render), the stop strings that end an answer,
and how the supervised span of an answer ends. Everything else derives from it:

- `render(messages, name, tokenizer)`: the prompt text (through transformers' own Jinja renderer);
- `processor_chat_template(name, tokenizer)`: the Jinja text a processor saves (`chat_template.jinja`),
  which also accepts content parts (`[{"type": "image"}, {"type": "text", "text": ...}]`);
- `supervised_spans(messages, name, tokenizer)`: the character spans training supervises, found by
  rendering the conversation prefix by prefix (so a template needs no span rules of its own).

Adding a template is one `register_template(ChatTemplate(...))` call; the tests run over the registry.

Messages are `{"role": "user" | "assistant", "content": str | list of parts}`, alternating, starting
with "user". A content part `{"type": "image"}` (or "image_url") renders as the placeholder "<image>",
a text part as its text, parts joined by "\\n" (so `[image, text]` is LLaVA's "<image>\\n" + text).
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: The text placeholder that stands for one image in a prompt (a special token of the tokenizer).
IMAGE_TOKEN = "<image>"
IMAGE_PLACEHOLDER = IMAGE_TOKEN  # the name older code uses

# The official INF-LLaVA / LLaVA-LLaMA-3 conversation (LLaVA's SeparatorStyle.MPT with LLaMA-3 headers).
LLAMA3_SYSTEM = (
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
LLAMA3_USER = "<|start_header_id|>user<|end_header_id|>\n\n"
LLAMA3_ASSISTANT = "<|start_header_id|>assistant<|end_header_id|>\n\n"
LLAMA3_SEP = "<|eot_id|>"


def _jinja_str(text: str) -> str:
    """A Python string as a Jinja string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


# Content parts -> strings, before any template body: images become "<image>", parts join with "\n".
_CONTENT_PARTS_PREAMBLE = (
    "{%- set ns = namespace(msgs=[]) -%}"
    "{%- for m in messages -%}"
    "{%- if m['content'] is string or m['content'] is none -%}"
    "{%- set ns.msgs = ns.msgs + [{'role': m['role'], 'content': m['content']}] -%}"
    "{%- else -%}"
    "{%- set parts = namespace(items=[]) -%}"
    "{%- for p in m['content'] -%}"
    "{%- if p['type'] in ['image', 'image_url'] -%}{%- set parts.items = parts.items + [" + _jinja_str(IMAGE_TOKEN) + "] -%}"
    "{%- elif p['type'] == 'text' -%}{%- set parts.items = parts.items + [p['text']] -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- set ns.msgs = ns.msgs + [{'role': m['role'], 'content': parts.items | join('\\n')}] -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- set messages = ns.msgs -%}"
)

_LLAMA3_SYSTEM_HEADER, _LLAMA3_SYSTEM_TEXT = LLAMA3_SYSTEM.split("\n\n", 1)
_LLAMA3_SYSTEM_HEADER += "\n\n"

_LLAMA3_JINJA = (
    # a leading system message replaces the default system text (LLaVA's conv_llama3.system)
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{{- " + _jinja_str(_LLAMA3_SYSTEM_HEADER) + " + messages[0]['content'] + " + _jinja_str(LLAMA3_SEP) + " -}}"
    "{%- set messages = messages[1:] -%}"
    "{%- else -%}{{- " + _jinja_str(LLAMA3_SYSTEM + LLAMA3_SEP) + " -}}{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}{%- set role = " + _jinja_str(LLAMA3_USER) + " -%}"
    "{%- elif message['role'] == 'assistant' -%}{%- set role = " + _jinja_str(LLAMA3_ASSISTANT) + " -%}"
    "{%- else -%}{{- raise_exception('unknown role ' + message['role'] + ': the llama3 template takes one "
    "optional system message, then user / assistant turns') -}}{%- endif -%}"
    # as in LLaVA, a message with empty content renders as its bare role (no separator)
    "{%- if message['content'] -%}{{- role + message['content'] + " + _jinja_str(LLAMA3_SEP) + " -}}"
    "{%- else -%}{{- role -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- " + _jinja_str(LLAMA3_ASSISTANT) + " -}}{%- endif -%}"
)

# Stage-1 captioning (LLaVA's conv_llava_plain): the user turn is replaced by one image, the caption
# follows it directly and ends with "\n".
_PLAIN_JINJA = (
    "{%- if messages | length > 2 or messages[0]['role'] != 'user' -%}{{- raise_exception('the plain template is "
    "single-turn (one user message, optionally one caption)') -}}{%- endif -%}"
    "{{- " + _jinja_str(IMAGE_TOKEN) + " -}}"
    "{%- if messages | length == 2 and messages[1]['content'] -%}{{- messages[1]['content'] + '\\n' -}}{%- endif -%}"
)


@dataclass(frozen=True)
class ChatTemplate:
    """One conversation format.

    name: the key configs and processors use (`InfLlavaConfig.template`).
    jinja: the template body for string contents; None: the tokenizer's own chat template.
    tokenizer_prefix: the text starts with what the tokenizer puts before any text (its BOS, when it
        adds one), as LLaVA's tokenization produced it; the rendered text then carries every special
        token and is tokenized without adding any (as transformers tokenizes chat templates). The
        official llama3 prompt so starts with two BOS tokens, as the released model was trained.
    stop_strings: texts that end an answer (their token ids join the generation's eos ids).
    keep_trailing_whitespace: the supervised span of an answer keeps the whitespace the template puts
        after it (plain: the caption's "\\n", which LLaVA supervises); otherwise it is stripped (a chat
        template's "\\n" after its end-of-turn token belongs to the next turn's rendering).
    max_messages: at most this many messages (plain: 2).
    images_per_sample: a training sample must hold exactly this many images (plain: 1); None: any.
    training_only: a format for a training stage, not for chatting (plain); a model trained in it chats in
        the template it had before (or `default_template_for` its tokenizer).
    description: one line for `--help` and errors.
    """

    name: str
    jinja: str | None
    stop_strings: tuple[str, ...] = ()
    tokenizer_prefix: bool = False
    keep_trailing_whitespace: bool = False
    max_messages: int | None = None
    images_per_sample: int | None = None
    training_only: bool = False
    description: str = ""


TEMPLATES: dict[str, ChatTemplate] = {}


def register_template(template: ChatTemplate) -> ChatTemplate:
    """Add a template to the registry (a name may be registered once)."""
    if template.name in TEMPLATES:
        raise ValueError(f"template {template.name!r} is already registered")
    TEMPLATES[template.name] = template
    return template


register_template(ChatTemplate(
    "llama3", _LLAMA3_JINJA, stop_strings=(LLAMA3_SEP, "<|end_of_text|>"), tokenizer_prefix=True,
    description="the official INF-LLaVA conversation (LLaVA MPT style with LLaMA-3 headers)",
))
register_template(ChatTemplate(
    "plain", _PLAIN_JINJA, stop_strings=("\n",), tokenizer_prefix=True, keep_trailing_whitespace=True,
    max_messages=2, images_per_sample=1, training_only=True,
    description="stage-1 captioning: <image> + caption + newline",
))
register_template(ChatTemplate(
    "chat_template", None, stop_strings=("<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<|endoftext|>"),
    description="the tokenizer's own chat template",
))


def get_template(name: str) -> ChatTemplate:
    """The registered template `name` (ValueError naming the choices)."""
    try:
        return TEMPLATES[name]
    except (KeyError, TypeError):
        raise ValueError(f"template must be one of {', '.join(TEMPLATES)}, got {name!r}") from None


def default_template_for(tokenizer: Any) -> str:
    """The conversation template a model with this tokenizer chats in, when nothing says otherwise: the
    official llama3 format for a LLaMA-3 tokenizer, else the tokenizer's own chat template, else llama3."""
    if tokenizer is not None and "<|eot_id|>" in tokenizer.get_vocab():
        return "llama3"
    return "chat_template" if getattr(tokenizer, "chat_template", None) else "llama3"


def template_names() -> tuple[str, ...]:
    return tuple(TEMPLATES)


def _body(template: ChatTemplate, tokenizer: Any) -> str:
    if template.jinja is not None:
        return template.jinja
    if tokenizer is None:
        raise ValueError(f"template={template.name!r} needs a tokenizer")
    own = getattr(tokenizer, "chat_template", None)
    if isinstance(own, Mapping):
        own = own.get("default")
    if not own:
        raise ValueError(
            f"template={template.name!r} but the tokenizer ({type(tokenizer).__name__}) has no chat template; "
            f"use template='llama3' or set tokenizer.chat_template"
        )
    # a tokenizer saved beside a processor reads the processor's template (chat_template.jinja) back
    return own[len(_CONTENT_PARTS_PREAMBLE):] if own.startswith(_CONTENT_PARTS_PREAMBLE) else own


# tokenizer -> its prefix text: every render asks, and training renders each sample several times
_PREFIXES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def tokenizer_prefix_text(tokenizer: Any) -> str:
    """The text of the tokens `tokenizer` puts before any text it encodes (e.g. "<|begin_of_text|>" for
    LLaMA-3, "<s>" for LLaMA-2; "" for SmolLM2, whose tokenizer adds nothing). Found once per tokenizer."""
    if tokenizer is None:
        return ""
    try:
        return _PREFIXES[tokenizer]
    except (KeyError, TypeError):
        pass
    plain = list(tokenizer("a", add_special_tokens=False)["input_ids"])
    full = list(tokenizer("a")["input_ids"])
    prefix = ""
    for start in range(len(full) - len(plain) + 1):
        if full[start: start + len(plain)] == plain:
            prefix = "".join(tokenizer.convert_ids_to_tokens(full[:start]))
            break
    try:
        _PREFIXES[tokenizer] = prefix
    except TypeError:  # an object that cannot be weakly referenced: not cached
        pass
    return prefix


def processor_chat_template(name: str, tokenizer: Any = None) -> str:
    """The Jinja chat template a processor of template `name` carries (and saves): content parts ->
    strings, the tokenizer's prefix where the template starts with it, then the template's body (the
    tokenizer's own for "chat_template"). Rendered by anyone (transformers, vLLM), it gives our text."""
    template = get_template(name)
    prefix = tokenizer_prefix_text(tokenizer) if template.tokenizer_prefix else ""
    return _CONTENT_PARTS_PREAMBLE + ("{{- " + _jinja_str(prefix) + " -}}" if prefix else "") + _body(template, tokenizer)


def content_text(content: Any) -> str:
    """A message content (str, None or a list of parts) as the text the templates render."""
    if content is None or isinstance(content, str):
        return content or ""
    items = []
    for part in content:
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind in ("image", "image_url"):
            items.append(IMAGE_TOKEN)
        elif kind == "text":
            items.append(part.get("text") or "")
        else:
            raise ValueError(f"a content part must be {{'type': 'text' | 'image', ...}}, got {part!r}")
    return "\n".join(items)


def validate_messages(messages: Sequence[Mapping[str, Any]]) -> None:
    """ValueError unless messages alternate user/assistant from user (after one optional system message),
    each with a role and a content."""
    if isinstance(messages, (str, Mapping)) or not isinstance(messages, Sequence) or len(messages) == 0:
        raise ValueError("messages must be a non-empty list of {'role', 'content'} dicts")
    system = 1 if isinstance(messages[0], Mapping) and messages[0].get("role") == "system" else 0
    if system and len(messages) == 1:
        raise ValueError("a system message must be followed by a user message")
    for i, msg in enumerate(messages):
        if not isinstance(msg, Mapping) or "role" not in msg or "content" not in msg:
            raise ValueError(f"message {i} must be a dict with 'role' and 'content', got {msg!r}")
        if i < system:
            continue
        expected = "user" if (i - system) % 2 == 0 else "assistant"
        if msg["role"] != expected:
            raise ValueError(
                f"messages must alternate user/assistant starting with user; message {i} has role "
                f"{msg['role']!r}, expected {expected!r}"
            )
        content = msg["content"]
        if content is not None and not isinstance(content, (str, list, tuple)):
            raise ValueError(f"message {i} content must be a string or a list of parts, got {type(content).__name__}")


def _special_tokens(tokenizer: Any) -> dict[str, str]:
    """bos_token, eos_token, ... as a chat template sees them (transformers passes the same)."""
    if tokenizer is None:
        return {}
    out = {}
    for key, value in (getattr(tokenizer, "special_tokens_map", None) or {}).items():
        if isinstance(value, str):
            out[key] = value
    return out


def render(
    messages: Sequence[Mapping[str, Any]],
    name: str = "llama3",
    tokenizer: Any = None,
    add_generation_prompt: bool = True,
) -> str:
    """The prompt text of a conversation in template `name`.

    `add_generation_prompt`: when the last message is from the user, end with the assistant's turn opener;
    a conversation ending with an assistant message is complete and nothing is appended.
    """
    from transformers.utils.chat_template_utils import render_jinja_template

    validate_messages(messages)
    template = get_template(name)
    if template.max_messages is not None and len(messages) > template.max_messages:
        raise ValueError(
            f"the {name!r} template is single-turn: it takes at most {template.max_messages} messages; "
            f"got {len(messages)}" if template.max_messages <= 2 else
            f"the {name!r} template takes at most {template.max_messages} messages; got {len(messages)}"
        )
    chat = [{"role": m["role"], "content": content_text(m["content"])} for m in messages]
    generate = add_generation_prompt and messages[-1]["role"] == "user"
    rendered, _ = render_jinja_template(
        conversations=[chat], chat_template=processor_chat_template(name, tokenizer), add_generation_prompt=generate,
        **_special_tokens(tokenizer),
    )
    return rendered[0]


def render_with_content_spans(
    messages: Sequence[Mapping[str, Any]],
    name: str = "llama3",
    tokenizer: Any = None,
    add_generation_prompt: bool = True,
) -> tuple[str, list[tuple[int, int]] | None]:
    """`render(...)` and the (start, end) character span of every message's content in it: the text that
    came from the conversation, not from the template, whose special-token strings must stay text (a
    user writing "<|im_end|>" must not end the turn). The spans are found by rendering the conversation
    with a sentinel for each content; None when the template transforms contents (e.g. trims them), so
    that the sentinels do not map back exactly."""
    text = render(messages, name, tokenizer, add_generation_prompt)
    contents = [content_text(m.get("content")) for m in messages]
    marks = [f"\ue000{i}\ue001" for i in range(len(messages))]
    try:
        skeleton = render([dict(m, content=mark) for m, mark in zip(messages, marks)], name, tokenizer,
                          add_generation_prompt)
    except Exception:  # noqa: BLE001 - a template that inspects its contents: no spans
        return text, None
    pieces, spans, cursor, length = [], [], 0, 0
    for match in re.finditer("\ue000(\\d+)\ue001", skeleton):
        head = skeleton[cursor: match.start()]
        pieces.append(head)
        length += len(head)
        content = contents[int(match.group(1))]
        pieces.append(content)
        spans.append((length, length + len(content)))
        length += len(content)
        cursor = match.end()
    pieces.append(skeleton[cursor:])
    return (text, spans) if "".join(pieces) == text else (text, None)


def with_image_placeholders(messages: Sequence[Mapping[str, Any]], num_images: int) -> list[dict[str, Any]]:
    """The messages with one "<image>\n" per image before the first user message's content when images
    come with a conversation that has no placeholder (LLaVA's convention for one image); unchanged
    otherwise. The messages given are not modified."""
    msgs = [dict(m) for m in messages]
    if num_images < 1 or any(content_text(m.get("content")).count(IMAGE_TOKEN) for m in msgs):
        return msgs
    first = next((i for i, m in enumerate(msgs) if m.get("role") == "user"), None)
    if first is None:
        return msgs
    content = msgs[first].get("content")
    if isinstance(content, (list, tuple)):
        msgs[first]["content"] = [{"type": "image"}] * num_images + list(content)
    else:
        msgs[first]["content"] = (IMAGE_TOKEN + "\n") * num_images + (content or "")
    return msgs


def first_user_content_offset(prompt: str, name: str, tokenizer: Any = None) -> int:
    """Where the first user message's content starts in `prompt`, a text this template rendered with its
    default system text (0 when the prompt does not start as the template's renderings do)."""
    sentinel = "\x00infllava\x00"
    head = render([{"role": "user", "content": sentinel}], name, tokenizer, add_generation_prompt=False)
    head = head[: head.index(sentinel)]
    return len(head) if prompt.startswith(head) else 0


def supervised_spans(
    messages: Sequence[Mapping[str, Any]], name: str, tokenizer: Any = None
) -> tuple[str, list[tuple[int, int]]]:
    """(text of the whole conversation, [(start, end) character spans of what training supervises]).

    An answer's span is what its message adds to the rendering of the conversation up to it with the
    generation prompt: for llama3 the answer + "<|eot_id|>", for plain the caption + "\\n", for a chat
    template the answer + its end-of-turn token. The template must be prefix-stable (rendering the first
    k messages is a prefix of rendering them all); ValueError otherwise.
    """
    template = get_template(name)
    text = render(messages, name, tokenizer, add_generation_prompt=False)
    spans: list[tuple[int, int]] = []
    for k, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        before = render(messages[:k], name, tokenizer, add_generation_prompt=True)  # ends with a user turn
        upto = render(messages[: k + 1], name, tokenizer, add_generation_prompt=False)
        if not (text.startswith(upto) and upto.startswith(before)):
            raise ValueError(
                f"the {name!r} template is not prefix-stable: rendering the first {k} / {k + 1} messages is "
                f"not a prefix of rendering the whole conversation, so the answer of turn {k} cannot be "
                f"located (use template 'llama3', or a template whose rendering only appends)"
            )
        end = len(upto) if template.keep_trailing_whitespace else len(upto.rstrip())
        if end > len(before):
            spans.append((len(before), end))
    return text, spans


def stop_token_ids(name: str, tokenizer: Any) -> list[int]:
    """Token ids of the template's stop strings that are single tokens of `tokenizer`."""
    vocab = tokenizer.get_vocab()
    return sorted({vocab[s] for s in get_template(name).stop_strings if s in vocab})


def first_stop(text: str, stops: Sequence[str]) -> int | None:
    """Where the first of the stop strings `stops` occurs in `text` (None: none does)."""
    hits = [text.find(s) for s in stops if s and s in text]
    return min(hits) if hits else None
