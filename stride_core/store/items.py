"""Evaluation items for the audits: a benchmark (contamination) or a target set (data selection).

A file is JSONL (one object per line with a string `text`, or `prompt`, or the fields named by
`text_fields`; optional `item_id` or `id`), JSON (a list of such objects) or .txt (one item per line).
Reading validates everything before any work starts, so a bad file costs nothing."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError


@dataclass(frozen=True)
class Item:
    item_id: str
    text: str
    segments: tuple[str, ...] = ()  # the named fields' texts, when the text joins several (kept apart by the overlap scan)


def read_items(path, what: str = "benchmark", max_items: int = 100_000, max_chars: int = 100_000,
               text_fields: str | list[str] | None = None) -> list[Item]:
    """Items of a .jsonl, .json (a list of objects) or .txt file. `text_fields` names the field(s) whose
    values make an item's text (comma-separated or a list; several are joined with newlines, a list
    value such as multiple-choice options with spaces); by default `text`, else `prompt`. Raises
    InputError (with the line or entry number) on a missing, empty, non-UTF-8 or corrupt file, a
    missing/non-string text field, a duplicate item_id, more than `max_items` items or an item over
    `max_chars` characters."""
    p = Path(path)
    return parse_items(read_text_file(p, what), file_kind(p), p, what, max_items, max_chars, text_fields)


def parse_items(raw: str, suffix: str, where="items", what: str = "benchmark", max_items: int = 100_000,
                max_chars: int = 100_000, text_fields: str | list[str] | None = None) -> list[Item]:
    """The content of an items file (`suffix` .jsonl, .json or .txt), validated as `read_items` does."""
    p = Path(str(where))
    fields = _field_list(text_fields)
    items: list[Item] = []
    if suffix in (".jsonl", ".json"):
        for where, obj in json_records(p, raw, suffix):
            if not isinstance(obj, dict):
                raise InputError(f"{where}: each item must be a JSON object with a string field 'text'")
            segments = _item_fields(obj, fields, where)
            text = "\n".join(segments)
            item_id = obj.get("item_id", obj.get("id", f"item{len(items):05d}"))
            if not isinstance(item_id, (str, int)) or isinstance(item_id, bool):
                raise InputError(f"{where}: item_id must be a string or an integer")
            items.append(Item(str(item_id), text, tuple(segments) if len(segments) > 1 else ()))
            _check_size(p, items, max_items, max_chars, what)
    elif suffix == ".txt":
        if fields:
            raise InputError(f"{p}: --text-field applies to .jsonl/.json files; a .txt file has one item per line")
        for lineno, line in enumerate(raw.splitlines(), 1):
            if line.strip():
                items.append(Item(f"item{len(items):05d}", line))
                _check_size(p, items, max_items, max_chars, what)
    else:
        raise InputError(f"{p}: a {what} file must be .jsonl (fields 'item_id', 'text'), .json (a list of such "
                         f"objects) or .txt (one item per line)")
    blank = [it.item_id for it in items if not it.text.strip()]
    if blank:
        raise InputError(f"{p}: items with empty text: {', '.join(blank[:10])}")
    if not items:
        raise InputError(f"{p}: the {what} file has no items")
    seen: set[str] = set()
    dup = [it.item_id for it in items if it.item_id in seen or seen.add(it.item_id)]
    if dup:
        raise InputError(f"{p}: duplicate item_id values: {', '.join(sorted(set(dup))[:10])}")
    return items


# Pasted items (the dashboard's audit text boxes): copied documents hold single line breaks, so the default
# separator is a blank line; JSONL (every non-empty line a JSON object) is recognised; one-per-line on request.
PASTE_MODES = {"auto": "detect: JSONL when every line is a JSON object, else separated by a blank line",
               "blank": "separated by a blank line", "jsonl": "JSONL (one JSON object per line)",
               "lines": "one per line"}


def detect_paste_mode(text: str) -> str:
    """"jsonl" when every non-empty line parses as a JSON object, else "blank"."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if lines and all(line.startswith("{") for line in lines):
        try:
            if all(isinstance(json.loads(line), dict) for line in lines):
                return "jsonl"
        except json.JSONDecodeError:
            pass
    return "blank"


def split_blocks(text: str) -> list[str]:
    """Paragraphs: runs of non-blank lines, separated by one or more blank (or whitespace-only) lines."""
    blocks, cur = [], []
    for line in text.splitlines():
        if line.strip():
            cur.append(line.rstrip())
        elif cur:
            blocks.append("\n".join(cur).strip())
            cur = []
    if cur:
        blocks.append("\n".join(cur).strip())
    return blocks


def parse_pasted(text: str, mode: str = "auto", what: str = "benchmark",
                 text_fields: str | list[str] | None = None) -> tuple[str, list[Item], str]:
    """Pasted items -> (the mode used, the items, the same items as a file's content in that mode's format:
    JSONL for "jsonl", else one JSON object per item) so the audit job reads exactly what was counted."""
    if mode not in PASTE_MODES:
        raise InputError(f"unknown paste mode {mode!r}: use one of {', '.join(PASTE_MODES)}")
    used = detect_paste_mode(text) if mode == "auto" else mode
    if used == "jsonl":
        return used, parse_items(text, ".jsonl", "pasted JSONL", what, text_fields=text_fields), text
    if text_fields:
        raise InputError("the text field(s) apply to JSONL; pasted text is taken as it is")
    texts = split_blocks(text) if used == "blank" else [line.strip() for line in text.splitlines() if line.strip()]
    raw = "\n".join(json.dumps({"item_id": f"item{i:05d}", "text": t}, ensure_ascii=False) for i, t in enumerate(texts))
    return used, parse_items(raw, ".jsonl", f"pasted {what} items", what), raw


def _field_list(text_fields) -> list[str]:
    if text_fields is None:
        return []
    out = [f.strip() for f in (text_fields.split(",") if isinstance(text_fields, str) else text_fields)]
    if not out or not all(out):
        raise InputError(f"--text-field {text_fields!r}: give one field name or several separated by commas")
    return out


def file_kind(name) -> str:
    """The lowercased suffix of a prompts/items file name, with .ndjson read as .jsonl."""
    suffix = Path(str(name)).suffix.lower()
    return ".jsonl" if suffix == ".ndjson" else suffix


def json_records(p: Path, raw: str, suffix: str):
    """(where, object) for each JSONL line or each entry of a JSON list."""
    if suffix == ".json":
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise InputError(f"{p}: corrupt JSON ({exc.msg} at line {exc.lineno})") from exc
        if not isinstance(data, list):
            raise InputError(f"{p}: a .json file must hold a list of objects (use .jsonl for one object per line)")
        for i, obj in enumerate(data, 1):
            yield f"{p}: entry {i}", obj
        return
    for lineno, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield f"{p}:{lineno}", json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{p}:{lineno}: corrupt JSON line ({exc.msg})") from exc


def _item_fields(obj: dict, fields: list[str], where: str) -> list[str]:
    if not fields:
        text = obj.get("text", obj.get("prompt"))
        if not isinstance(text, str):
            raise InputError(f"{where}: each item needs a string field 'text' (or 'prompt', or name yours with "
                             f"--text-field); found fields {sorted(obj)}")
        return [text]
    parts = []
    for f in fields:
        if f not in obj:
            raise InputError(f"{where}: no field {f!r} (found fields {sorted(obj)})")
        v = obj[f]
        if isinstance(v, list) and all(isinstance(x, (str, int, float)) and not isinstance(x, bool) for x in v):
            v = " ".join(str(x) for x in v)
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            v = str(v)
        if not isinstance(v, str):
            raise InputError(f"{where}: field {f!r} is {type(v).__name__}, not text")
        parts.append(v)
    return parts


def read_text_file(path, what: str) -> str:
    """A user's input file as text; InputError when it is missing or not UTF-8."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such {what} file")
    try:
        return p.read_text(encoding="utf-8-sig")  # a leading byte-order mark (Windows editors) is dropped
    except UnicodeDecodeError as exc:
        raise InputError(f"{p}: not valid UTF-8 text (byte {exc.start}); re-encode the {what} file as UTF-8") from exc


def _check_size(p: Path, items: list[Item], max_items: int, max_chars: int, what: str):
    if len(items) > max_items:
        raise InputError(f"{p}: more than {max_items} items; split the {what} file into smaller files")
    if len(items[-1].text) > max_chars:
        raise InputError(f"{p}: item {items[-1].item_id!r} has {len(items[-1].text)} characters, over the limit of "
                         f"{max_chars}; an item should be one question or example, not a document collection")
