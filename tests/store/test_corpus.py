import json

import pandas as pd
import pytest

from stride_core.store.corpus import ImportOptions, corpus_info, import_corpus, list_corpora, load_documents
from stride_core.errors import CorpusError, StrideError


def _docs(n=5):
    return [{"text": f"document number {i} about topic {i % 3}", "source": f"src{i % 2}", "year": 2000 + i} for i in range(n)]


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_import_jsonl_keeps_metadata_and_records_duplicates(ws, tmp_path):
    rows = _docs(5) + [_docs(1)[0]]  # an exact duplicate of doc 0
    info = import_corpus(ws, _write_jsonl(tmp_path / "c.jsonl", rows), "c1", ImportOptions(shard_size=2))
    assert info["n_docs"] == 6 and info["n_shards"] == 3 and info["n_duplicates"] == 1
    assert info["metadata_columns"] == ["source", "year"]
    df = load_documents(ws, "c1")
    assert df["doc_id"].tolist() == list(range(6))
    assert df["shard"].tolist() == [0, 0, 1, 1, 2, 2]
    assert df.loc[5, "duplicate_of"] == 0 and pd.isna(df.loc[0, "duplicate_of"])
    assert df.loc[1, "source"] == "src1" and df.loc[1, "n_chars"] == len(rows[1]["text"])
    assert df.loc[0, "content_hash"] == df.loc[5, "content_hash"]


def test_import_parquet_csv_folder(ws, tmp_path):
    df = pd.DataFrame(_docs(4)).rename(columns={"text": "body"})
    df.to_parquet(tmp_path / "c.parquet")
    df.to_csv(tmp_path / "c.csv", index=False)
    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("alpha text", encoding="utf-8")
    (folder / "sub" / "b.md").write_text("# beta\nmarkdown text", encoding="utf-8")
    (folder / "ignored.bin").write_bytes(b"\x00\x01")
    a = import_corpus(ws, tmp_path / "c.parquet", "pq", ImportOptions(text_field="body"))
    b = import_corpus(ws, tmp_path / "c.csv", "csv", ImportOptions(text_field="body"))
    c = import_corpus(ws, folder, "folder")
    assert a["n_docs"] == b["n_docs"] == 4 and c["n_docs"] == 2
    assert load_documents(ws, "pq")["text"].tolist() == load_documents(ws, "csv")["text"].tolist()
    assert load_documents(ws, "folder")["source"].tolist() == ["a.txt", "sub/b.md"]
    assert {r["name"] for r in list_corpora(ws)} == {"pq", "csv", "folder"}


def test_reserved_field_names_are_renamed(ws, tmp_path):
    rows = [{"text": "hello world", "doc_id": "x-1", "shard": 7}]
    info = import_corpus(ws, _write_jsonl(tmp_path / "r.jsonl", rows), "r")
    assert info["metadata_columns"] == ["meta_doc_id", "meta_shard"]
    assert load_documents(ws, "r")["meta_doc_id"].tolist() == ["x-1"]


@pytest.mark.parametrize(
    "content, fragment",
    [
        (b"", "empty"),
        (b'{"text": "ok"}\n{not json}\n', ":2: corrupt JSON"),
        (b'{"body": "no text field"}\n', "missing text field"),
        (b'{"text": 42}\n', "not a string"),
        (b'{"text": "caf\xe9"}\n', "not valid UTF-8"),
        (b'["a list"]\n', "must be an object"),
        (b'{"text": "   "}\n', "corpus is empty"),
    ],
)
def test_bad_jsonl_fails_cleanly_and_keeps_existing(ws, tmp_path, content, fragment):
    import_corpus(ws, _write_jsonl(tmp_path / "good.jsonl", _docs(3)), "good")
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(content)
    with pytest.raises(CorpusError, match=fragment):
        import_corpus(ws, bad, "bad")
    assert [r["name"] for r in list_corpora(ws)] == ["good"]
    assert len(load_documents(ws, "good")) == 3
    assert not list(ws.root.glob(".import-*")), "staging files must be cleaned up"


