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
    --prompts` reads a file) -> [{"prompt", "prompt_id"}]."""
    from ...store.items import file_kind
    from ..prompts import parse_prompts

    kind = file_kind(filename)
    suffix = kind if kind in (".jsonl", ".json") else ".txt"
    return [{"prompt": r["prompt"].strip(), "prompt_id": r["query_id"]} for r in parse_prompts(raw, suffix, filename)]


def load_prompt_file(path: str | Path) -> list[dict]:
    """Prompts from a .txt, .jsonl or .json file (`pipeline.read_prompts`) -> [{"prompt", "prompt_id"}]."""
    from ..prompts import read_prompts

    return [{"prompt": r["prompt"].strip(), "prompt_id": r["query_id"]} for r in read_prompts(path)]


def normalise_prompts(prompts) -> list[dict]:
    """Strings or {"prompt", "prompt_id"?} dicts -> [{"prompt_id", "prompt"}] with unique ids."""
    recs = []
    for i, p in enumerate(prompts):
        if isinstance(p, str):
            rec = {"prompt": p}
        elif isinstance(p, dict) and isinstance(p.get("prompt"), str):
            rec = dict(p)
        else:
            raise InputError(f"prompt {i + 1} is neither a string nor an object with a 'prompt' string")
        rec["prompt"] = rec["prompt"].strip()
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
        out.append({"prompt_id": pid, "prompt": rec["prompt"]})
    return out
