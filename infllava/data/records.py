"""LLaVA-format records: reading record files and turning one record into chat messages.

A record (LLaVA's data format)::

    {"id": "000123", "image": "coco/train2017/000000123.jpg",      # optional; or a list of paths
     "conversations": [{"from": "human", "value": "<image>\\nWhat is shown?"},
                       {"from": "gpt", "value": "A cat."}, ...]}

* `load_records` / `scan_records`: a JSON list or JSONL (detected from the content), with per-line /
  per-record problems reported instead of crashing on the first bad line.
* `resolve_image_path`: a record's image path relative to an image folder.
* `record_image_paths`: the "image" field as a list of paths.
* `to_messages`: roles "human"/"gpt" (or "user"/"assistant") -> alternating user/assistant messages,
  with the checks a sample needs (alternation, empty answers, placeholders vs images). An image
  record whose text has no "<image>" gets "<image>\\n" at the start of its first user turn.
* Problems with one record raise `SampleError` with a machine-usable `.kind` (`SAMPLE_ERROR_KINDS`;
  the kinds "truncated" and "empty" are raised by the tokenization of `training.labels`).

Training (`training.data`, `training.labels`) and evaluation (`evaluation.evaluate`) both read
records through this module.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..templates import IMAGE_PLACEHOLDER

__all__ = [
    "SAMPLE_ERROR_KINDS",
    "SampleError",
    "load_records",
    "scan_records",
    "resolve_image_path",
    "record_image_paths",
    "to_messages",
    "check_alternation",
]

SAMPLE_ERROR_KINDS = (
    "placeholder_mismatch",
    "not_alternating",
    "empty_answer",
    "truncated",
    "empty",
    "bad_record",
)

_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


class SampleError(ValueError):
    """A training sample that cannot be used. `kind` is one of `SAMPLE_ERROR_KINDS`."""

    def __init__(self, kind: str, message: str) -> None:
        if kind not in SAMPLE_ERROR_KINDS:
            raise ValueError(f"unknown SampleError kind {kind!r}; expected one of {SAMPLE_ERROR_KINDS}")
        super().__init__(message)
        self.kind = kind
        self.message = message

    def __reduce__(self):  # picklable across DataLoader worker processes
        return (type(self), (self.kind, self.message))


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def _record_problem(record: Any, index: int) -> str | None:
    """Why `record` is not a usable record (None if it is one)."""
    if not isinstance(record, dict):
        return f"record {index} is not a JSON object ({type(record).__name__})"
    if not isinstance(record.get("conversations"), list):
        rid = record.get("id", index)
        return f"record {rid!r} has no 'conversations' list"
    return None


# Parsing JSON in Python holds the text and its objects at once: several times the file's size.
PARSE_MEMORY_FACTOR = 4


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux MemAvailable); None where unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def check_fits_in_memory(path: Path) -> None:
    """ValueError naming a data file too large to parse in the memory this machine has free (it would
    otherwise be killed for memory after a long wait)."""
    try:
        size = path.stat().st_size
    except OSError:
        return  # reading it reports the problem
    free = available_memory()
    if free is not None and size * PARSE_MEMORY_FACTOR > free:
        raise ValueError(f"{path} is {size / 2**30:.1f} GiB; parsing it needs about {PARSE_MEMORY_FACTOR}x that and "
                         f"this machine has {free / 2**30:.1f} GiB available: split it into smaller files")


def scan_records(path: str | os.PathLike) -> tuple[list[dict], list[tuple[str, Any, str]]]:
    """`load_records` with the kind of each problem: (records, [(kind, where, message)]), kind
    "malformed" (a JSONL line that does not parse) or "bad_record" (an entry that is not an object
    with a "conversations" list); `where` is the entry's id when it has one, else "line N" /
    "record N". Raises as `load_records`."""
    path = Path(path)
    check_fits_in_memory(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc})") from exc
    except MemoryError:
        raise ValueError(f"{path}: too large to read into this machine's memory; split it into smaller files") from None
    except IsADirectoryError:
        raise ValueError(f"{path} is a directory, not a data file (.json or .jsonl)") from None
    stripped = text.lstrip()
    if not stripped:
        return [], []

    entries: list[tuple[str, Any]] = []  # (where, parsed object)
    problems: list[tuple[str, Any, str]] = []
    whole: Any = None
    whole_error: json.JSONDecodeError | None = None
    try:
        whole = json.loads(text)
    except json.JSONDecodeError as exc:
        whole_error = exc

    if whole_error is None and isinstance(whole, list):
        entries = [(f"record {i}", obj) for i, obj in enumerate(whole)]
    elif whole_error is None and isinstance(whole, dict):
        entries = [("record 0", whole)]  # a one-line JSONL, or a single pretty-printed record
    elif whole_error is None:
        raise ValueError(f"{path}: expected a JSON list of records or JSONL, got a JSON {type(whole).__name__}")
    else:
        # Not one JSON document. A list that does not parse is a broken .json file; otherwise read it
        # as JSONL, unless nothing in it looks like a JSONL line.
        # split on "\n" only: str.splitlines would also split on U+2028 etc., which JSON strings
        # written with ensure_ascii=False may hold raw
        lines = [ln[:-1] if ln.endswith("\r") else ln for ln in text.split("\n")]
        head = [ln for ln in lines[:200] if ln.strip()][:20]
        looks_jsonl = stripped[0] != "[" and any(_parses_as_object(ln) for ln in head)
        if not looks_jsonl:
            raise ValueError(
                f"{path}: not valid JSON (line {whole_error.lineno}, column {whole_error.colno}: "
                f"{whole_error.msg}) and not JSONL"
            )
        for lineno, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"line {lineno}"
            try:
                entries.append((where, json.loads(line)))
            except json.JSONDecodeError as exc:
                entries.append((where, _Malformed(f"{where}: invalid JSON ({exc.msg}, column {exc.colno})")))

    records: list[dict] = []
    for index, (where, obj) in enumerate(entries):
        if isinstance(obj, _Malformed):
            problems.append(("malformed", where, obj.message))
            continue
        why = _record_problem(obj, index)
        if why is not None:
            problems.append(("bad_record", _where_id(obj, index, where), f"{where}: {why}"))
            continue
        if "id" not in obj or obj["id"] is None:
            obj["id"] = index
        records.append(obj)
    return records, problems


class _Malformed:
    def __init__(self, message: str) -> None:
        self.message = message


def _parses_as_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except json.JSONDecodeError:
        return False


def _where_id(obj: Any, index: int, where: str) -> Any:
    """The id under which a bad entry is reported: its own id when it has one, else where it is."""
    if isinstance(obj, dict) and obj.get("id") is not None:
        return obj["id"]
    return where


def load_records(path: str | os.PathLike) -> tuple[list[dict], list[tuple[str, str]]]:
    """Read a data file: a JSON list of records, or JSONL (one record per line).

    The format is detected from the content (a file that parses as one JSON list is a list; else it
    is read line by line), not the extension. Returns (records, problems):
        * records: the usable dicts (each has a "conversations" list); a record without "id" gets
          its 0-based index in the file (entries, blank lines not counted) as id;
        * problems: (where, message) for each malformed JSONL line ("line 17", ...) and each entry
          that is not an object with a "conversations" list (named by its id, or its position).
    Raises ValueError naming the file and the position when the file is neither valid JSON nor JSONL
    (e.g. a broken JSON list), and OSError when it cannot be read.
    """
    records, problems = scan_records(path)
    return records, [(str(where), message) for _, where, message in problems]


def resolve_image_path(path: str, image_root: str | os.PathLike | None) -> str:
    """`image_root / path`; absolute paths (and image_root None) are used as they are."""
    if image_root is None or os.path.isabs(path):
        return path
    return os.path.join(os.fspath(image_root), path)


# --------------------------------------------------------------------------------------------
# Records -> messages
# --------------------------------------------------------------------------------------------


def record_image_paths(record: Mapping[str, Any]) -> list[str]:
    """The image paths of a record: [] (no "image" / None), [path] or the list given.

    Raises SampleError("bad_record") for anything else (a number, an empty string, a list holding a
    non-string ...).
    """
    image = record.get("image")
    if image is None:
        return []
    items = [image] if isinstance(image, str) else image
    if not isinstance(items, list) or not all(isinstance(p, str) and p.strip() for p in items):
        raise SampleError("bad_record", f"'image' must be a path or a list of paths, got {image!r}")
    return list(items)


def to_messages(record: Mapping[str, Any]) -> list[dict[str, str]]:
    """A LLaVA record -> [{"role": "user" | "assistant", "content": str}, ...].

    Checks, in order (each failure raises `SampleError` of the given kind):
        * bad_record: no "conversations" list, a turn that is not a dict with "from"/"value" (or
          "role"/"content"), an unknown role, a non-string value, a malformed "image" field;
        * not_alternating: the turns do not start with user, alternate, and end with assistant;
        * empty_answer: an assistant answer that is empty or only whitespace;
        * placeholder_mismatch: the number of "<image>" in all turns differs from the number of
          images of the record. Exception (LLaVA's behaviour): an image record with no placeholder at
          all gets "<image>\\n" put at the start of its first user turn.
    The record is not modified.
    """
    if not isinstance(record, Mapping):
        raise SampleError("bad_record", f"a record must be a JSON object, got {type(record).__name__}")
    turns = record.get("conversations")
    if not isinstance(turns, list):
        raise SampleError("bad_record", "the record has no 'conversations' list")
    if not turns:
        raise SampleError("bad_record", "'conversations' is empty")
    messages: list[dict[str, str]] = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, Mapping):
            raise SampleError("bad_record", f"turn {i} is not an object: {turn!r}")
        role_key = "from" if "from" in turn else "role"
        value_key = "value" if "value" in turn else "content"
        if role_key not in turn or value_key not in turn:
            raise SampleError("bad_record", f"turn {i} needs 'from' and 'value' keys, got {sorted(turn)}")
        raw_role = turn[role_key]
        role = _ROLES.get(raw_role.lower() if isinstance(raw_role, str) else raw_role)
        if role is None:
            raise SampleError(
                "bad_record", f"turn {i} has role {raw_role!r}; expected 'human'/'gpt' (or 'user'/'assistant')"
            )
        content = turn[value_key]
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise SampleError("bad_record", f"turn {i} value must be a string, got {type(content).__name__}")
        messages.append({"role": role, "content": content})

    check_alternation(messages)
    for i, msg in enumerate(messages):
        if msg["role"] == "assistant" and not msg["content"].strip():
            raise SampleError("empty_answer", f"the assistant answer in turn {i} is empty")

    images = record_image_paths(record)
    count = sum(m["content"].count(IMAGE_PLACEHOLDER) for m in messages)
    if images and count == 0:
        messages[0]["content"] = IMAGE_PLACEHOLDER + "\n" + messages[0]["content"]
    elif count != len(images):
        raise SampleError(
            "placeholder_mismatch",
            f"the conversation has {count} '{IMAGE_PLACEHOLDER}' placeholder(s) but the record has "
            f"{len(images)} image(s)",
        )
    return messages


def check_alternation(messages: Sequence[Mapping[str, Any]]) -> None:
    """Raise SampleError("not_alternating") unless the messages go user, assistant, user, ...,
    assistant (at least one pair)."""
    if not messages:
        raise SampleError("not_alternating", "the conversation has no messages")
    roles = [m.get("role") for m in messages]
    for i, role in enumerate(roles):
        expected = "user" if i % 2 == 0 else "assistant"
        if role != expected:
            raise SampleError(
                "not_alternating",
                f"turns must alternate user/assistant starting with user; turn {i} is {role!r} "
                f"(roles: {_short_roles(roles)})",
            )
    if roles[-1] != "assistant":
        raise SampleError(
            "not_alternating",
            f"the conversation must end with an assistant answer (roles: {_short_roles(roles)})",
        )


def _short_roles(roles: Sequence[Any]) -> str:
    names = [{"user": "U", "assistant": "A"}.get(r, str(r)) for r in roles]
    return " ".join(names[:12]) + (" ..." if len(names) > 12 else "")