def test_other_bad_inputs(ws, tmp_path):
    with pytest.raises(CorpusError, match="no such file"):
        import_corpus(ws, tmp_path / "missing.jsonl", "m")
    (tmp_path / "x.xlsx").write_text("zz")
    with pytest.raises(CorpusError, match="unknown corpus format"):
        import_corpus(ws, tmp_path / "x.xlsx", "m")
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(CorpusError, match="not a readable Parquet"):
        import_corpus(ws, tmp_path / "bad.parquet", "m")
    pd.DataFrame({"text": [1, 2]}).to_parquet(tmp_path / "ints.parquet")
    with pytest.raises(CorpusError, match="not a string"):
        import_corpus(ws, tmp_path / "ints.parquet", "m")
    (tmp_path / "bad.csv").write_bytes(b"text,source\n\"caf\xe9\",a\n")
    with pytest.raises(CorpusError):
        import_corpus(ws, tmp_path / "bad.csv", "m")
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "a.txt").write_bytes(b"\xff\xfe bad")
    with pytest.raises(CorpusError, match="not valid UTF-8"):
        import_corpus(ws, folder, "m")
    with pytest.raises(StrideError, match="invalid corpus name"):
        import_corpus(ws, folder, "bad name; drop table")
    assert list_corpora(ws) == []


def test_byte_order_mark_is_not_part_of_the_first_document(ws, tmp_path):
    (tmp_path / "b.jsonl").write_bytes(b'\xef\xbb\xbf{"text": "first"}\r\n{"text": "second"}\r\n')
    import_corpus(ws, tmp_path / "b.jsonl", "bom")
    assert load_documents(ws, "bom", ["text"])["text"].tolist() == ["first", "second"]


def test_other_encodings_import_with_encoding_option(ws, tmp_path):
    (tmp_path / "l.jsonl").write_bytes(b'{"text": "caf\xe9 cr\xe8me"}\n')
    (tmp_path / "l.csv").write_bytes(b'text,source\n"br\xfbl\xe9e",a\n')
    folder = tmp_path / "lf"
    folder.mkdir()
    (folder / "a.txt").write_bytes(b"na\xefve")
    for src, name, text in [("l.jsonl", "j", "caf\u00e9 cr\u00e8me"), ("l.csv", "c", "br\u00fbl\u00e9e"), ("lf", "f", "na\u00efve")]:
        with pytest.raises(CorpusError, match="--encoding"):
            import_corpus(ws, tmp_path / src, name)
        import_corpus(ws, tmp_path / src, name, ImportOptions(encoding="latin-1"))
        assert load_documents(ws, name, ["text"])["text"].tolist() == [text]
    with pytest.raises(CorpusError, match="not a known text encoding"):
        ImportOptions(encoding="klingon-8")


def test_existing_name_needs_replace(ws, tmp_path):
    p = _write_jsonl(tmp_path / "c.jsonl", _docs(3))
    import_corpus(ws, p, "c")
    with pytest.raises(CorpusError, match="already exists"):
        import_corpus(ws, p, "c")
    _write_jsonl(tmp_path / "d.jsonl", _docs(5))
    assert import_corpus(ws, tmp_path / "d.jsonl", "c", ImportOptions(replace=True))["n_docs"] == 5


def test_jsonl_streams_in_batches(ws, tmp_path, monkeypatch):
    import stride_core.store.corpus_formats as formats

    monkeypatch.setattr(formats, "_BATCH_ROWS", 7)
    rows = [{"text": f"doc {i}", "extra": i if i % 2 else None} for i in range(50)]
    info = import_corpus(ws, _write_jsonl(tmp_path / "s.jsonl", rows), "s")
    df = load_documents(ws, "s")
    assert info["n_docs"] == 50 and df["text"].tolist() == [r["text"] for r in rows]


def test_unknown_corpus_message(ws):
    with pytest.raises(CorpusError, match="unknown corpus"):
        corpus_info(ws, "nope")
