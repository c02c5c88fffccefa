"""Every query the dashboard runs: parameterised DuckDB SQL, cached with st.cache_data.

Two sources:
- the workspace database (corpora and documents): short-lived read-only connections through
  `Workspace.connect(read_only=True)`, which retries while a job holds the write lock;
- a run's Parquet files (attributions, contamination, selection): an in-memory DuckDB connection
  reading the file, so no database lock is involved at all.

Cached functions take a `version` argument (the file's modification time): results refresh as soon as
a job rewrites the file, and the TTL bounds how stale anything else can get. Every value is a bound parameter; identifiers
(corpus tables, metadata columns, which come from input files) are quoted by
`stride_core.store.identifiers.quote_ident` alone and never interpolated any other way.
"""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pandas as pd
import streamlit as st

from stride_core.store.corpus import RESERVED_COLUMNS, docs_table
from stride_core.errors import StrideError
from stride_core.store.identifiers import quote_ident
from stride_core.runs.jobs import RESULT_FILES
from stride_core.store.workspace import Workspace

TTL_S = 30
LOCK_TIMEOUT_S = 8.0


def _ws(root: str) -> Workspace:
    return Workspace(root)


def db_version(root: str) -> float:
    """Changes whenever the workspace database (or its WAL) is written."""
    p = _ws(root).db_path
    v = 0.0
    for f in (p, p.with_name(p.name + ".wal")):
        try:
            v = max(v, f.stat().st_mtime)
        except OSError:
            pass
    return v


def _db_df(root: str, sql: str, params: list | None = None) -> pd.DataFrame:
    with _ws(root).connect(read_only=True, timeout_s=LOCK_TIMEOUT_S) as con:
        return con.execute(sql, params or []).df()


# ------------------------------------------------------------------------------------ corpora


@st.cache_data(ttl=TTL_S, show_spinner=False)
def corpora(root: str, version: float) -> pd.DataFrame:
    """One row per corpus; empty frame when the workspace has no database or no corpus yet."""
    cols = ["name", "n_docs", "n_chars", "n_shards", "shard_size", "n_duplicates", "format", "source_path", "metadata_columns"]
    if not _ws(root).db_path.exists():
        return pd.DataFrame(columns=cols)
    has = _db_df(root, "SELECT count(*) AS n FROM information_schema.tables WHERE table_name = 'corpora'")
    if not int(has["n"].iloc[0]):
        return pd.DataFrame(columns=cols)
    df = _db_df(root, f"SELECT {', '.join(cols)} FROM corpora ORDER BY name")
    df["metadata_columns"] = df["metadata_columns"].map(lambda s: json.loads(s or "[]"))
    # A corpus row whose table is gone (interrupted replace) is not offered.
    tables = set(_db_df(root, "SELECT table_name FROM information_schema.tables")["table_name"])
    return df[df["name"].map(lambda n: f"docs__{n}" in tables)].reset_index(drop=True)


def corpus_row(root: str, name: str) -> dict | None:
    df = corpora(root, db_version(root))
    hit = df[df["name"] == name]
    return hit.iloc[0].to_dict() if len(hit) else None


@st.cache_data(ttl=TTL_S, show_spinner=False)
def shard_stats(root: str, corpus: str, version: float) -> pd.DataFrame:
    return _db_df(root, f"""SELECT shard, count(*) AS n_docs, sum(n_chars) AS n_chars,
                               sum(strlen(text)) AS n_bytes
                            FROM {docs_table(corpus)} GROUP BY shard ORDER BY shard""")


def _like_pattern(text: str) -> str:
    esc = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{esc}%"


def _columns(root: str, corpus: str) -> list[str]:
    row = corpus_row(root, corpus)
    meta = list(row["metadata_columns"]) if row else []
    return ["doc_id", "shard", "n_chars", *meta, "duplicate_of", "text"]


