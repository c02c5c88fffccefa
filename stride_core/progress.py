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
            write_status(self.run_dir, self.status, filename)

    def stage(self, name: str, message: str = ""):
        self.status.stage, self.status.progress, self.status.message = name, 0.0, message
        self.status.stage_started_at = time.time()
        self.status.metrics = {}
        self._flush(force=True)

    def update(self, progress: float, message: str | None = None, **metrics):
        self.status.progress = float(min(max(progress, 0.0), 1.0))
        if message is not None:
            self.status.message = message
        self.status.metrics.update({k: float(v) for k, v in metrics.items()})
        self._flush()

    def finish(self, state: str = "done", error: str | None = None):
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
