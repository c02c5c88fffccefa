"""Readers of the corpus import formats: JSONL, Parquet, CSV and folders of .txt / .md files, each streamed as
batches of row dicts (`_BATCH_ROWS` at a time) with the metadata fields mapped to safe column names.
Decoding and shape errors name the file, the line or row and what to do (corpus.import_corpus calls these).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import CorpusError
from .identifiers import safe_column_names

logger = logging.getLogger(__name__)



RESERVED_COLUMNS = ("doc_id", "shard", "text", "n_chars", "content_hash", "duplicate_of")


TEXT_SUFFIXES = (".txt", ".md")


_BATCH_ROWS = 4096


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


def jsonl_batches(path: Path, opts: ImportOptions) -> tuple[list[str], Iterator[list[dict]]]:
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


def parquet_batches(path: Path, opts: ImportOptions):
    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise CorpusError(f"{path}: not a readable Parquet file ({exc})") from exc
    return _arrow_batches(pf.iter_batches(batch_size=_BATCH_ROWS), pf.schema_arrow, path, opts)


def csv_batches(path: Path, opts: ImportOptions):
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


def folder_batches(path: Path, opts: ImportOptions):
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


def meta_column_names(meta: list[str]) -> list[str]:
    """Stored column name of each input field (in order), logging every renaming."""
    names = safe_column_names(meta, RESERVED_COLUMNS)
    cols = [names[i] for i in range(len(meta))]
    renamed = [f"{f!r} -> {c!r}" for f, c in zip(meta, cols) if f != c]
    if renamed:
        logger.warning("renamed %d field(s) (column names must be non-empty letters, digits and '_', unique ignoring "
                       "case, and not one of %s): %s", len(renamed), ", ".join(RESERVED_COLUMNS), "; ".join(renamed))
    return cols


def to_str(v):
    if v is None or isinstance(v, str):
        return v
    if isinstance(v, (dict, list)):
        return json.dumps(v, ensure_ascii=False, sort_keys=True, default=str)
    return str(v)
