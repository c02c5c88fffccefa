"""A job's prompts: pasted text (one per line), an uploaded or local .txt / .jsonl / .json file, normalised to
{"prompt_id", "prompt"[, "completion"]} objects.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ...errors import InputError
from .files import MAX_PROMPTS

logger = logging.getLogger(__name__)


def parse_prompts_text(text: str) -> list[str]:
    """One prompt per non-empty line (a .txt upload or the text area)."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def parse_prompt_upload(raw: str, filename: str) -> list[dict]:
    """An uploaded prompts file's content (.txt, .jsonl or .json by `filename`, read as `stride run
    --prompts` reads a file) -> [{"prompt", "prompt_id"[, "completion"]}]."""
    from ...store.items import file_kind
    from ..prompts import parse_prompts

    kind = file_kind(filename)
    suffix = kind if kind in (".jsonl", ".json") else ".txt"
    return [_record(r) for r in parse_prompts(raw, suffix, filename)]


def load_prompt_file(path: str | Path) -> list[dict]:
    """Prompts from a .txt, .jsonl or .json file (`pipeline.read_prompts`) -> [{"prompt", "prompt_id"[, "completion"]}]."""
    from ..prompts import read_prompts

    return [_record(r) for r in read_prompts(path)]


def _record(r: dict) -> dict:
    """A `read_prompts` record as a job's prompt: its completion (the text to attribute) travels with it."""
    rec = {"prompt": r["prompt"].strip(), "prompt_id": r["query_id"]}
    if r.get("completion") is not None:
        rec["completion"] = r["completion"]
    return rec


def normalise_prompts(prompts) -> list[dict]:
    """Strings or {"prompt", "prompt_id"?, "completion"?} dicts -> [{"prompt_id", "prompt"[, "completion"]}] with
    unique ids. A completion is the text to attribute under teacher forcing instead of the model's own
    continuation; an empty one (e.g. a blank completion box) means "let the model continue"."""
    recs = []
    for i, p in enumerate(prompts):
        if isinstance(p, str):
            rec = {"prompt": p}
        elif isinstance(p, dict) and isinstance(p.get("prompt"), str):
            rec = dict(p)
        else:
            raise InputError(f"prompt {i + 1} is neither a string nor an object with a 'prompt' string")
        rec["prompt"] = rec["prompt"].strip()
        completion = rec.pop("completion", None)
        if completion is not None and not isinstance(completion, str):
            raise InputError(f"prompt {i + 1}: 'completion' must be a string (the text to attribute), not {type(completion).__name__}")
        if completion is not None and completion.strip():
            rec["completion"] = completion
        if not rec["prompt"]:
            continue
        recs.append(rec)
    if not recs:
        raise InputError("the prompt list is empty: give at least one non-empty prompt")
    if len(recs) > MAX_PROMPTS:
        raise InputError(f"{len(recs)} prompts is more than the {MAX_PROMPTS} one run accepts: split them into several runs")
    width = max(2, len(str(len(recs) - 1)))
    seen = set()
    out = []
    for i, rec in enumerate(recs):
        pid = str(rec.get("prompt_id") or f"q{i:0{width}d}")
        if pid in seen:
            pid = f"{pid}-{i}"
        seen.add(pid)
        out.append({"prompt_id": pid, "prompt": rec["prompt"], **({"completion": rec["completion"]} if "completion" in rec else {})})
    return out
