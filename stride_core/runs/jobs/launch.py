"""Starting jobs: a run (index + attribute), an audit over a finished run, the demo; each a detached
`python -m stride_core.runs.jobs exec ...` process in its own session (see the package docstring).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from ...errors import InputError, RunError
from ..progress import RunStatus, read_status, write_status
from ...store.workspace import Workspace, validate_name
from ..demo import sample_prompts_path
from .files import (ACTIVE_STATES, AUDIT_JOB_FILE, AUDIT_KINDS, AUDIT_LOG_FILE, JOB_FILE, LOG_FILE, PRESETS, PROMPTS_FILE,
                    _read_json, _write_json)
from .processes import _proc_start_ticks, job_alive
from .inputs import load_prompt_file, normalise_prompts
from .status import list_runs

logger = logging.getLogger(__name__)


def run_command(ws: Workspace, run: str, corpus: str, model: str | Path, prompts_file: Path, preset: str,
                device: str = "auto", shards: list[int] | None = None, extra_args: list[str] | None = None) -> list[str]:
    """The engine command a job runs (index + attribute in one process, updating status.json)."""
    cmd = [sys.executable, "-m", "stride_core.cli", "--workspace", str(ws.root), "--no-progress", "run",
           "--run", run, "--corpus", corpus, "--model", str(model), "--prompts", str(prompts_file),
           "--preset", preset, "--device", device]
    if shards:
        cmd += ["--shards", ",".join(str(int(s)) for s in shards)]
    return cmd + list(extra_args or [])


def _engine_probe() -> tuple[bool, str]:
    """(whether `stride run` exists, its --help text), from one subprocess."""
    try:
        res = subprocess.run([sys.executable, "-m", "stride_core.cli", "run", "--help"], capture_output=True,
                             text=True, timeout=120, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, str(exc)
    return res.returncode == 0, (res.stdout if res.returncode == 0 else res.stderr)


_probe_lock = threading.Lock()


_probe: dict = {"thread": None, "result": None}


def engine_status(wait_s: float = 0.0) -> tuple[bool, str] | None:
    """Probe for the engine's `stride run` once per process, in a background thread (importing the engine
    can take seconds): the result, or None while the probe still runs after `wait_s` seconds."""
    with _probe_lock:
        if _probe["result"] is None and _probe["thread"] is None:
            def work():
                _probe["result"] = _engine_probe()

            _probe["thread"] = threading.Thread(target=work, name="stride-engine-probe", daemon=True)
            _probe["thread"].start()
        thread = _probe["thread"]
    if _probe["result"] is None and wait_s > 0 and thread is not None:
        thread.join(wait_s)
    return _probe["result"]


def engine_available(wait_s: float = 0.0) -> bool | None:
    """Whether the engine's `stride run` (the command every job runs) is installed; None: not known yet."""
    res = engine_status(wait_s)
    return None if res is None else res[0]


def engine_help(wait_s: float = 0.0) -> str:
    res = engine_status(wait_s)
    return res[1] if res and res[0] else ""


def suggest_run_name(ws: Workspace, prefix: str = "run") -> str:
    base = f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"
    name, i = base, 1
    while ws.runs_dir.joinpath(name).exists():
        i += 1
        name = f"{base}-{i}"
    return name


def start_job(ws: Workspace, run: str, corpus: str, model: str | Path, prompts, preset: str = "ci",
              device: str = "auto", shards: list[int] | None = None, *, extra_args: list[str] | None = None,
              ensure_corpus: str | None = None, ensure_model_preset: str | None = None) -> dict:
    """Write prompts + a queued status into runs/<run>/ and launch the job detached. Returns job.json.

    `prompts`: strings or {"prompt", "prompt_id"?} dicts. `ensure_corpus` ("pydocs") and
    `ensure_model_preset` make the job build the default corpus / built-in model first when missing.
    """
    validate_name(run, "run name")
    if preset not in PRESETS:
        raise InputError(f"unknown preset {preset!r}: use one of {PRESETS}")
    recs = normalise_prompts(prompts)
    ws.ensure()
    run_dir = ws.run_dir(run)
    if run_dir.exists() and any(run_dir.iterdir()):
        raise RunError(f"run {run!r} already exists in {ws.runs_dir}: choose another run name")
    run_dir.mkdir(parents=True, exist_ok=True)
    prompts_file = run_dir / PROMPTS_FILE
    with open(prompts_file, "w", encoding="utf-8") as fh:
        for rec in recs:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    cmd = run_command(ws, run, corpus, model, prompts_file, preset, device, shards, extra_args)
    job = {
        "run": run, "corpus": corpus, "model": str(model), "preset": preset, "device": device,
        "shards": [int(s) for s in shards] if shards else None, "n_prompts": len(recs),
        "extra_args": list(extra_args or []), "ensure_corpus": ensure_corpus,
        "ensure_model_preset": ensure_model_preset, "command": cmd, "created_at": time.time(),
        "pid": None, "start_ticks": None,
    }
    _write_json(run_dir / JOB_FILE, job)
    write_status(run_dir, RunStatus(run=run, state="queued", stage="queued", message="waiting for the job process to start"))
    return _launch(ws, run, job)