@st.cache_data(ttl=TTL_S, show_spinner=False)
def search_documents(root: str, corpus: str, query: str, shards: tuple[int, ...] | None, limit: int, offset: int,
                     version: float) -> tuple[int, pd.DataFrame]:
    """(total matches, one page of documents) whose text contains `query` (case-insensitive), or whose
    doc_id equals it when it is a number."""
    where, params = [], []
    q = (query or "").strip()
    if q:
        if q.isdigit():
            where.append("(text ILIKE ? ESCAPE '\\' OR doc_id = ?)")
            params += [_like_pattern(q), int(q)]
        else:
            where.append("text ILIKE ? ESCAPE '\\'")
            params.append(_like_pattern(q))
    if shards is not None:
        where.append("list_contains(?, shard)")
        params.append([int(s) for s in shards])
    clause = (" WHERE " + " AND ".join(where)) if where else ""
    table = docs_table(corpus)
    total = int(_db_df(root, f"SELECT count(*) AS n FROM {table}{clause}", params)["n"].iloc[0])
    cols = ", ".join(quote_ident(c) for c in _columns(root, corpus))
    page = _db_df(root, f"SELECT {cols} FROM {table}{clause} ORDER BY doc_id LIMIT ? OFFSET ?",
                  params + [int(limit), int(offset)])
    return total, page


@st.cache_data(ttl=TTL_S, show_spinner=False)
def documents(root: str, corpus: str, doc_ids: tuple[int, ...], version: float) -> pd.DataFrame:
    """Full rows (text + metadata) of the given documents."""
    if not doc_ids:
        return pd.DataFrame(columns=_columns(root, corpus))
    cols = ", ".join(quote_ident(c) for c in _columns(root, corpus))
    return _db_df(root, f"SELECT {cols} FROM {docs_table(corpus)} WHERE list_contains(?, doc_id) ORDER BY doc_id",
                  [[int(d) for d in doc_ids]])


def safe_documents(root: str, corpus: str | None, doc_ids: list[int]) -> tuple[pd.DataFrame | None, str | None]:
    """Documents or (None, reason) when the corpus is unknown or the database is busy."""
    if not corpus:
        return None, "the run does not record its corpus"
    try:
        if corpus_row(root, corpus) is None:
            return None, f"corpus {corpus!r} is not in this workspace any more"
        return documents(root, corpus, tuple(sorted(set(int(d) for d in doc_ids))), db_version(root)), None
    except StrideError as exc:
        return None, str(exc)


# ---------------------------------------------------------------------------------- run files


def result_path(root: str, run: str, kind: str) -> Path:
    return _ws(root).run_dir(run) / RESULT_FILES[kind]


