"""Corpus store: import JSONL / Parquet / CSV / text folders into DuckDB, list and read them back.

Layout in the workspace DuckDB:
- `corpora`: one row per corpus (name, source, counts, metadata column names).
- `"docs__<name>"`: one row per document: doc_id (0..N-1 in input order, stable across re-imports of
  the same file), shard (= doc_id // shard_size), text, n_chars, content_hash, duplicate_of (doc_id of
  the first exact copy, NULL for originals), then the input's other fields as metadata columns.

Imports stream: rows are validated and written in batches to a Parquet staging file, then loaded in
one DuckDB transaction, so an import is all-or-nothing and a multi-GB file never becomes one list.

Field names come from the input file, so they are mapped to safe column names first
(`identifiers.safe_column_names`: safe characters, non-empty, unique case-insensitively, reserved names
prefixed); every renaming is logged and returned as `renamed_columns`. A JSON object with the same key
twice is refused: a JSON parser keeps only the last value.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import CorpusError
from .identifiers import quote_ident
from .workspace import Workspace, validate_name
from .corpus_formats import (RESERVED_COLUMNS, ImportOptions, csv_batches, detect_format, folder_batches, jsonl_batches,
                             meta_column_names, parquet_batches, to_str)

logger = logging.getLogger(__name__)


CORPORA_DDL = """
CREATE TABLE IF NOT EXISTS corpora (
    name VARCHAR PRIMARY KEY,
    source_path VARCHAR,
    format VARCHAR,
    text_field VARCHAR,
    n_docs BIGINT,
    n_chars BIGINT,
    n_shards INTEGER,
    shard_size INTEGER,
    n_duplicates BIGINT,
    n_skipped_empty BIGINT,
    metadata_columns VARCHAR,
    created_at TIMESTAMP DEFAULT current_timestamp
)
"""


def docs_table(name: str) -> str:
    """Quoted table identifier for a (validated) corpus name."""
    return quote_ident("docs__" + validate_name(name, "corpus name"))


# ----------------------------------------------------------------------------------------------
# Readers: each returns (metadata field names, batches). A batch is a list of records: dicts {field:
# value} with the text under options.text_field, or, where field names can repeat (CSV headers, Parquet
# columns), tuples (text, *metadata values in field order).


def content_hash(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


# ----------------------------------------------------------------------------------------------


def import_records(
    ws: Workspace,
    name: str,
    meta: list[str],
    batches: Iterable[list[dict]],
    opts: ImportOptions,
    source_path: str,
    fmt: str,
) -> dict:
    """Validate, stage to Parquet, and load into DuckDB in one transaction. Returns the corpus row, with
    `renamed_columns`: [input field, stored column] for each field whose name was not usable as is.
    Records are dicts keyed by field (names in `meta` unique) or tuples (text, *values in `meta` order)."""
    validate_name(name, "corpus name")
    cols_out = meta_column_names(meta)
    by_name = len(set(meta)) == len(meta)  # dict records need unique field names
    schema = pa.schema(
        [("doc_id", pa.int64()), ("shard", pa.int32()), ("text", pa.string()), ("n_chars", pa.int64()), ("content_hash", pa.string())]
        + [(c, pa.string()) for c in cols_out]
    )
    ws.ensure()
    ws.clean_staging()  # staged files of an import killed before its cleanup (SIGKILL)
    n_docs = n_chars = n_empty = 0
    with ws.staging_dir() as tmp:
        staged = tmp / "staged.parquet"
        writer = pq.ParquetWriter(staged, schema)
        try:
            for batch in batches:
                cols = {f.name: [] for f in schema}
                for rec in batch:
                    if isinstance(rec, dict):
                        if not by_name:
                            raise ValueError("records with repeated field names must be tuples (text, *values)")
                        text, values = rec.get(opts.text_field), [rec.get(m) for m in meta]
                    else:
                        text, *values = rec
                    if not isinstance(text, str):
                        raise CorpusError(f"{source_path}: document {n_docs + n_empty + 1}: text is not a string")
                    if not text.strip():
                        n_empty += 1
                        continue
                    cols["doc_id"].append(n_docs)
                    cols["shard"].append(n_docs // opts.shard_size)
                    cols["text"].append(text)
                    cols["n_chars"].append(len(text))
                    cols["content_hash"].append(content_hash(text))
                    for c, v in zip(cols_out, values):
                        cols[c].append(to_str(v))
                    n_docs += 1
                    n_chars += len(text)
                if cols["doc_id"]:
                    writer.write_table(pa.table(cols, schema=schema))
        finally:
            writer.close()
        if n_docs == 0:
            raise CorpusError(f"{source_path}: the corpus is empty (no non-empty documents)")
        if n_empty:
            logger.warning("skipped %d empty or whitespace-only documents", n_empty)

        table = docs_table(name)
        with ws.connect() as con:
            con.execute(CORPORA_DDL)
            exists = con.execute("SELECT count(*) FROM corpora WHERE name = ?", [name]).fetchone()[0]
            if exists and not opts.replace:
                raise CorpusError(f"corpus {name!r} already exists: choose another --name or pass --replace")
            con.execute("BEGIN TRANSACTION")
            try:
                if exists:
                    con.execute(f"DROP TABLE IF EXISTS {table}")
                    con.execute("DELETE FROM corpora WHERE name = ?", [name])
                meta_sql = "".join(", " + quote_ident(c) for c in cols_out)
                con.execute(
                    f"""CREATE TABLE {table} AS
                    SELECT doc_id, shard, text, n_chars, content_hash,
                           CASE WHEN min(doc_id) OVER (PARTITION BY content_hash) <> doc_id
                                THEN min(doc_id) OVER (PARTITION BY content_hash) END AS duplicate_of{meta_sql}
                    FROM read_parquet(?) ORDER BY doc_id""",
                    [str(staged)],
                )
                n_dup = con.execute(f"SELECT count(*) FROM {table} WHERE duplicate_of IS NOT NULL").fetchone()[0]
                n_shards = (n_docs + opts.shard_size - 1) // opts.shard_size
                con.execute(
                    """INSERT INTO corpora (name, source_path, format, text_field, n_docs, n_chars, n_shards,
                       shard_size, n_duplicates, n_skipped_empty, metadata_columns)
                       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                    [name, source_path, fmt, opts.text_field, n_docs, n_chars, n_shards, opts.shard_size,
                     n_dup, n_empty, json.dumps(cols_out)],
                )
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
    info = corpus_info(ws, name)
    info["renamed_columns"] = [[f, c] for f, c in zip(meta, cols_out) if f != c]
    logger.info("imported corpus %s: %d documents, %d duplicates", name, info["n_docs"], info["n_duplicates"])
    return info


