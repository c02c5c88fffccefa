"""Field names from input files never reach SQL unescaped (issue 18, items 1-2): crafted JSONL keys, CSV
headers and Parquet columns are renamed to safe columns and reported, values are kept, and every corpus
imported before is still intact."""

import json
import subprocess
import sys

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stride_core.store.corpus import ImportOptions, import_corpus, list_corpora, load_documents
from stride_core.errors import CorpusError
from stride_core.store.identifiers import quote_ident, safe_column_names

DROP = 'x" FROM (SELECT 1); DROP TABLE corpora; COMMIT; --'
READ = "x\" || read_text('/etc/hostname') || \""
READ_CALL = "read_text('/etc/hostname')"
CRAFTED = {  # key -> the column it is stored as
    'x"y': "x_y",
    DROP: "x_FROM_SELECT_1_DROP_TABLE_corpora_COMMIT",
    READ: "x_read_text_etc_hostname",
    READ_CALL: "read_text_etc_hostname",
    "": "unnamed",
}


def _good(ws, tmp_path):
    src = tmp_path / "good.jsonl"
    src.write_text("".join(json.dumps({"text": f"good {i}", "source": f"s{i}"}) + "\n" for i in range(3)))
    import_corpus(ws, src, "good")


def _earlier_intact(ws):
    assert "good" in [r["name"] for r in list_corpora(ws)]
    df = load_documents(ws, "good")
    assert df["text"].tolist() == ["good 0", "good 1", "good 2"] and df["source"].tolist() == ["s0", "s1", "s2"]


def _write(tmp_path, fmt, names, rows):
    """A file of format `fmt` with columns `names` (repeats allowed where the format allows them)."""
    if fmt == "jsonl":
        p = tmp_path / "crafted.jsonl"
        p.write_text("".join(json.dumps(dict(zip(names, r))) + "\n" for r in rows))
    elif fmt == "csv":
        p = tmp_path / "crafted.csv"
        import csv

        with open(p, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(names)
            w.writerows(rows)
    else:
        p = tmp_path / "crafted.parquet"
        pq.write_table(pa.table([pa.array([r[i] for r in rows]) for i in range(len(names))], names=names), p)
    return p


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
@pytest.mark.parametrize("key", list(CRAFTED), ids=["quote", "drop-table", "read-text-concat", "read-text-call", "empty"])
def test_crafted_field_names_are_renamed_and_earlier_corpora_survive(ws, tmp_path, fmt, key):
    _good(ws, tmp_path)
    p = _write(tmp_path, fmt, ["text", key], [["doc a", "value a"], ["doc b", "value b"]])
    info = import_corpus(ws, p, "crafted")
    col = CRAFTED[key]
    assert info["metadata_columns"] == [col] and info["renamed_columns"] == [[key, col]]
    df = load_documents(ws, "crafted")
    assert df[col].tolist() == ["value a", "value b"]  # the value, not a file's content or an SQL result
    assert df["text"].tolist() == ["doc a", "doc b"]
    _earlier_intact(ws)
    # A re-import with --replace works (the catalogue and the table are consistent).
    assert import_corpus(ws, p, "crafted", ImportOptions(replace=True))["n_docs"] == 2
    _earlier_intact(ws)


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_case_colliding_fields_are_all_kept(ws, tmp_path, fmt):
    _good(ws, tmp_path)
    p = _write(tmp_path, fmt, ["text", "Source", "source", "TEXT", "Doc_ID"], [["a", "x", "y", "t", "7"]])
    info = import_corpus(ws, p, "cc")
    assert info["metadata_columns"] == ["Source", "source_2", "meta_TEXT", "meta_Doc_ID"]
    assert info["renamed_columns"] == [["source", "source_2"], ["TEXT", "meta_TEXT"], ["Doc_ID", "meta_Doc_ID"]]
    row = load_documents(ws, "cc").iloc[0]
    assert (row["Source"], row["source_2"], row["meta_TEXT"], row["meta_Doc_ID"], row["text"]) == ("x", "y", "t", "7", "a")
    _earlier_intact(ws)


def test_case_colliding_keys_on_different_lines_are_kept(ws, tmp_path):
    p = tmp_path / "lines.jsonl"
    p.write_text(json.dumps({"text": "a", "Source": "x"}) + "\n" + json.dumps({"text": "b", "source": "y"}) + "\n")
    import_corpus(ws, p, "lines")
    df = load_documents(ws, "lines")
    assert df["Source"].tolist()[0] == "x" and df["source_2"].tolist()[1] == "y"


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_repeated_column_names_keep_both_values(ws, tmp_path, fmt):
    p = _write(tmp_path, fmt, ["text", "a", "a", ""], [["doc", "first", "second", "third"]])
    info = import_corpus(ws, p, "rep")
    assert info["metadata_columns"] == ["a", "a_2", "unnamed"]
    row = load_documents(ws, "rep").iloc[0]
    assert (row["a"], row["a_2"], row["unnamed"]) == ("first", "second", "third")


def test_repeated_text_column_is_an_error(ws, tmp_path):
    _good(ws, tmp_path)
    p = _write(tmp_path, "parquet", ["text", "text"], [["a", "b"]])
    with pytest.raises(CorpusError, match="2 columns are named 'text'"):
        import_corpus(ws, p, "rt")
    _earlier_intact(ws)


def test_duplicate_key_in_one_json_object_is_an_error(ws, tmp_path):
    _good(ws, tmp_path)
    p = tmp_path / "dup.jsonl"
    p.write_text('{"text": "ok"}\n{"text": "a", "source": "x", "source": "y"}\n')
    with pytest.raises(CorpusError, match=r"dup.jsonl:2: key 'source' appears twice"):
        import_corpus(ws, p, "dup")
    _earlier_intact(ws)
    assert [r["name"] for r in list_corpora(ws)] == ["good"]


def test_renaming_is_deterministic_and_bounded():
    fields = ["ok", "OK", "a b", "a-b", "a_b", "", "", "année", "9lives", "x" * 100, "x" * 100, "doc_id", "meta_doc_id"]
    names = safe_column_names(fields, ("doc_id",))
    assert names == safe_column_names(fields, ("doc_id",))
    got = [names[i] for i in range(len(fields))]
    assert got[:10] == ["ok", "OK_2", "a_b", "a_b_2", "a_b_3", "unnamed", "unnamed_2", "annee", "9lives", "x" * 64]
    assert got[10] == "x" * 62 + "_2" and got[11:] == ["meta_doc_id", "meta_doc_id_2"]
    assert len({g.lower() for g in got}) == len(got) and all(len(g) <= 64 for g in got)


def test_quote_ident_escapes_quotes():
    con = duckdb.connect()
    con.execute("CREATE TABLE t AS SELECT 1 AS " + quote_ident(DROP) + ", 2 AS " + quote_ident('a"b'))
    assert [r[0] for r in con.execute("DESCRIBE t").fetchall()] == [DROP, 'a"b']
    assert con.execute("SELECT " + quote_ident(DROP) + " FROM t").fetchone() == (1,)
    for bad in ("", "a\x00b", None):
        with pytest.raises(ValueError):
            quote_ident(bad)


def test_cli_import_reports_renamed_fields_and_list_is_intact(tmp_path):
    ws = tmp_path / "ws"
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"text": "good", "source": "s"}) + "\n")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "doc", DROP: "v", "Source": "x", "source": "y"}) + "\n")

    def stride(*a):
        return subprocess.run([sys.executable, "-m", "stride_core.cli", "--workspace", str(ws), *a],
                              capture_output=True, text=True, timeout=300)

    assert stride("corpus", "import", str(good), "--name", "good").returncode == 0
    out = stride("corpus", "import", str(bad), "--name", "bad")
    assert out.returncode == 0, out.stderr
    assert "renamed field 'x\" FROM (SELECT 1); DROP TABLE corpora; COMMIT; --' -> column " \
           "'x_FROM_SELECT_1_DROP_TABLE_corpora_COMMIT'" in out.stdout
    assert "renamed field 'source' -> column 'source_2'" in out.stdout
    assert "renamed 2 field(s)" in out.stderr  # logged too
    def listed():
        return [line.split()[0] for line in stride("corpus", "list").stdout.splitlines()[1:]]

    assert listed() == ["bad", "good"]
    dup = tmp_path / "dup.jsonl"
    dup.write_text('{"text": "a", "source": "x", "source": "y"}\n')
    res = stride("corpus", "import", str(dup), "--name", "dup")
    assert res.returncode == 2 and res.stderr.strip().startswith("error:") and len(res.stderr.strip().splitlines()) == 1
    assert listed() == ["bad", "good"]
    shown = stride("corpus", "show", "good").stdout
    assert '"n_docs": 1' in shown and "good" in shown


