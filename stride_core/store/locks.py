"""Per-run file lock (fcntl.flock on runs/.locks/<run>.lock): `index` and `attribute` on one run take it,
so two processes never write one run's artifacts or attribution results at the same time; the second
one waits.

The kernel drops a flock when its holder dies (even by SIGKILL), so a killed job never leaves a stale
lock. The lock is re-entrant within one thread (`stride run` takes it, then `index` and `attribute`
inside it); another thread of the same process opens its own descriptor and so waits like another
process would.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path

from ..errors import RunError

logger = logging.getLogger(__name__)

LOCK_DIR = ".locks"  # runs/.locks/<run>.lock: beside the run folders, so taking it creates no run folder
_held = threading.local()  # path -> [fd, depth] for the locks this thread holds


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
        return f"pid {info.get('pid')} ({info.get('command', '?')})"
    except (OSError, json.JSONDecodeError):
        return "another process"


def lock_path(run_dir: Path) -> Path:
    return Path(run_dir).parent / LOCK_DIR / f"{Path(run_dir).name}.lock"


@contextlib.contextmanager
def run_lock(run_dir: Path, timeout_s: float | None = None, poll_s: float = 0.2):
    """Hold the run's lock for the block; waits while another process holds it (at most `timeout_s`
    seconds, then RunError naming the holder; None: as long as it takes)."""
    run_dir = Path(run_dir)
    path = lock_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = str(path.resolve())
    table = getattr(_held, "locks", None)
    if table is None:
        table = _held.locks = {}
    if key in table:  # re-entered by the same thread
        table[key][1] += 1
        try:
            yield
        finally:
            table[key][1] -= 1
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        waited = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waited:
                    logger.info("run %s is busy (held by %s): waiting for it", run_dir.name, _holder(path))
                    waited = True
                if deadline is not None and time.monotonic() > deadline:
                    raise RunError(f"run {run_dir.name!r} stayed locked by {_holder(path)} for {timeout_s:.0f}s: "
                                   "wait for that command to finish, then retry") from None
                time.sleep(poll_s)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "command": " ".join(sys.argv[1:])[:200] or sys.argv[0]}).encode(), 0)
        table[key] = [fd, 1]
        try:
            yield
        finally:
            del table[key]
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
