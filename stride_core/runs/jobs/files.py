"""What a job keeps in its run folder (job.json, job.log, prompts.jsonl), the states a status can be in, the
result files, and small JSON helpers that write by rename.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path


logger = logging.getLogger(__name__)


JOB_FILE = "job.json"


LOG_FILE = "job.log"


PROMPTS_FILE = "prompts.jsonl"


TERMINAL_STATES = ("done", "failed", "cancelled")


ACTIVE_STATES = ("queued", "running")


RESULT_FILES = {
    "attributions": "attributions.parquet",
    "contamination": "contamination.parquet",
    "selection": "selection.parquet",
    "generic": "generic.parquet",  # documents that help every prompt alike (stride_core.method.generic)
}


AUDIT_KINDS = {"contamination": "--benchmark", "select": "--target"}


AUDIT_JOB_FILE = "audit_job.json"


AUDIT_LOG_FILE = "audit.log"
PRESETS = ("ci", "default")


MAX_PROMPTS = 10_000


# A queued run whose launcher has not recorded a pid yet is given this long before it counts as dead.
_QUEUED_GRACE_S = 30.0


def log_tail(run_dir: Path, n_lines: int = 30, max_chars: int = 4000) -> str:
    p = Path(run_dir) / LOG_FILE
    if not p.exists():
        return ""
    try:
        with open(p, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64_000))
            data = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    text = "\n".join(data.splitlines()[-n_lines:])
    return text[-max_chars:]


def _read_json(p: Path) -> dict:
    try:
        obj = json.loads(p.read_text(encoding="utf-8"))
        return obj if isinstance(obj, dict) else {}
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return {}


def _write_json(p: Path, obj: dict) -> None:
    tmp = p.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1, default=str), encoding="utf-8")
    os.replace(tmp, p)
