"""Processes of a job: whether its pid is still the process it started (start ticks from /proc), and
cancelling the whole process group (SIGTERM, then SIGKILL after a grace period).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path

from ...errors import RunError
from ..progress import RunStatus, read_status, write_status
from ...store.workspace import Workspace
from .files import JOB_FILE, TERMINAL_STATES, _read_json

logger = logging.getLogger(__name__)


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
