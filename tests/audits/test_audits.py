"""Contamination and data-selection audits on a small corpus with planted copies, plus their bad inputs."""

import json

import numpy as np
import pandas as pd
import pytest

from stride_core.audits.contamination import ContaminationArgs, NgramIndex, audit_contamination, memorisation_z
from stride_core.errors import InputError, RunError, StrideError
from stride_core.store.items import read_items
from stride_core.audits.selection import MinHashGuard, SelectionArgs, audit_select, matched_scores, rank_documents

LEAK = ("Quartz lanterns hum beside the northern aqueduct while seven archivists recount the orbit of "
        "a vanished comet to patient children every winter evening")


@pytest.fixture(scope="module")
def audit_ws(pydocs_ws, tmp_path_factory):
    from stride_core.store.corpus import import_corpus, load_documents
    from stride_core.runs.pipeline import index, make_config

    ws, model_dir = pydocs_ws
    docs = load_documents(ws, "pydocs", columns=["text", "source"], limit=150)
    # the mirrored document must be long enough that the appended words keep its 5-gram Jaccard above
    # the guard's 0.8 (the stdlib, hence the corpus, differs between Python builds)
    n_words = docs["text"].str.split().str.len()
    docs.attrs["mirrored"] = m = int(np.flatnonzero((n_words >= 80) & (n_words <= 400))[0])
    extra = pd.DataFrame([
        {"text": LEAK, "source": "leak-alone"},
        {"text": docs["text"].iloc[3] + "\n\n" + LEAK + "\n\n" + docs["text"].iloc[4], "source": "leak-embedded"},
        {"text": docs["text"].iloc[m] + " (mirror copy, lightly reformatted)", "source": "near-duplicate"},
    ])
    src = tmp_path_factory.mktemp("audit") / "audit.jsonl"
    pd.concat([docs, extra], ignore_index=True).to_json(src, orient="records", lines=True)
    import_corpus(ws, src, "auditc")
    cfg = make_config("auditc", str(model_dir), "ci", **{"subsets.K": 40, "operators.steps": 20})
    index(ws, "audit", cfg, device="cpu", progress=False)
    return ws, docs


# ------------------------------------------------------------------------------------------ units


def test_ngram_overlap_finds_verbatim_embedded_and_edited_copies():
    idx = NgramIndex([LEAK, "short item"], n=8)
    assert idx.scan(LEAK)[0][0] == 1.0
    host = "Some unrelated preface text. " + LEAK.upper() + " And an unrelated ending."
    c, a, b = idx.scan(host)[0]
    assert c == 1.0 and host[a:b].lower() == LEAK.lower()  # the evidence span is exactly the copy
    w = LEAK.split()
    w[10] = "REPLACED"
    edited = idx.scan(" ".join(w))[0][0]
    assert 0.3 < edited < 1.0
    assert 0 not in idx.scan("nothing in common with the item at all here")
    assert idx.scan("we had a short item today")[1][0] == 1.0  # items shorter than n use all their words


def test_ngram_overlap_keeps_fields_apart():
    q, a = "What orbits the violet giant beyond the harbor?", "The secret benchmark answer is forty two moons"
    doc = "Notes. The secret benchmark answer is forty two moons; they orbit the violet giant beyond the harbor."
    joined = NgramIndex([q + "\n" + a], n=8).scan(doc)[0][0]
    apart = NgramIndex([[q, a]], n=8).scan(doc)[0][0]
    assert joined < 0.2 and apart == 0.5  # the answer's 8-gram matches; no n-gram spans question and answer
    # a field shorter than n words stays joined to its neighbour instead of becoming a short n-gram of its own
    idx = NgramIndex([["What is the capital city of the country France today?", "Paris"]], n=8)
    assert 0 not in idx.scan("Paris is lovely in spring.")


def test_ngram_overlap_ignores_unicode_form_and_case():
    import unicodedata

    item = "Le café crème de la rue Saint-Honoré fermait à minuit chaque jeudi soir"
    doc = "Souvenirs: " + unicodedata.normalize("NFD", item.upper()).replace("CAFE", "ＣＡＦＥ") + "."
    c, a, b = NgramIndex([item], n=8).scan(doc)[0]
    assert c == 1.0 and doc[a:b].startswith("LE ")


def test_ngram_overlap_in_scripts_written_without_spaces():
    item = "机器学习模型在训练数据上过拟合时测试误差会上升"
    idx = NgramIndex([item], n=8)
    host = "前言。" + item + "。后记与其他无关的内容"
    c, a, b = idx.scan(host)[0]
    assert c == 1.0 and host[a:b] == item
    assert 0 not in idx.scan("完全无关的句子没有任何共同的八字片段在这里出现")