def _launch(ws: Workspace, run: str, job: dict) -> dict:
    run_dir = ws.run_dir(run)
    wrapper = [sys.executable, "-m", "stride_core.runs.jobs", "exec", "--workspace", str(ws.root), "--run", run]
    if job.get("ensure_corpus"):
        wrapper += ["--ensure-corpus", job["ensure_corpus"]]
    if job.get("ensure_model_preset"):
        wrapper += ["--ensure-model", job["ensure_model_preset"], "--device", job.get("device") or "auto"]
    wrapper += ["--", *job["command"]]
    env = dict(os.environ, STRIDE_WORKSPACE=str(ws.root), PYTHONUNBUFFERED="1")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    with open(run_dir / LOG_FILE, "ab") as log:
        try:
            proc = subprocess.Popen(wrapper, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True, cwd=str(ws.root), env=env, close_fds=True)
        except OSError as exc:
            write_status(run_dir, RunStatus(run=run, state="failed", error=f"could not start the job: {exc}"))
            raise RunError(f"could not start the job for run {run!r}: {exc}") from exc
    job.update(pid=proc.pid, start_ticks=_proc_start_ticks(proc.pid), launched_at=time.time())
    _write_json(run_dir / JOB_FILE, job)
    logger.info("started job for run %s (pid %d), log %s", run, proc.pid, run_dir / LOG_FILE)
    return job




def start_audit_job(ws: Workspace, run: str, kind: str, items_text: str, budget: int | None = None,
                    device: str = "auto", filename: str = "items.jsonl", text_field: str | None = None) -> dict:
    """Launch `stride audit contamination|select` on a finished run as a detached process. `items_text`
    is the content of the benchmark / target file (.jsonl, .json or .txt by `filename`; `text_field` as
    in `read_items`); it is validated here, so a bad file fails at once. Progress goes to runs/<run>/audit_status.json, never to the run's own
    status (an audit does not change the run's state)."""
    from ...store.items import file_kind, read_items
    from ..indexing import load_run
    from ..progress import AUDIT_STATUS_FILE

    if kind not in AUDIT_KINDS:
        raise InputError(f"unknown audit {kind!r}: use contamination or select")
    if kind == "select" and (not budget or int(budget) < 1):
        raise InputError("a selection audit needs a budget >= 1")
    run_dir, _ = load_run(ws, run)  # RunError unless the run is fully indexed
    current = read_status(run_dir, AUDIT_STATUS_FILE)
    job = _read_json(run_dir / AUDIT_JOB_FILE)
    if current is not None and current.state in ACTIVE_STATES and job_alive(job.get("pid"), job.get("start_ticks")):
        raise RunError(f"an audit is already running on run {run!r}; wait for it or cancel it")
    file_suffix = file_kind(filename)
    suffix = file_suffix if file_suffix in (".txt", ".json") else ".jsonl"
    inp = run_dir / f"audit_{kind}_input{suffix}"
    tmp = run_dir / f"audit_{kind}_input.partial{suffix}"  # keeps the suffix read_items dispatches on
    tmp.write_text(items_text, encoding="utf-8")
    try:
        read_items(tmp, "benchmark" if kind == "contamination" else "target", text_fields=text_field or None)
    except Exception:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, inp)
    cmd = [sys.executable, "-m", "stride_core.cli", "--workspace", str(ws.root), "--no-progress", "audit", kind,
           "--run", run, AUDIT_KINDS[kind], str(inp), "--device", device]
    if kind == "select":
        cmd += ["--budget", str(int(budget))]
    if text_field:
        cmd += ["--text-field", text_field]
    write_status(run_dir, RunStatus(run=run, state="queued", stage=f"audit {kind}", message="starting"), AUDIT_STATUS_FILE)
    env = dict(os.environ, STRIDE_WORKSPACE=str(ws.root), PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    with open(run_dir / AUDIT_LOG_FILE, "ab") as log:
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True, cwd=str(ws.root), env=env, close_fds=True)
        except OSError as exc:
            write_status(run_dir, RunStatus(run=run, state="failed", error=f"could not start the audit: {exc}"), AUDIT_STATUS_FILE)
            raise RunError(f"could not start the audit on run {run!r}: {exc}") from exc
    job = {"run": run, "kind": kind, "command": cmd, "pid": proc.pid, "start_ticks": _proc_start_ticks(proc.pid),
           "created_at": time.time()}
    _write_json(run_dir / AUDIT_JOB_FILE, job)
    return job


def builtin_model_ready(ws: Workspace, preset: str) -> bool:
    from ..demo import default_model_dir

    d = default_model_dir(ws, preset)
    return (d / "config.json").exists() and (d / "stride_training.json").exists() and any(d.glob("*.safetensors"))


def preparing_job(ws: Workspace, *, corpus: str | None = None, model_preset: str | None = None) -> str | None:
    """Name of an active job that is building the default corpus / built-in model right now, if any
    (a second job must not build the same files at the same time)."""
    for r in list_runs(ws):
        if r["state"] not in ACTIVE_STATES:
            continue
        job = r.get("job") or {}
        if (corpus and job.get("ensure_corpus") == corpus) or (
                model_preset and job.get("ensure_model_preset") == model_preset):
            return r["run"]
    return None


def start_demo_job(ws: Workspace, preset: str = "default", device: str = "auto", run: str = "demo") -> dict:
    """The first-launch job of `stride app`: build the default corpus + built-in model, then run STRIDE
    on the sample prompts as run `demo`."""
    from ..demo import default_model_dir

    prompts = load_prompt_file(sample_prompts_path("jsonl"))
    return start_job(ws, run, "pydocs", default_model_dir(ws, preset), prompts, preset, device,
                     ensure_corpus="pydocs", ensure_model_preset=preset)
