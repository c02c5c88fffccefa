"""Reading runs back: a run's status with its job and process (a dead process is `failed`), stage durations
and ETAs, the audit a run has, and the list the Runs page shows. Files only: never the DuckDB lock.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path

from ...errors import RunError
from ..progress import RunStatus, read_status, total_seconds
from ...store.workspace import Workspace, validate_name
from .files import (ACTIVE_STATES, AUDIT_JOB_FILE, AUDIT_LOG_FILE, JOB_FILE, LOG_FILE, RESULT_FILES, _QUEUED_GRACE_S,
                    _read_json, log_tail)
from .processes import job_alive

logger = logging.getLogger(__name__)


def audit_info(ws: Workspace, run: str) -> dict | None:
    """The latest audit job of a run: its status (a dead process without a final state reads as failed)
    and the tail of its log; None when no audit was started."""
    from ..progress import AUDIT_STATUS_FILE

    run_dir = ws.run_dir(run)
    st = read_status(run_dir, AUDIT_STATUS_FILE)
    if st is None:
        return None
    job = _read_json(run_dir / AUDIT_JOB_FILE)
    d = asdict(st)
    if st.state in ACTIVE_STATES and job.get("pid") and not job_alive(job["pid"], job.get("start_ticks")):
        if time.time() - job.get("created_at", 0) > _QUEUED_GRACE_S or st.state == "running":
            d["state"] = "failed"
            d["error"] = d.get("error") or "the audit process ended without recording a final state"
    d["kind"] = job.get("kind")
    log = run_dir / AUDIT_LOG_FILE
    d["log_tail"] = log.read_text(errors="replace")[-3000:] if log.exists() else ""
    return d


def run_info(ws: Workspace, run: str) -> dict:
    """Everything known about one run, from its folder's files (no DuckDB)."""
    run_dir = ws.run_dir(run)
    if not run_dir.is_dir():
        raise RunError(f"unknown run {run!r} in {ws.runs_dir}")
    return _run_info(run_dir)


def _run_info(run_dir: Path) -> dict:
    job = _read_json(run_dir / JOB_FILE)
    args = _read_json(run_dir / "args.json")
    prov = _read_json(run_dir / "provenance.json")
    status = read_status(run_dir)
    results = {k: (run_dir / f).exists() for k, f in RESULT_FILES.items()}
    now = time.time()
    info = {
        "run": run_dir.name, "run_dir": str(run_dir), "job": job, "args": args, "provenance": prov,
        "results": results, "pid": None, "alive": False, "log_tail": "",
    }
    if status is None:
        st = RunStatus(run=run_dir.name, state="done" if results["attributions"] else "queued")
        try:
            st.started_at = st.updated_at = st.stage_started_at = run_dir.stat().st_mtime
        except OSError:
            pass
        status_known = False
    else:
        st = status
        status_known = True
    d = asdict(st)
    state = st.state
    pid = job.get("pid") or st.pid
    ticks = job.get("start_ticks") if job.get("pid") else None
    alive = job_alive(pid, ticks) if pid else False
    error = st.error
    if state in ACTIVE_STATES and not alive:
        created = job.get("created_at") or st.started_at
        if pid or not status_known or now - created > _QUEUED_GRACE_S:
            if status_known or job:
                state = "failed"
                tail = log_tail(run_dir)
                error = (f"the job process{f' (pid {pid})' if pid else ''} ended without recording a final state"
                         + (f"; last lines of {LOG_FILE}:\n{tail}" if tail else f" and left no {LOG_FILE}"))
            else:
                state = "unknown"
    if state == "failed" and not info["log_tail"]:
        info["log_tail"] = log_tail(run_dir)
    d.update(state=state, error=error)
    info.update(d)
    info["pid"], info["alive"] = pid, alive
    info["recorded_state"] = st.state
    end = now if state in ACTIVE_STATES else st.updated_at
    info["elapsed_s"] = max(0.0, end - st.started_at)
    info["stage_elapsed_s"] = max(0.0, end - st.stage_started_at)
    info["eta_s"] = status_eta(st, end) if state == "running" else None
    # The engine's args.json ({"run", "index": {corpus, model, shards, cache, subsets, operators}}) wins over
    # what was requested (job.json).
    merged = {**job, **args, **(args.get("index") if isinstance(args.get("index"), dict) else {})}
    info["corpus"] = merged.get("corpus")
    info["model"] = merged.get("model") or merged.get("model_dir")
    noted = st.info or {}  # what a CLI command recorded (no job.json for runs started from a terminal)
    info["preset"] = merged.get("preset") or noted.get("preset")
    info["device"] = prov.get("device") or merged.get("device")
    info["n_prompts"] = job.get("n_prompts") or merged.get("n_prompts") or noted.get("n_prompts")
    # Total working time over every command that worked on the run (index + attribute), and per phase.
    info["total_s"] = total_seconds(st, now, active=state in ACTIVE_STATES)
    info["phases"] = phase_durations(st.durations, st.stage if state in ACTIVE_STATES else None, info["stage_elapsed_s"])
    info["shards"] = merged.get("shards")
    info["pairing_warnings"] = list(prov.get("pairing_warnings") or [])  # written by `index` (pipeline.begin_run)
    return info


# Stages grouped into the phases the Runs page reports; every other stage belongs to the index.
PHASES = {"queued": None, "prepare": "prepare", "build corpus": "prepare", "train model": "prepare",
          "attribute": "attribute", "attributed": "attribute"}


def phase_durations(durations: dict, current: str | None = None, current_s: float = 0.0) -> dict:
    """{"prepare"?, "index"?, "attribute"?: seconds} from a status's per-stage durations (+ the running stage)."""
    d = dict(durations or {})
    if current and current not in d:
        d[current] = current_s
    out: dict = {}
    for stage, secs in d.items():
        phase = PHASES.get(stage, "index")
        if phase:
            out[phase] = out.get(phase, 0.0) + float(secs)
    return out


def status_eta(st: RunStatus, now: float) -> float | None:
    """Remaining seconds of the current stage: from the rate since the stage's first progress update (its
    anchor) once progress has moved 1% past it, else linearly from the stage's start."""
    a = st.progress_anchor
    if a and len(a) == 2 and st.progress - float(a[1]) >= 0.01 and st.progress < 1.0:
        rate = (st.progress - float(a[1])) / max(now - float(a[0]), 1e-6)
        return (1.0 - st.progress) / rate
    return stage_eta(st.progress, max(0.0, now - st.stage_started_at))


def stage_eta(progress: float, stage_elapsed_s: float) -> float | None:
    """Remaining seconds of the current stage, extrapolated linearly from its progress so far."""
    if progress is None or progress <= 0.01 or progress >= 1.0 or stage_elapsed_s <= 0:
        return None
    return stage_elapsed_s * (1.0 - progress) / progress


def list_runs(ws: Workspace) -> list[dict]:
    """All runs of a workspace, newest first (from the run folders' files; no database lock)."""
    if not ws.runs_dir.is_dir():
        return []
    out = []
    for d in ws.runs_dir.iterdir():
        if not d.is_dir() or d.name.startswith("."):
            continue
        try:
            validate_name(d.name, "run name")
        except Exception:
            continue
        out.append(_run_info(d))
    out.sort(key=lambda r: r.get("started_at") or 0.0, reverse=True)
    return out