def test_memorisation_z_finds_a_planted_document_beyond_lexical_similarity():
    rng = np.random.default_rng(0)
    N, K, S, Q = 400, 80, 5, 3
    members = np.stack([rng.choice(K, S, replace=False) for _ in range(N)])
    lexical = rng.random((Q, N)).astype(np.float32)
    y = rng.normal(0, 0.01, (Q, K)).astype(np.float32)
    y[1, members[17]] += 0.2  # document 17 strongly influences item 1
    Z = memorisation_z(y, members, lexical)
    assert Z.shape == (Q, N)
    assert int(np.argmax(Z[1])) == 17 and Z[1, 17] > 6
    assert Z[0].max() < 6 and Z[2].max() < 6


def test_minhash_guard_and_matched_scores():
    g = MinHashGuard(0.8)
    a = " ".join(f"word{i}" for i in range(200))
    g.add(1, g.signature(a))
    assert g.duplicate_of(a + " word_extra")[0] == 1
    assert g.duplicate_of(" ".join(f"other{i}" for i in range(200)))[0] is None
    members = np.array([[0, 1], [2, 3], [1, 2]])
    y = np.array([[1.0, 1.0, 0.0, 0.0]])
    m = matched_scores(y, members)
    np.testing.assert_allclose(m, [[0.5, -0.5, 0.0]])
    W = np.array([[0.0, 0.0, 0.1]])
    assert rank_documents(W, m, "lasso").tolist() == [2, 0, 1]
    assert rank_documents(W, m, "matched").tolist() == [0, 2, 1]


def test_selection_args_validate_lambda_rule():
    assert SelectionArgs(budget=5, lambda_rule="min").lambda_rule == "min"
    with pytest.raises(StrideError, match="lambda_rule"):
        SelectionArgs(budget=5, lambda_rule="best")


def test_minhash_signature_is_the_same_in_every_process():
    """The keep-list must not depend on Python's per-process string-hash salt."""
    import subprocess
    import sys

    code = ("from stride_core.audits.selection import MinHashGuard; "
            "print(MinHashGuard(0.8).signature('the quick brown fox jumps over the lazy dog again and again').tolist())")
    outs = {subprocess.run([sys.executable, "-c", code], env={"PYTHONHASHSEED": seed}, capture_output=True, text=True,
                           check=True).stdout for seed in ("1", "2")}
    assert len(outs) == 1


def test_read_items_bad_inputs(tmp_path):
    p = tmp_path / "b.jsonl"
    for content, msg in [("", "no items"), ("{bad json\n", "corrupt JSON"), (json.dumps({"id": 1}) + "\n", "string field 'text'"),
                         (json.dumps({"item_id": "a", "text": "x"}) + "\n" + json.dumps({"item_id": "a", "text": "y"}) + "\n", "duplicate"),
                         (json.dumps({"item_id": "a", "text": "   "}) + "\n", "empty text"),
                         (json.dumps({"item_id": "a", "text": "x" * 200}) + "\n", "over the limit")]:
        p.write_text(content)
        with pytest.raises(InputError, match=msg):
            read_items(p, max_chars=100)
    p.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(InputError, match="UTF-8"):
        read_items(p)
    with pytest.raises(InputError, match="no such"):
        read_items(tmp_path / "missing.jsonl")
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(InputError, match="jsonl"):
        read_items(tmp_path / "x.csv")
    p.write_text("\n".join(json.dumps({"text": f"t{i}"}) for i in range(5)))
    with pytest.raises(InputError, match="more than 3"):
        read_items(p, max_items=3)
    (tmp_path / "t.txt").write_text("one\n\ntwo\n")
    assert [it.text for it in read_items(tmp_path / "t.txt")] == ["one", "two"]


def test_read_items_named_fields_and_json_lists(tmp_path):
    rows = [{"id": 7, "question": "What is 2+2?", "choices": ["3", "4"], "answer": 4},
            {"id": 8, "question": "Capital of France?", "choices": ["Paris", "Rome"], "answer": "Paris"}]
    (tmp_path / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "b.json").write_text(json.dumps(rows))
    for name in ("b.jsonl", "b.json"):
        items = read_items(tmp_path / name, text_fields="question,choices,answer")
        assert [(it.item_id, it.text) for it in items] == [("7", "What is 2+2?\n3 4\n4"), ("8", "Capital of France?\nParis Rome\nParis")]
        with pytest.raises(InputError, match="'text' .*--text-field"):
            read_items(tmp_path / name)
        with pytest.raises(InputError, match="no field 'solution'"):
            read_items(tmp_path / name, text_fields=["question", "solution"])
    (tmp_path / "d.json").write_text(json.dumps({"data": rows}))
    with pytest.raises(InputError, match="list of objects"):
        read_items(tmp_path / "d.json")
    (tmp_path / "t.txt").write_text("one\n")
    with pytest.raises(InputError, match="applies to .jsonl"):
        read_items(tmp_path / "t.txt", text_fields="question")
    with pytest.raises(InputError, match="field name"):
        read_items(tmp_path / "b.jsonl", text_fields=" , ")


