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
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import CorpusError
from .identifiers import quote_ident, safe_column_names
from .workspace import Workspace, validate_name

logger = logging.getLogger(__name__)

RESERVED_COLUMNS = ("doc_id", "shard", "text", "n_chars", "content_hash", "duplicate_of")
TEXT_SUFFIXES = (".txt", ".md")
_BATCH_ROWS = 4096

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


@dataclass
class ImportOptions:
    text_field: str = "text"
    shard_size: int = 1000
    replace: bool = False
    encoding: str = "utf-8"  # of JSONL, CSV/TSV and text files (Parquet strings are always UTF-8)

    def __post_init__(self):
        import codecs

        try:
            self.encoding = codecs.lookup(self.encoding).name
        except (LookupError, TypeError) as exc:
            raise CorpusError(f"--encoding {self.encoding!r} is not a known text encoding (for example utf-8, latin-1, cp1252)") from exc
        if not isinstance(self.shard_size, int) or self.shard_size < 1:
            raise CorpusError(f"--shard-size must be a positive integer, got {self.shard_size!r}")
        if not self.text_field:
            raise CorpusError("--text-field must be a non-empty column name")


# ----------------------------------------------------------------------------------------------
# Readers: each returns (metadata field names, batches). A batch is a list of records: dicts {field:
# value} with the text under options.text_field, or, where field names can repeat (CSV headers, Parquet
# columns), tuples (text, *metadata values in field order).


def detect_format(path: Path) -> str:
    if path.is_dir():
        return "folder"
    suffix = "".join(path.suffixes[-1:]).lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix in (".csv", ".tsv"):
        return "csv"
    raise CorpusError(
        f"unknown corpus format for {path.name!r}: use .jsonl, .parquet, .csv or a folder of .txt/.md files"
    )


def _decode_error(where: str, exc: UnicodeDecodeError, encoding: str) -> CorpusError:
    name = "UTF-8" if encoding == "utf-8" else encoding
    return CorpusError(f"{where}: not valid {name} ({exc.reason} at byte {exc.start}); re-encode the file as UTF-8 "
                       f"or pass its encoding with --encoding (for example latin-1 or cp1252)")


class _DuplicateKey(Exception):
    def __init__(self, key):
        self.key = key


def _unique_keys(pairs):
    obj = {}
    for k, v in pairs:
        if k in obj:
            raise _DuplicateKey(k)
        obj[k] = v
    return obj


def _jsonl_rows(path: Path, encoding: str = "utf-8") -> Iterator[tuple[int, dict]]:
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                line = raw.decode(encoding)
                if lineno == 1:
                    line = line.removeprefix("\ufeff")  # a byte-order mark (Windows editors) is not part of the JSON
            except UnicodeDecodeError as exc:
                raise _decode_error(f"{path}:{lineno}", exc, encoding) from exc
            if not line.strip():
                continue
            try:
                obj = json.loads(line, object_pairs_hook=_unique_keys)
            except _DuplicateKey as exc:
                raise CorpusError(f"{path}:{lineno}: key {exc.key!r} appears twice in one object (a JSON parser would keep "
                                  f"only the last value); rename or remove one of them") from None
            except json.JSONDecodeError as exc:
                raise CorpusError(f"{path}:{lineno}: corrupt JSON line ({exc.msg} at column {exc.colno})") from exc
            if not isinstance(obj, dict):
                raise CorpusError(f"{path}:{lineno}: each JSONL line must be an object, got {type(obj).__name__}")
            yield lineno, obj


def _jsonl_batches(path: Path, opts: ImportOptions) -> tuple[list[str], Iterator[list[dict]]]:
    # First streaming pass: validate every line and collect the union of keys (metadata columns).
    keys: dict[str, None] = {}
    n = 0
    for lineno, obj in _jsonl_rows(path, opts.encoding):
        if opts.text_field not in obj:
            raise CorpusError(f"{path}:{lineno}: missing text field {opts.text_field!r} (fields: {sorted(obj)[:8]}); pass --text-field")
        if not isinstance(obj[opts.text_field], str):
            raise CorpusError(f"{path}:{lineno}: text field {opts.text_field!r} is {type(obj[opts.text_field]).__name__}, not a string")
        for k in obj:
            keys.setdefault(k, None)
        n += 1
    meta = [k for k in keys if k != opts.text_field]

    def gen():
        batch = []
        for _, obj in _jsonl_rows(path, opts.encoding):
            batch.append(obj)
            if len(batch) >= _BATCH_ROWS:
                yield batch
                batch = []
        if batch:
            yield batch

    return meta, gen()


