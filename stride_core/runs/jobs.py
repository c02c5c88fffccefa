"""Background jobs: start, watch and cancel STRIDE runs as detached processes.

The dashboard never runs heavy work in its own process. `start_job` writes the prompts and a
`queued` status into `runs/<run>/`, then launches

    python -m stride_core.runs.jobs exec --workspace W --run RUN [--ensure-corpus pydocs] [--ensure-model PRESET] -- CMD...

in a new session (its own process group, so `cancel_job` can kill the whole tree), with stdout and
stderr going to `runs/<run>/job.log`. That small wrapper optionally builds the default corpus and
built-in model first, then runs CMD (normally `python -m stride_core.cli --workspace W run ...`) and,
when CMD exits without having written a terminal state to `status.json`, records `failed` (or `done`
for exit code 0) with the tail of the log. A job killed so hard that even the wrapper could not write
(SIGKILL, OOM, reboot) is detected by readers: `list_runs` reports a `queued`/`running` status whose
process is gone as `failed`, with the log tail.

Everything here reads and writes files in the run folder only: no DuckDB connection, so listing runs
never waits on the database lock a running job may hold.

Files in a run folder written here: `job.json` (what was requested, the command, pid and process start
time), `prompts.jsonl` (one {"prompt_id", "prompt"} object per line), `job.log`, and `status.json`
(through `stride_core.runs.progress`). The engine writes `args.json`, `provenance.json`, `status.json` and
its results (`attributions.parquet`, later `contamination.parquet`, `selection.parquet`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path

from .demo import sample_prompts_path  # noqa: F401  re-exported: the dashboard and the demo job read the samples through jobs
from ..errors import InputError, RunError
from .progress import RunStatus, read_status, total_seconds, write_status
from ..store.workspace import Workspace, validate_name

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
PRESETS = ("ci", "default")
MAX_PROMPTS = 10_000
# A queued run whose launcher has not recorded a pid yet is given this long before it counts as dead.
_QUEUED_GRACE_S = 30.0


# ------------------------------------------------------------------------------------- prompts


def parse_prompts_text(text: str) -> list[str]:
    """One prompt per non-empty line (a .txt upload or the text area)."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def parse_prompt_upload(raw: str, filename: str) -> list[dict]:
    """An uploaded prompts file's content (.txt, .jsonl or .json by `filename`, read as `stride run
    --prompts` reads a file) -> [{"prompt", "prompt_id"}]."""
    from ..store.items import file_kind
    from .prompts import parse_prompts

    kind = file_kind(filename)
    suffix = kind if kind in (".jsonl", ".json") else ".txt"
    return [{"prompt": r["prompt"].strip(), "prompt_id": r["query_id"]} for r in parse_prompts(raw, suffix, filename)]


def load_prompt_file(path: str | Path) -> list[dict]:
    """Prompts from a .txt, .jsonl or .json file (`pipeline.read_prompts`) -> [{"prompt", "prompt_id"}]."""
    from .prompts import read_prompts

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


# ----------------------------------------------------------------------------------- processes