def test_dashboard_queries_quote_legacy_column_names(ws, tmp_path):
    """A corpus imported before names were sanitized may hold any column name: the dashboard quotes it."""
    pytest.importorskip("streamlit")
    from dashboard import queries

    _good(ws, tmp_path)
    with ws.connect() as con:
        con.execute('CREATE TABLE "docs__legacy" AS SELECT 0::BIGINT AS doc_id, 0 AS shard, \'legacy text\' AS text, '
                    '11::BIGINT AS n_chars, \'h\' AS content_hash, NULL::BIGINT AS duplicate_of, \'v\' AS ' + quote_ident(DROP))
        con.execute("INSERT INTO corpora (name, source_path, format, text_field, n_docs, n_chars, n_shards, shard_size, "
                    "n_duplicates, n_skipped_empty, metadata_columns) VALUES ('legacy', 'x', 'jsonl', 'text', 1, 11, 1, "
                    "1000, 0, 0, ?)", [json.dumps([DROP])])
    root = str(ws.root)
    total, page = queries.search_documents(root, "legacy", "legacy", None, 10, 0, queries.db_version(root))
    assert total == 1 and page[DROP].tolist() == ["v"]
    assert queries.documents(root, "legacy", (0,), queries.db_version(root))[DROP].tolist() == ["v"]
    path = tmp_path / "attributions.parquet"
    pd.DataFrame({"query_id": ["q"], "doc_id": [0], "score": [1.0], "direction": ["helpful"], DROP: ["v"]}).to_parquet(path)
    rec = queries.recurring_documents(str(path), "helpful", 1, 1.0)
    net = queries.net_influence(str(path), 1.0)
    assert rec[DROP].tolist() == ["v"] and net[DROP].tolist() == ["v"]
    _earlier_intact(ws)
