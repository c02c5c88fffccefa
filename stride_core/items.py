"""Evaluation items for the audits: a benchmark (contamination) or a target set (data selection).

A file is JSONL (one object per line with a string `text`, or `prompt`; optional `item_id`) or .txt
(one item per line). Reading validates everything before any work starts, so a bad file costs nothing."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError


@dataclass(frozen=True)
class Item:
    item_id: str
    text: str


def read_items(path, what: str = "benchmark", max_items: int = 100_000, max_chars: int = 100_000) -> list[Item]:
    """Items of a .jsonl or .txt file. Raises InputError (with the line number) on a missing, empty,
    non-UTF-8 or corrupt file, a missing/non-string text field, a duplicate item_id, more than
    `max_items` items or an item over `max_chars` characters."""
    p = Path(path)
    raw = read_text_file(p, what)
    suffix = p.suffix.lower()
    items: list[Item] = []
    if suffix == ".jsonl":
        for lineno, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{p}:{lineno}: corrupt JSON line ({exc.msg})") from exc
            if not isinstance(obj, dict):
                raise InputError(f"{p}:{lineno}: each line must be a JSON object with a string field 'text'")
            text = obj.get("text", obj.get("prompt"))
            if not isinstance(text, str):
                raise InputError(f"{p}:{lineno}: each line needs a string field 'text' (or 'prompt'); found fields {sorted(obj)}")
            item_id = obj.get("item_id", obj.get("id", f"item{len(items):05d}"))
            if not isinstance(item_id, (str, int)) or isinstance(item_id, bool):
                raise InputError(f"{p}:{lineno}: item_id must be a string or an integer")
            items.append(Item(str(item_id), text))
            _check_size(p, items, max_items, max_chars, what)
    elif suffix == ".txt":
        for lineno, line in enumerate(raw.splitlines(), 1):
            if line.strip():
                items.append(Item(f"item{len(items):05d}", line))
                _check_size(p, items, max_items, max_chars, what)
    else:
        raise InputError(f"{p}: a {what} file must be .jsonl (fields 'item_id', 'text') or .txt (one item per line)")
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


def read_text_file(path, what: str) -> str:
    """A user's input file as text; InputError when it is missing or not UTF-8."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such {what} file")
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{p}: not valid UTF-8 text (byte {exc.start}); re-encode the {what} file as UTF-8") from exc


def _check_size(p: Path, items: list[Item], max_items: int, max_chars: int, what: str):
    if len(items) > max_items:
        raise InputError(f"{p}: more than {max_items} items; split the {what} file into smaller files")
    if len(items[-1].text) > max_chars:
        raise InputError(f"{p}: item {items[-1].item_id!r} has {len(items[-1].text)} characters, over the limit of "
                         f"{max_chars}; an item should be one question or example, not a document collection")