def test_argument_validation():
    with pytest.raises(StrideError):
        ContaminationArgs(overlap_threshold=0)
    with pytest.raises(StrideError):
        ContaminationArgs(z_threshold=-1)
    with pytest.raises(StrideError):
        SelectionArgs(budget=0)
    with pytest.raises(StrideError):
        SelectionArgs(budget=5, score="bm25")
    assert 3.5 < ContaminationArgs().z_for(2000) < 4.5


# ------------------------------------------------------------------------------------------ end to end


def test_contamination_audit_flags_the_planted_copies(audit_ws, tmp_path):
    from stride_core.store.corpus import load_documents

    ws, docs = audit_ws
    bench = tmp_path / "bench.jsonl"
    bench.write_text("\n".join(json.dumps(o) for o in [
        {"item_id": "leaked", "text": LEAK},
        {"item_id": "clean", "text": "Violet submarines negotiate with migrating glaciers about the price of salt"}]) + "\n")
    out = tmp_path / "flags.csv"
    pairs, items = audit_contamination(ws, "audit", bench, ContaminationArgs(device="cpu"), out=out, progress=False)
    src = load_documents(ws, "auditc", ["doc_id", "source"])
    leak_docs = set(src[src["source"].str.startswith("leak")]["doc_id"])
    flagged = pairs[pairs["leaked"]]
    assert set(flagged[flagged["item_id"] == "leaked"]["doc_id"]) >= leak_docs
    assert set(flagged[flagged["flag_overlap"]]["doc_id"]) == leak_docs
    assert not flagged["item_id"].eq("clean").any() or flagged[flagged["item_id"] == "clean"]["flag_overlap"].sum() == 0
    summary = items.set_index("item_id")
    assert summary.loc["leaked", "leaked"] and summary.loc["leaked", "n_copies"] == 2
    assert summary.loc["clean", "n_copies"] == 0
    row = pairs[(pairs["item_id"] == "leaked") & (pairs["source"] == "leak-embedded")].iloc[0]
    assert "quartz lanterns" in row["evidence"].lower() and row["overlap_score"] == 1.0
    assert "source" in pairs.columns and np.isfinite(pairs["influence_score"]).all()
    # persisted: run folder, OUT + _items sibling, DuckDB
    rdir = ws.run_dir("audit")
    assert (rdir / "contamination.parquet").exists() and (rdir / "contamination_items.parquet").exists()
    assert len(pd.read_csv(out)) == len(pairs) and len(pd.read_csv(tmp_path / "flags_items.csv")) == 2
    with ws.connect(read_only=True) as con:
        n = con.execute("SELECT count(*) FROM contamination WHERE run = ?", ["audit"]).fetchall()[0][0]
    assert n == len(pairs)
    # overlap-only mode needs no model and flags the same copies
    p2, _ = audit_contamination(ws, "audit", bench, ContaminationArgs(use_influence=False), progress=False)
    assert set(p2[p2["leaked"]]["doc_id"]) == leak_docs


def test_selection_audit_keep_drop_and_duplicates(audit_ws, tmp_path):
    ws, docs = audit_ws
    target = tmp_path / "target.txt"
    target.write_text(docs["text"].iloc[docs.attrs["mirrored"]][:300].replace("\n", " ") + "\n" + docs["text"].iloc[20][:300].replace("\n", " ") + "\n")
    out = tmp_path / "sel.jsonl"
    df = audit_select(ws, "audit", target, SelectionArgs(budget=40, device="cpu"), out=out, progress=False)
    keep = df[df["decision"] == "keep"]
    assert len(keep) == 40 and keep["rank"].tolist() == list(range(1, 41))
    assert (df[df["decision"] == "drop"]["score"] < 0).all()
    assert not set(keep["doc_id"]) & set(df[df["decision"] == "drop"]["doc_id"])
    # the keep order follows the documented ordering
    s = keep["score"].to_numpy()
    assert (np.diff(s) <= 1e-9).all()
    assert len(pd.read_json(out, lines=True)) == len(df)
    # the counts the Data selection page words its summary from
    import json

    sargs = json.loads((ws.run_dir("audit") / "selection_args.json").read_text())
    assert sargs["n_targets"] == 2 and sargs["n_positive"] + sargs["n_negative"] == sargs["n_nonzero"] <= sargs["n_docs"]
    assert sargs["n_negative"] >= int((df["decision"] == "drop").sum())
    # the near-duplicate guard: a budget covering the whole corpus keeps only one of the two mirrored documents
    full = audit_select(ws, "audit", target, SelectionArgs(budget=153, device="cpu"), progress=False)
    from stride_core.store.corpus import load_documents

    src = load_documents(ws, "auditc", ["doc_id", "source"])
    mirror = int(src[src["source"] == "near-duplicate"]["doc_id"].iloc[0])
    original = int(src["doc_id"].iloc[docs.attrs["mirrored"]])
    dup = full[full["decision"] == "duplicate"]
    assert {mirror, original} & set(dup["doc_id"]) and {mirror, original} & set(full[full["decision"] == "keep"]["doc_id"])


