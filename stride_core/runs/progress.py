"""Run status file: a job writes `status.json` in its run folder; the dashboard and CLI read it.

Written atomically (temp file + rename) so a reader never sees half a file, and without DuckDB so a
running job never holds the database lock.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

STATES = ("queued", "running", "done", "failed", "cancelled")


@dataclass
class RunStatus:
    run: str
    state: str = "queued"
    stage: str = ""
    progress: float = 0.0  # 0..1 within the current stage
    message: str = ""
    metrics: dict = field(default_factory=dict)  # e.g. loss terms while training
    started_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    stage_started_at: float = field(default_factory=time.time)
    error: str | None = None
    pid: int | None = None
    # Seconds of the latest pass through each finished stage, kept across the commands that work on a run
    # (`stride index`, later `stride attribute`), so the run's total duration is their sum, not the last command's.
    durations: dict = field(default_factory=dict)
    # What the command that started the work knew and the engine's files do not record (preset, n_prompts).
    info: dict = field(default_factory=dict)
    # [time, progress] of the current stage's first update with progress > 0: the ETA is extrapolated from the
    # rate since then, so a slow start inside a stage (tokenizer training before the steps) does not skew it.
    progress_anchor: list | None = None

    def __post_init__(self):
        if self.state not in STATES:
            raise ValueError(f"state must be one of {STATES}")


STATUS_FILE = "status.json"  # the run's index/attribute job
AUDIT_STATUS_FILE = "audit_status.json"  # the latest audit job on the run (kept apart: an audit never changes the run's state)


def status_path(run_dir: Path, filename: str = STATUS_FILE) -> Path:
    return Path(run_dir) / filename


def read_status(run_dir: Path, filename: str = STATUS_FILE) -> RunStatus | None:
    p = status_path(run_dir, filename)
    if not p.exists():
        return None
    try:
        return RunStatus(**json.loads(p.read_text()))
    except (json.JSONDecodeError, TypeError, ValueError):
        return None


def write_status(run_dir: Path, status: RunStatus, filename: str = STATUS_FILE) -> None:
    status.updated_at = time.time()
    p = status_path(run_dir, filename)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(asdict(status), default=str))
    os.replace(tmp, p)


_PROCESS_INFO: dict = {}


def set_process_info(**info) -> None:
    """Facts about the run this process works on (the CLI's --preset, the number of prompts), merged into
    every status a Reporter of this process writes: the Runs page shows them for CLI-started runs too."""
    _PROCESS_INFO.update({k: v for k, v in info.items() if v is not None})


def clear_process_info() -> None:
    _PROCESS_INFO.clear()


def total_seconds(status: RunStatus, now: float | None = None, active: bool | None = None) -> float:
    """A run's total working time: its finished stages' durations plus the current stage while it is active
    (status files written before durations existed: the time since started_at). `active` overrides the
    recorded state (a reader that found the job's process gone)."""
    now = time.time() if now is None else now
    active = status.state in ("queued", "running") if active is None else active
    end = now if active else status.updated_at
    if not status.durations:
        return max(0.0, end - status.started_at)
    total = sum(float(v) for v in status.durations.values())
    if active and status.stage and status.stage not in status.durations:
        total += max(0.0, end - status.stage_started_at)
    return total


class Reporter:
    """Stage/progress updates to status.json, throttled to one write per `min_interval` seconds."""

    def __init__(self, run_dir: Path | None, run: str = "", min_interval: float = 0.5, filename: str = STATUS_FILE):
        self.run_dir = Path(run_dir) if run_dir else None
        self.min_interval = min_interval
        self.filename = filename
        self._last = 0.0
        self.status = RunStatus(run=run, state="running", pid=os.getpid())
        if self.run_dir:
            prev = read_status(self.run_dir, filename)
            if prev is not None:
                self.status.started_at = prev.started_at if prev.state == "running" else time.time()
                self.status.durations = dict(prev.durations)
                self.status.info = dict(prev.info)
                if prev.state == "running" and prev.stage and prev.pid in (os.getppid(), os.getpid()):
                    # the job wrapper (our parent) ran a stage before us, e.g. "prepare": it ends here
                    self.status.durations[prev.stage] = max(0.0, time.time() - prev.stage_started_at)
        self.status.info.update(_PROCESS_INFO)
        if self.run_dir:
            write_status(self.run_dir, self.status, filename)

    def _close_stage(self):
        if self.status.stage:
            self.status.durations[self.status.stage] = max(0.0, time.time() - self.status.stage_started_at)

    def stage(self, name: str, message: str = ""):
        self._close_stage()
        self.status.stage, self.status.progress, self.status.message = name, 0.0, message
        self.status.progress_anchor = None
        self.status.stage_started_at = time.time()
        self.status.metrics = {}
        self._flush(force=True)

    def update(self, progress: float, message: str | None = None, **metrics):
        self.status.progress = float(min(max(progress, 0.0), 1.0))
        if self.status.progress_anchor is None and self.status.progress > 0:
            self.status.progress_anchor = [time.time(), self.status.progress]
        if message is not None:
            self.status.message = message
        self.status.metrics.update({k: float(v) for k, v in metrics.items()})
        self._flush()

    def flush(self):
        """Write the latest update now (update() is throttled)."""
        self._flush(force=True)

    def finish(self, state: str = "done", error: str | None = None):
        self._close_stage()
        self.status.state, self.status.error = state, error
        if state == "done":
            self.status.progress = 1.0
        self._flush(force=True)

    def _flush(self, force: bool = False):
        if self.run_dir is None:
            return
        now = time.time()
        if force or now - self._last >= self.min_interval:
            self._last = now
            write_status(self.run_dir, self.status, self.filename)

    @contextmanager
    def finishing(self):
        """Mark the status done when the block ends, failed (with the message) or cancelled when it raises."""
        try:
            yield self
        except KeyboardInterrupt:
            self.finish("cancelled", "interrupted")
            raise
        except BaseException as exc:
            self.finish("failed", str(exc))
            raise
        self.finish("done")