def _proc_start_ticks(pid: int) -> int | None:
    """Process start time (clock ticks since boot) from /proc; None where /proc is unavailable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = stat[stat.rfind(")") + 2:].split()
    try:
        return int(fields[19])  # field 22 overall
    except (IndexError, ValueError):
        return None


def _proc_state(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rfind(")") + 2:].split()[0]


def job_alive(pid: int | None, start_ticks: int | None = None) -> bool:
    """Whether process `pid` still runs (and is the same process, when its start time is known)."""
    if not pid or pid <= 0:
        return False
    try:  # reap it if it is our own finished child (the dashboard launched it), so it is no zombie
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    except (ChildProcessError, OSError):
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    if _proc_state(pid) in ("Z", "X"):
        return False
    if start_ticks is not None:
        now = _proc_start_ticks(pid)
        if now is not None and now != start_ticks:
            return False  # the pid was reused by another process
    return True


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


# ------------------------------------------------------------------------------------ commands


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


AUDIT_KINDS = {"contamination": "--benchmark", "select": "--target"}
AUDIT_JOB_FILE = "audit_job.json"
AUDIT_LOG_FILE = "audit.log"


def start_audit_job(ws: Workspace, run: str, kind: str, items_text: str, budget: int | None = None,
                    device: str = "auto", filename: str = "items.jsonl", text_field: str | None = None) -> dict:
    """Launch `stride audit contamination|select` on a finished run as a detached process. `items_text`
    is the content of the benchmark / target file (.jsonl, .json or .txt by `filename`; `text_field` as
    in `read_items`); it is validated here, so a bad file fails at once. Progress goes to runs/<run>/audit_status.json, never to the run's own
    status (an audit does not change the run's state)."""
    from ..store.items import file_kind, read_items
    from .indexing import load_run
    from .progress import AUDIT_STATUS_FILE

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


def audit_info(ws: Workspace, run: str) -> dict | None:
    """The latest audit job of a run: its status (a dead process without a final state reads as failed)
    and the tail of its log; None when no audit was started."""
    from .progress import AUDIT_STATUS_FILE

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


def cancel_job(ws: Workspace, run: str, grace_s: float = 5.0) -> bool:
    """Kill the job's process group (SIGTERM, then SIGKILL after `grace_s`) and mark it cancelled.

    Returns False when the run was not active (nothing to cancel).
    """
    run_dir = ws.run_dir(run)
    if not run_dir.exists():
        raise RunError(f"unknown run {run!r} in {ws.runs_dir}")
    job = _read_json(run_dir / JOB_FILE)
    status = read_status(run_dir)
    pid = job.get("pid") or (status.pid if status else None)
    alive = job_alive(pid, job.get("start_ticks") if job.get("pid") else None)
    if alive:
        _kill_group(pid, grace_s)
    if status is not None and status.state in TERMINAL_STATES and not alive:
        return False
    status = status or RunStatus(run=run)
    status.state = "cancelled"
    status.error = None
    status.message = "cancelled by the user"
    write_status(run_dir, status)
    return True


def _group_alive(pgid: int) -> bool:
    """Whether any live (non-zombie) process is left in process group `pgid`."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
            return True
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
    for d in proc.iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
            return True
    return False


def _kill_group(pid: int, grace_s: float) -> None:
    """SIGTERM the job's process group, SIGKILL what is left after `grace_s`, wait until all are gone."""
    job_alive(pid)  # reap the leader if it already exited
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        # The leader is gone; jobs lead their own group (start_new_session), so pgid == pid for the rest.
        if not _group_alive(pid):
            return
        pgid = pid
    if pgid == os.getpgid(0):  # never signal our own group (a job started without its own session)
        send = lambda sig: os.kill(pid, sig)  # noqa: E731
        alive = lambda: job_alive(pid)  # noqa: E731
    else:
        send = lambda sig: os.killpg(pgid, sig)  # noqa: E731
        alive = lambda: job_alive(pid) or _group_alive(pgid)  # noqa: E731
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        try:
            send(sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if not alive():
                return
            time.sleep(0.05)
    logger.warning("processes of job group %d are still alive after SIGKILL", pgid)


# ---------------------------------------------------------------------------------------- runs


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


# ------------------------------------------------------------------------------------ demo job


def builtin_model_ready(ws: Workspace, preset: str) -> bool:
    from .demo import default_model_dir

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
    from .demo import default_model_dir

    prompts = load_prompt_file(sample_prompts_path("jsonl"))
    return start_job(ws, run, "pydocs", default_model_dir(ws, preset), prompts, preset, device,
                     ensure_corpus="pydocs", ensure_model_preset=preset)


# ------------------------------------------------------------------------------- job wrapper


def _exec_main(argv: list[str]) -> int:
    """`python -m stride_core.runs.jobs exec ...`: the process a job is (see the module docstring)."""
    p = argparse.ArgumentParser(prog="python -m stride_core.runs.jobs exec")
    p.add_argument("--workspace", required=True)
    p.add_argument("--run", required=True)
    p.add_argument("--ensure-corpus", default=None)
    p.add_argument("--ensure-model", default=None, choices=list(PRESETS))
    p.add_argument("--device", default="auto", help="device for training the built-in model")
    p.add_argument("command", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    ws = Workspace(args.workspace)
    run_dir = ws.run_dir(args.run)
    print(f"[job] run {args.run}: pid {os.getpid()}, command: {' '.join(cmd)}", flush=True)
    rep = None
    try:
        if args.ensure_corpus or args.ensure_model:
            # Each preparation step is a stage of its own with a fraction (hence an ETA on the Runs page): on a
            # loaded CPU, training the built-in model is the first ten minutes of a first launch.
            from ..store.corpus import list_corpora
            from .progress import Reporter

            rep = Reporter(run_dir, args.run, min_interval=1.0)
            corpus = args.ensure_corpus or "pydocs"  # the built-in model is trained on the default corpus
            if corpus not in [c["name"] for c in list_corpora(ws)]:
                from ..store.pydocs import build_default_corpus

                rep.stage("build corpus", f"building the default corpus {corpus!r} from this Python's documentation")
                build_default_corpus(ws, name=corpus, on_progress=rep.update)
                print(f"[job] built corpus {corpus!r}", flush=True)
            if args.ensure_model and not builtin_model_ready(ws, args.ensure_model):
                from .demo import ensure_default_model
                from ..store.models import resolve_device

                rep.stage("train model", f"training the built-in model (preset {args.ensure_model}; minutes on a CPU)")
                ensure_default_model(ws, args.ensure_model, device=resolve_device(args.device), progress=False,
                                     on_progress=rep.update)
                print(f"[job] trained the built-in model ({args.ensure_model} preset)", flush=True)
            rep.update(1.0, "default corpus and model ready")
            rep.flush()
    except Exception as exc:  # noqa: BLE001 - recorded for the dashboard, then exit non-zero
        logger.exception("preparing the default corpus/model failed")
        stage = rep.status.stage if rep and rep.status.stage else "prepare"
        rep_started = rep.status.started_at if rep else time.time()
        write_status(run_dir, RunStatus(run=args.run, state="failed", stage=stage, pid=os.getpid(), started_at=rep_started,
                                        error=f"preparing the default corpus/model failed ({stage}): {type(exc).__name__}: {exc}"))
        return 1
    if not cmd:
        write_status(run_dir, RunStatus(run=args.run, state="failed", error="the job has no command to run"))
        return 2
    sys.stdout.flush()
    try:
        rc = subprocess.call(cmd, cwd=str(ws.root))
    except OSError as exc:
        rc = 127
        print(f"[job] cannot run the command: {exc}", flush=True)
    final = read_status(run_dir)
    if final is None or final.state not in TERMINAL_STATES:
        final = final or RunStatus(run=args.run)
        if rc == 0:
            final.state, final.progress, final.message = "done", 1.0, final.message or "finished"
        else:
            final.state = "failed"
            final.error = f"the command exited with status {rc} without finishing; last lines of {LOG_FILE}:\n{log_tail(run_dir)}"
        write_status(run_dir, final)
    print(f"[job] finished with exit status {rc}, state {final.state}", flush=True)
    return rc


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "exec":
        print("usage: python -m stride_core.runs.jobs exec --workspace W --run RUN [--ensure-corpus NAME] "
              "[--ensure-model PRESET] -- COMMAND...", file=sys.stderr)
        return 2
    return _exec_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