def test_audit_bad_inputs_leave_nothing_half_written(audit_ws, tmp_path):
    from stride_core.cli import commands as cli

    ws, _ = audit_ws
    target = tmp_path / "t.txt"
    target.write_text("some target\n")
    with pytest.raises(InputError, match="larger than"):
        audit_select(ws, "audit", target, SelectionArgs(budget=10_000), progress=False)
    with pytest.raises(RunError, match="unknown run"):
        audit_contamination(ws, "nope", target, progress=False)
    empty = tmp_path / "e.jsonl"
    empty.write_text("")
    with pytest.raises(InputError, match="no items"):
        audit_contamination(ws, "audit", empty, progress=False)
    # a run whose operators are missing
    half = ws.run_dir("half")
    half.mkdir(parents=True)
    (half / "args.json").write_text((ws.run_dir("audit") / "args.json").read_text())
    with pytest.raises(RunError, match="not fully indexed"):
        audit_select(ws, "half", target, SelectionArgs(budget=3), progress=False)
    assert not (half / "selection.parquet").exists() and not (half / "contamination.parquet").exists()
    rc = cli.main(["--workspace", str(ws.root), "audit", "select", "--run", "audit", "--target", str(target), "--budget", "0"])
    assert rc == 2
    rc = cli.main(["--workspace", str(ws.root), "audit", "contamination", "--run", "audit", "--benchmark", str(empty)])
    assert rc == 2


def test_audit_job_runs_in_the_background_and_keeps_the_run_state(audit_ws):
    import time

    from stride_core.runs import jobs
    from stride_core.runs.progress import read_status

    ws, docs = audit_ws
    before = read_status(ws.run_dir("audit"))
    with pytest.raises(InputError, match="corrupt JSON"):
        jobs.start_audit_job(ws, "audit", "contamination", "{not json\n", filename="b.jsonl")
    assert not list(ws.run_dir("audit").glob("audit_contamination_input*"))
    with pytest.raises(InputError, match="budget"):
        jobs.start_audit_job(ws, "audit", "select", "a target\n", budget=0, filename="t.txt")
    with pytest.raises(RunError, match="unknown run"):
        jobs.start_audit_job(ws, "nope", "select", "a target\n", budget=3)
    jobs.start_audit_job(ws, "audit", "select", "The json module encodes objects\nLogging handlers\n", budget=7,
                         filename="t.txt", device="cpu")
    deadline = time.time() + 240
    info = jobs.audit_info(ws, "audit")
    while info["state"] in ("queued", "running") and time.time() < deadline:
        time.sleep(1)
        info = jobs.audit_info(ws, "audit")
    assert info["state"] == "done", info
    sel = pd.read_parquet(ws.run_dir("audit") / "selection.parquet")
    assert (sel["decision"] == "keep").sum() == 7
    after = read_status(ws.run_dir("audit"))
    assert (before.state, before.stage) == (after.state, after.stage)  # the run's own status is untouched


def test_bench_measure_paths_agree_through_the_cli(audit_ws, tmp_path, capsys):
    """`stride bench measure`: the low-rank and direct measurement paths give the same y on a real run."""
    from stride_core.cli import main

    ws, _ = audit_ws
    out = tmp_path / "measure.json"
    rc = main(["bench", "measure", "--workspace", str(ws.root), "--run", "audit", "--queries", "3", "--repeats", "1",
               "--device", "cpu", "--out", str(out)])
    assert rc in (0, None)
    res = json.loads(out.read_text())
    assert res["queries"] == 3 and res["R"] < res["D"] and res["max_abs_dy"] < 1e-4 and res["y_sd"] > 0
    assert "low-rank" in capsys.readouterr().out