def import_corpus(ws: Workspace, path: str | Path, name: str, opts: ImportOptions | None = None) -> dict:
    """Import a JSONL / Parquet / CSV file or a folder of .txt/.md files as corpus `name`."""
    opts = opts or ImportOptions()
    validate_name(name, "corpus name")
    path = Path(path).expanduser()
    if not path.exists():
        raise CorpusError(f"{path}: no such file or folder")
    fmt = detect_format(path)
    if fmt != "folder" and path.stat().st_size == 0:
        raise CorpusError(f"{path}: the file is empty")
    reader = {"jsonl": jsonl_batches, "parquet": parquet_batches, "csv": csv_batches, "folder": folder_batches}[fmt]
    meta, batches = reader(path, opts)
    return import_records(ws, name, meta, batches, opts, str(path.resolve()), fmt)


def list_corpora(ws: Workspace) -> list[dict]:
    if not ws.db_path.exists():
        return []
    with ws.connect(read_only=True) as con:
        has = con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'corpora'").fetchone()[0]
        if not has:
            return []
        df = con.execute("SELECT * FROM corpora ORDER BY name").df()
    return df.to_dict("records")


def corpus_info(ws: Workspace, name: str) -> dict:
    validate_name(name, "corpus name")
    for row in list_corpora(ws):
        if row["name"] == name:
            row["metadata_columns"] = json.loads(row["metadata_columns"] or "[]")
            return row
    known = [r["name"] for r in list_corpora(ws)]
    raise CorpusError(f"unknown corpus {name!r} in workspace {ws.root} (known: {known or 'none'}); import it with `stride corpus import`")


def load_documents(ws: Workspace, name: str, columns: list[str] | None = None, shards: list[int] | None = None,
                   limit: int | None = None, doc_ids: list[int] | None = None):
    """Documents of a corpus as a pandas DataFrame ordered by doc_id (parameterised SQL only)."""
    info = corpus_info(ws, name)
    allowed = list(RESERVED_COLUMNS) + info["metadata_columns"]
    cols = columns or allowed
    bad = [c for c in cols if c not in allowed]
    if bad:
        raise CorpusError(f"corpus {name!r} has no column(s) {bad}; available: {allowed}")
    where, params = [], []
    if shards is not None:
        where.append("list_contains(?, shard)")
        params.append([int(s) for s in shards])
    if doc_ids is not None:
        where.append("list_contains(?, doc_id)")
        params.append([int(d) for d in doc_ids])
    sql = "SELECT " + ", ".join(quote_ident(c) for c in cols) + f" FROM {docs_table(name)}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY doc_id"
    if limit is not None:
        sql += " LIMIT ?"
        params.append(int(limit))
    with ws.connect(read_only=True) as con:
        return con.execute(sql, params).df()


def iter_documents(ws: Workspace, name: str, columns: list[str] | None = None, batch_size: int = 5000,
                   shards: list[int] | None = None) -> Iterator:
    """The documents of a corpus as DataFrames of at most `batch_size` rows, in doc_id order (keyset
    pagination: memory is bounded by the batch, not by the corpus; each batch is one short read)."""
    if batch_size < 1:
        raise CorpusError("batch_size must be >= 1")
    info = corpus_info(ws, name)
    allowed = list(RESERVED_COLUMNS) + info["metadata_columns"]
    cols = list(columns or allowed)
    bad = [c for c in cols if c not in allowed]
    if bad:
        raise CorpusError(f"corpus {name!r} has no column(s) {bad}; available: {allowed}")
    select = cols if "doc_id" in cols else ["doc_id", *cols]
    last = -(2 ** 62)
    while True:
        where, params = ["doc_id > ?"], [last]
        if shards is not None:
            where.append("list_contains(?, shard)")
            params.append([int(s) for s in shards])
        sql = ("SELECT " + ", ".join(quote_ident(c) for c in select) + f" FROM {docs_table(name)} WHERE " + " AND ".join(where)
               + " ORDER BY doc_id LIMIT ?")
        with ws.connect(read_only=True) as con:
            df = con.execute(sql, [*params, int(batch_size)]).df()
        if df.empty:
            return
        last = int(df["doc_id"].iloc[-1])
        yield df[cols]
        if len(df) < batch_size:
            return
