"""Background jobs: start, watch and cancel STRIDE runs as detached processes.

Modules: files (run-folder names, states), prompts (a job's prompts), processes (liveness, cancelling),
launch (start a run, an audit, the demo), status (reading runs back), execute (the job process itself).
This package re-exports their public names: the dashboard uses `from stride_core.runs import jobs`.

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

from ..demo import sample_prompts_path
from .files import (ACTIVE_STATES, AUDIT_JOB_FILE, AUDIT_KINDS, AUDIT_LOG_FILE, JOB_FILE, LOG_FILE, MAX_PROMPTS,
                    PRESETS, PROMPTS_FILE, RESULT_FILES, TERMINAL_STATES, log_tail)
from .inputs import (load_prompt_file, normalise_prompts, parse_prompt_upload, parse_prompts_text)
from .processes import (cancel_job, job_alive)
from .launch import (builtin_model_ready, engine_available, engine_help, engine_status, preparing_job, run_command,
                     start_audit_job, start_demo_job, start_job, suggest_run_name)
from .status import (PHASES, audit_info, list_runs, phase_durations, run_info, stage_eta, status_eta)

__all__ = ["ACTIVE_STATES", "AUDIT_JOB_FILE", "AUDIT_KINDS", "AUDIT_LOG_FILE", "JOB_FILE", "LOG_FILE", "MAX_PROMPTS",
           "PHASES", "PRESETS", "PROMPTS_FILE", "RESULT_FILES", "TERMINAL_STATES", "audit_info",
           "builtin_model_ready", "cancel_job", "engine_available", "engine_help", "engine_status", "job_alive",
           "list_runs", "load_prompt_file", "log_tail", "normalise_prompts", "parse_prompt_upload",
           "parse_prompts_text", "phase_durations", "preparing_job", "run_command", "run_info",
           "sample_prompts_path", "stage_eta", "start_audit_job", "start_demo_job", "start_job", "status_eta",
           "suggest_run_name"]