def _arrow_batches(batches: Iterable[pa.RecordBatch], schema: pa.Schema, path: Path, opts: ImportOptions):
    names = list(schema.names)
    if opts.text_field not in names:
        raise CorpusError(f"{path}: no column {opts.text_field!r} (columns: {names[:12]}); pass --text-field")
    if names.count(opts.text_field) > 1:
        raise CorpusError(f"{path}: {names.count(opts.text_field)} columns are named {opts.text_field!r}: rename all but "
                          f"the text column, or pass --text-field")
    ti = names.index(opts.text_field)
    ttype = schema.field(ti).type
    if not (pa.types.is_string(ttype) or pa.types.is_large_string(ttype)):
        raise CorpusError(f"{path}: column {opts.text_field!r} has type {ttype}, not a string")
    mi = [i for i in range(len(names)) if i != ti]
    meta = [names[i] for i in mi]

    def gen():
        offset = 0
        for rb in batches:
            # By position, not to_pylist(): that keeps one value of two same-named columns.
            texts = rb.column(ti).to_pylist()
            for i, t in enumerate(texts):
                if t is None:
                    raise CorpusError(f"{path}: row {offset + i + 1}: text field {opts.text_field!r} is null")
            offset += len(texts)
            yield list(zip(texts, *(rb.column(i).to_pylist() for i in mi)))

    return meta, gen()


def _parquet_batches(path: Path, opts: ImportOptions):
    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise CorpusError(f"{path}: not a readable Parquet file ({exc})") from exc
    return _arrow_batches(pf.iter_batches(batch_size=_BATCH_ROWS), pf.schema_arrow, path, opts)


def _csv_batches(path: Path, opts: ImportOptions):
    import pyarrow.csv as pcsv

    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        reader = pcsv.open_csv(
            path,
            read_options=pcsv.ReadOptions(encoding=opts.encoding),
            parse_options=pcsv.ParseOptions(delimiter=delimiter, newlines_in_values=True),
            convert_options=pcsv.ConvertOptions(column_types={opts.text_field: pa.string()}),
        )
        schema = reader.schema
    except pa.ArrowInvalid as exc:
        hint = "; pass the file's encoding with --encoding (for example latin-1)" if "UTF8" in str(exc) else ""
        raise CorpusError(f"{path}: not a readable CSV file ({exc}){hint}") from exc

    def safe(it):
        try:
            yield from it
        except pa.ArrowInvalid as exc:
            raise CorpusError(f"{path}: CSV parse error ({exc}); check the quoting, and the encoding ({opts.encoding}; --encoding)") from exc

    return _arrow_batches(safe(reader), schema, path, opts)


def _folder_batches(path: Path, opts: ImportOptions):
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
    if not files:
        raise CorpusError(f"{path}: folder has no .txt or .md files")

    def gen():
        batch = []
        for f in files:
            try:
                text = f.read_bytes().decode(opts.encoding).removeprefix("\ufeff")
            except UnicodeDecodeError as exc:
                raise _decode_error(str(f), exc, opts.encoding) from exc
            batch.append({opts.text_field: text, "source": str(f.relative_to(path))})
            if len(batch) >= _BATCH_ROWS:
                yield batch
                batch = []
        if batch:
            yield batch

    return ["source"], gen()


def _meta_column_names(meta: list[str]) -> list[str]:
    """Stored column name of each input field (in order), logging every renaming."""
    names = safe_column_names(meta, RESERVED_COLUMNS)
    cols = [names[i] for i in range(len(meta))]
    renamed = [f"{f!r} -> {c!r}" for f, c in zip(meta, cols) if f != c]
    if renamed:
        logger.warning("renamed %d field(s) (column names must be non-empty letters, digits and '_', unique ignoring "
                       "case, and not one of %s): %s", len(renamed), ", ".join(RESERVED_COLUMNS), "; ".join(renamed))
    return cols


def _to_str(v):
    if v is None or isinstance(v, str):
        return v
    if isinstance(v, (dict, list)):
        return json.dumps(v, ensure_ascii=False, sort_keys=True, default=str)
    return str(v)


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
    cols_out = _meta_column_names(meta)
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
                        cols[c].append(_to_str(v))
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
    reader = {"jsonl": _jsonl_batches, "parquet": _parquet_batches, "csv": _csv_batches, "folder": _folder_batches}[fmt]
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
