"""Workspace folder: the DuckDB store, run folders, default corpus/model locations.

DuckDB allows one writing process per file. Every connection here is short-lived (open, work,
close) and retried while another process holds the lock, so a running job never locks the
dashboard out for longer than one short write.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import StrideError

logger = logging.getLogger(__name__)

DB_FILENAME = "stride.duckdb"
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
