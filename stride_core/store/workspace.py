"""Workspace folder: the DuckDB store, run folders, default corpus/model locations.

DuckDB allows one writing process per file. Every connection here is short-lived (open, work,
close) and retried while another process holds the lock, so a running job never locks the
dashboard out for longer than one short write.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import StrideError

logger = logging.getLogger(__name__)

DB_FILENAME = "stride.duckdb"
STAGING_PREFIX = ".import-"  # corpus imports stage their Parquet file in <workspace>/.import-XXXX/
_STAGING_HELD = ".held"  # flock-held by the import using the folder
_STAGING_GRACE_S = 60.0  # a folder without the lock file (older versions, or just created) counts as stale after this
_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]{0,63}$")


def validate_name(name: str, what: str = "name") -> str:
    """Corpus and run names become folder names and (quoted) table suffixes: keep them simple."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise StrideError(
            f"invalid {what} {name!r}: use 1-64 letters, digits, '_' or '-', starting with a letter"
        )
    return name


def default_workspace() -> Path:
    return Path(os.environ.get("STRIDE_WORKSPACE", "workspace"))


def workspace_at(path=None) -> "Workspace":
    """The workspace at `path`, or at $STRIDE_WORKSPACE / ./workspace when none is given (what --workspace means)."""
    return Workspace(Path(path) if path else default_workspace())


@dataclass(frozen=True)
class Workspace:
    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root).expanduser().resolve())

    @property
    def db_path(self) -> Path:
        return self.root / DB_FILENAME

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def jobs_dir(self) -> Path:
        return self.root / "jobs"

    def run_dir(self, run: str) -> Path:
        return self.runs_dir / validate_name(run, "run name")

    def ensure(self) -> "Workspace":
        for d in (self.root, self.runs_dir, self.models_dir, self.jobs_dir):
            d.mkdir(parents=True, exist_ok=True)
        return self

    @contextlib.contextmanager
    def staging_dir(self):
        """A temporary folder in the workspace for one import, removed afterwards. Its lock file is
        flock-held while in use, so `stale_staging` can tell a folder left by a killed import (SIGKILL
        skips the cleanup) from one another process is filling right now."""
        self.ensure()
        tmp = Path(tempfile.mkdtemp(dir=self.root, prefix=STAGING_PREFIX))
        fd = os.open(tmp / _STAGING_HELD, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            os.close(fd)

    def stale_staging(self) -> list[tuple[Path, int]]:
        """Staging folders of imports that were killed: (folder, bytes) each."""
        out = []
        if not self.root.is_dir():
            return out
        for d in sorted(self.root.glob(STAGING_PREFIX + "*")):
            if not d.is_dir() or _staging_in_use(d):
                continue
            size = sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
            out.append((d, size))
        return out

    def clean_staging(self) -> int:
        """Remove the staging folders of killed imports; returns how many."""
        stale = self.stale_staging()
        for d, _ in stale:
            shutil.rmtree(d, ignore_errors=True)
        if stale:
            logger.warning("removed %d staged import folder(s) (%.1f MB) left by an interrupted `stride corpus import`",
                           len(stale), sum(n for _, n in stale) / 1e6)
        return len(stale)

    @contextlib.contextmanager
    def connect(self, read_only: bool = False, timeout_s: float = 60.0):
        """Short-lived DuckDB connection, retried while another process holds the file lock."""
        import duckdb

        if read_only and not self.db_path.exists():
            raise StrideError(f"workspace {self.root} has no database yet: import or build a corpus first")
        if not read_only:
            self.ensure()
        deadline = time.monotonic() + timeout_s
        delay = 0.05
        while True:
            try:
                con = duckdb.connect(str(self.db_path), read_only=read_only)
                break
            except duckdb.IOException as exc:
                if "lock" not in str(exc).lower():  # a corrupt or unreadable file: retrying cannot help
                    raise StrideError(f"cannot open the workspace database {self.db_path}: {exc}") from exc
                if time.monotonic() > deadline:  # lock held by another process for too long
                    raise StrideError(
                        f"the workspace database {self.db_path} stayed locked by another process for "
                        f"{timeout_s:.0f}s: wait for the running job to finish and retry ({exc})"
                    ) from exc
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
        try:
            yield con
        finally:
            con.close()


def _staging_in_use(d: Path) -> bool:
    held = d / _STAGING_HELD
    try:
        fd = os.open(held, os.O_RDWR)
    except FileNotFoundError:
        try:
            return time.time() - d.stat().st_mtime < _STAGING_GRACE_S
        except FileNotFoundError:
            return True  # removed meanwhile by its owner
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also drops the probe's lock
    return False


def replace_run_rows(ws: Workspace, table: str, run: str, df, fixed: list[str]) -> None:
    """Replace run `run`'s rows of DuckDB table `table` by `df` in one transaction. Columns in `fixed`
    keep their own column; the others (a corpus's metadata) go into one JSON `metadata` column, so
    runs over corpora with different metadata share the table. `table` is a constant of the caller."""
    import json

    import pandas as pd

    if not table.isidentifier():
        raise ValueError(f"bad table name {table!r}")
    meta = [c for c in df.columns if c not in fixed]
    rows = df[fixed].copy()
    rows.insert(0, "run", run)
    rows["metadata"] = [json.dumps({c: (None if pd.isna(v) else v) for c, v in zip(meta, vals)}, default=str)
                        for vals in df[meta].itertuples(index=False, name=None)] if meta else "{}"
    with ws.connect() as con:
        exists = con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [table]).fetchall()[0][0]
        if not exists and rows.empty:
            return
        con.register("new_rows", rows)
        try:
            if not exists:
                con.execute(f"CREATE TABLE {table} AS SELECT * FROM new_rows LIMIT 0")
            con.execute("BEGIN TRANSACTION")
            try:
                con.execute(f"DELETE FROM {table} WHERE run = ?", [run])
                if not rows.empty:
                    con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM new_rows")
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        finally:
            con.unregister("new_rows")