def file_version(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _pq_df(path: Path, sql: str, params: list | None = None) -> pd.DataFrame:
    """Run `sql` with the Parquet file available as the view `t` (in-memory DuckDB, no lock)."""
    con = duckdb.connect()
    try:
        con.execute("CREATE VIEW t AS SELECT * FROM read_parquet(?)", [str(path)])
    except duckdb.Error:
        # Older DuckDB versions do not bind parameters in DDL; the path comes from our own run folder.
        con.execute("CREATE VIEW t AS SELECT * FROM read_parquet('" + str(path).replace("'", "''") + "')")
    try:
        return con.execute(sql, params or []).df()
    finally:
        con.close()


@st.cache_data(ttl=TTL_S, show_spinner=False)
def parquet_columns(path: str, version: float) -> list[str]:
    return list(_pq_df(Path(path), "DESCRIBE t")["column_name"])


def _direction_expr(cols: list[str]) -> str:
    return "direction" if "direction" in cols else "CASE WHEN score >= 0 THEN 'helpful' ELSE 'harmful' END"


# attributions.parquet columns that are not corpus metadata (stride_core.runs.pipeline PROMPT_USE_COLUMNS, HYBRID_COLUMNS)
RESULT_ONLY_COLUMNS = ("prompt_used", "truncated", "continuation_given", "lexical", "hybrid_z")


def attribution_meta_columns(path: str, version: float) -> list[str]:
    """Corpus metadata columns carried in attributions.parquet (e.g. source, object)."""
    core = {"query_id", "prompt", "continuation", "rank", "doc_id", "score", "snippet", "direction", "query_loss",
            *RESERVED_COLUMNS, *RESULT_ONLY_COLUMNS}
    return [c for c in parquet_columns(path, version) if c not in core]


@st.cache_data(ttl=TTL_S, show_spinner=False)
def run_queries(path: str, version: float) -> pd.DataFrame:
    """One row per query: query_id, prompt, continuation, number of ranked documents."""
    cols = parquet_columns(path, version)
    cont = "any_value(continuation)" if "continuation" in cols else "NULL"
    loss = "any_value(query_loss)" if "query_loss" in cols else "NULL"
    used = "any_value(prompt_used)" if "prompt_used" in cols else "NULL"
    cut = "bool_or(truncated)" if "truncated" in cols else "false"
    given = "bool_or(continuation_given)" if "continuation_given" in cols else "false"
    return _pq_df(Path(path), f"""SELECT CAST(query_id AS VARCHAR) AS query_id, any_value(prompt) AS prompt,
                                        {cont} AS continuation, {loss} AS query_loss,
                                        {used} AS prompt_used, {cut} AS truncated, {given} AS continuation_given,
                                        count(*) AS n_rows, max(score) AS top_score
                                 FROM t GROUP BY query_id ORDER BY query_id""")


@st.cache_data(ttl=TTL_S, show_spinner=False)
def generic_documents(path: str, version: float) -> pd.DataFrame:
    """The run's "helps every prompt" documents (generic.parquet), helpful first, by rank."""
    return _pq_df(Path(path), "SELECT * FROM t ORDER BY direction DESC, rank")


@st.cache_data(ttl=TTL_S, show_spinner=False)
def rankings(path: str, query_id: str, version: float) -> pd.DataFrame:
    """All ranked rows of one query with a `direction` column, helpful first, by rank."""
    cols = parquet_columns(path, version)
    select = "*" if "direction" in cols else f"*, {_direction_expr(cols)} AS direction"
    # 'helpful' sorts after 'harmful': DESC puts the helpful rows first.
    return _pq_df(Path(path), f"SELECT {select} FROM t WHERE CAST(query_id AS VARCHAR) = ? ORDER BY direction DESC, rank, score DESC",
                  [str(query_id)])


@st.cache_data(ttl=TTL_S, show_spinner=False)
def all_scores(path: str, version: float) -> pd.DataFrame:
    cols = parquet_columns(path, version)
    return _pq_df(Path(path), f"SELECT query_id, doc_id, score, {_direction_expr(cols)} AS direction FROM t")


@st.cache_data(ttl=TTL_S, show_spinner=False)
def recurring_documents(path: str, direction: str, min_queries: int, version: float) -> pd.DataFrame:
    """Documents ranked (in `direction`) for at least `min_queries` different queries."""
    cols = parquet_columns(path, version)
    meta = [c for c in attribution_meta_columns(path, version)][:3]
    meta_sql = "".join(f", any_value({quote_ident(c)}) AS {quote_ident(c)}" for c in meta)
    snippet = ", any_value(snippet) AS snippet" if "snippet" in cols else ""
    return _pq_df(Path(path), f"""SELECT doc_id, count(DISTINCT query_id) AS n_queries, avg(score) AS mean_score,
                                        min(score) AS min_score, max(score) AS max_score{meta_sql}{snippet}
                                 FROM t WHERE {_direction_expr(cols)} = ?
                                 GROUP BY doc_id HAVING count(DISTINCT query_id) >= ?
                                 ORDER BY n_queries DESC, abs(avg(score)) DESC, doc_id LIMIT 200""",
                  [direction, int(min_queries)])


@st.cache_data(ttl=TTL_S, show_spinner=False)
def net_influence(path: str, version: float) -> pd.DataFrame:
    """Per document over all queries of a run: helpful and harmful appearances and summed score."""
    cols = parquet_columns(path, version)
    d = _direction_expr(cols)
    meta = attribution_meta_columns(path, version)[:3]
    meta_sql = "".join(f", any_value({quote_ident(c)}) AS {quote_ident(c)}" for c in meta)
    return _pq_df(Path(path), f"""SELECT doc_id, sum(score) AS total_score,
                                        count(*) FILTER (WHERE {d} = 'helpful') AS n_helpful,
                                        count(*) FILTER (WHERE {d} = 'harmful') AS n_harmful{meta_sql}
                                 FROM t GROUP BY doc_id ORDER BY total_score, doc_id""")


@st.cache_data(ttl=TTL_S, show_spinner=False)
def result_table(path: str, version: float) -> pd.DataFrame:
    """A whole result file (contamination / selection) as a DataFrame."""
    return _pq_df(Path(path), "SELECT * FROM t")


def to_csv_bytes(df: pd.DataFrame) -> bytes:
    return df.to_csv(index=False).encode("utf-8")


@st.cache_data(show_spinner=False, max_entries=64)
def read_json_file(path: str, version: float) -> dict:
    """A small JSON object beside a result file (e.g. selection_args.json); {} when missing or unreadable.
    `version` (the file's mtime) keys the cache, so a re-run audit is read afresh."""
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return obj if isinstance(obj, dict) else {}
