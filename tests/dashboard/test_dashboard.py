"""Every dashboard page, headless (streamlit.testing AppTest), on an empty and on a populated workspace."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

from stride_core.runs import jobs  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the shared helpers
from dashboard_fixtures import fake_command, make_run, populate  # noqa: E402

APP = str(Path(__file__).resolve().parents[2] / "dashboard" / "app.py")
PAGES = ["views/setup.py", "views/runs.py", "views/influence.py", "views/contamination.py", "views/selection.py"]


@pytest.fixture(autouse=True)
def _no_engine_probe(monkeypatch):
    # The Setup page asks whether `stride run` exists (a subprocess); answer directly in tests.
    monkeypatch.setitem(jobs.launch._probe, "result", (True, "usage: stride run [--run RUN] ..."))


@pytest.fixture
def populated(tmp_path, monkeypatch):
    ws, proc = populate(tmp_path / "ws")
    monkeypatch.setenv("STRIDE_WORKSPACE", str(ws.root))
    yield ws, proc
    proc.kill()
    proc.wait()


def open_page(page: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=30)
    at.run()
    if page != PAGES[0]:
        at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


def by_label(elements, label):
    hits = [e for e in elements if e.label == label]
    assert hits, f"no element labelled {label!r} among {[e.label for e in elements]}"
    return hits[0]


@pytest.mark.parametrize("exists", [True, False])
def test_every_page_on_an_empty_workspace(tmp_path, monkeypatch, exists):
    root = tmp_path / "empty"
    if exists:
        root.mkdir()
    monkeypatch.setenv("STRIDE_WORKSPACE", str(root))
    for page in PAGES:
        at = open_page(page)
        assert not at.error, texts(at.error)
        if page != "views/setup.py":
            assert "No runs yet" in texts(at.info)
    at = open_page("views/setup.py")
    assert "no corpus yet" in texts(at.info)
    assert by_label(at.selectbox, "Corpus").value == "pydocs"  # offered: the job builds it
    assert by_label(at.button, "Start run").disabled is False  # samples + built-in model + default corpus


def test_setup_page_validates_inputs(populated, tmp_path):
    ws, _ = populated
    at = open_page("views/setup.py")
    assert by_label(at.selectbox, "Corpus").value == "pydocs"  # the built-in model's corpus (built by the job)
    by_label(at.selectbox, "Corpus").set_value("tiny").run()
    assert "trained on corpus 'pydocs', not on 'tiny'" in texts(at.warning)
    shards = by_label(at.multiselect, "Shards to index")
    assert shards.value == [0, 1, 2] and "10 docs" in shards.format_func(0)
    assert [m.value for m in at.metric][:3:2] == ["30", "3"]

    # Document browser: parameterised search, including LIKE wildcards taken literally.
    at.text_input(key="doc_search").input("document 17 ABOUT").run()
    assert "1 matching document(s)" in texts(at.caption)
    # the full text in the page (wrapped, scrollable, escaped), not only in the table's cell overlay
    assert at.selectbox(key="doc_full_tiny").value == 17
    assert "Document 17 about the" in texts(at.markdown) and "&lt;script&gt;alert" in texts(at.markdown)
    at.text_input(key="doc_search").input("100%_").run()
    assert "0 matching document(s)" in texts(at.caption)
    by_label(at.multiselect, "Shards to index").set_value([1]).run()
    at.text_input(key="doc_search").input("").run()
    assert "10 matching document(s)" in texts(at.caption)

    # Invalid local model folder: a clear message and no Start.
    at.radio(key="model_kind").set_value("local").run()
    at.text_input(key="model_path").input(str(tmp_path / "nope")).run()
    assert "Invalid model folder" in texts(at.error) and "does not exist" in texts(at.error)
    assert by_label(at.button, "Start run").disabled

    # Empty prompt list.
    at.radio(key="model_kind").set_value("builtin").run()
    at.radio(key="prompt_source").set_value("type").run()
    assert "prompt list is empty" in texts(at.warning)
    assert by_label(at.button, "Start run").disabled
    at.text_area(key="prompt_text").input("one prompt\n\nanother prompt").run()
    assert "2 prompt(s)" in texts(at.caption)

    # A taken run name.
    at.text_input(key="run_name").input("r-done").run()
    assert "already exists" in texts(at.error)
    assert not at.exception


def test_start_button_launches_a_job_and_opens_runs(populated, tmp_path, monkeypatch):
    ws, _ = populated
    model = tmp_path / "hf-model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2}))
    (model / "model.safetensors").write_bytes(b"")  # only validated here, never loaded
    monkeypatch.setattr(jobs.launch, "run_command", fake_command("done"))
    at = open_page("views/setup.py")
    at.radio(key="model_kind").set_value("local").run()
    at.text_input(key="model_path").input(str(model)).run()
    assert "looks valid" in texts(at.success)
    by_label(at.selectbox, "Corpus").set_value("tiny").run()  # the folder records no training corpus: chosen by hand
    assert "do not match" not in texts(at.warning)
    by_label(at.multiselect, "Shards to index").set_value([0, 2]).run()
    at.text_input(key="run_name").input("from-ui").run()
    at.radio(key="preset_choice").set_value("custom").run()
    at.number_input(key="custom_ci_--K").set_value(16).run()
    at.text_input(key="extra_args").input("--positive").run()
    by_label(at.button, "Start run").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert [t.value for t in at.title] == ["Runs"]  # switched to the Runs page
    job = json.loads((ws.run_dir("from-ui") / "job.json").read_text())
    assert job["model"] == str(model) and job["corpus"] == "tiny" and job["shards"] == [0, 2]
    assert job["n_prompts"] == len(jobs.load_prompt_file(jobs.sample_prompts_path()))
    assert job["ensure_corpus"] is None and job["ensure_model_preset"] is None
    assert job["preset"] == "ci" and job["extra_args"][job["extra_args"].index("--K") + 1] == "16"
    assert job["extra_args"][-1] == "--positive" and "--steps" in job["extra_args"]
    t0 = time.monotonic()
    while jobs.run_info(ws, "from-ui")["state"] != "done" and time.monotonic() - t0 < 20:
        time.sleep(0.1)
    assert jobs.run_info(ws, "from-ui")["state"] == "done"


def test_given_completion_travels_from_the_setup_page_to_the_job(populated, tmp_path, monkeypatch):
    """"Why did the model say X?": the Prompt + completion boxes put X into the job's prompts file as the
    completion to attribute; a blank completion box means the model continues the prompt."""
    ws, _ = populated
    monkeypatch.setattr(jobs.launch, "run_command", fake_command("done"))
    at = open_page("views/setup.py")
    at.radio(key="model_kind").set_value("builtin").run()
    at.radio(key="prompt_source").set_value("given").run()
    assert "prompt list is empty" in texts(at.warning)
    at.text_area(key="given_prompt").input("The csv module reads rows").run()
    assert "continued by the model" not in texts(at.caption)  # no completion yet: the model continues
    at.text_area(key="given_completion").input(" from a comma-separated file.").run()
    assert "1 with a given completion" in texts(at.caption)
    at.text_input(key="run_name").input("given-ui").run()
    by_label(at.button, "Start run").click().run()
    assert not at.exception, [e.value for e in at.exception]
    recs = [json.loads(line) for line in (ws.run_dir("given-ui") / jobs.PROMPTS_FILE).read_text().splitlines()]
    assert recs == [{"prompt_id": "q00", "prompt": "The csv module reads rows", "completion": " from a comma-separated file."}]


def test_runs_page_history_failed_and_cancel(populated):
    ws, proc = populated
    at = open_page("views/runs.py")
    hist = at.dataframe[0].value
    assert set(hist["run"]) == {"r-done", "r-failed", "r-running", "r-dead"}
    states = dict(zip(hist["run"], hist["state"]))
    assert "done" in states["r-done"] and "failed" in states["r-failed"]
    assert "failed" in states["r-dead"]  # status says running, but its process is gone
    assert "running" in states["r-running"]
    assert set(hist["corpus"]) == {"tiny"} and set(hist["model"]) == {"tiny"}  # read from the engine's args.json
    assert "Running now" in texts(at.subheader)
    assert any("attribute** — 40%" in p.proto.text for p in at.get("progress"))

    at.selectbox(key="runs_pick").set_value("r-dead").run()
    assert "failed" in texts(at.error) and "MemoryError: killed" in texts(at.code)
    at.selectbox(key="runs_pick").set_value("r-failed").run()
    assert "CUDA out of memory" in texts(at.code)

    at.button(key="cancel_r-running").click().run()
    assert not at.exception
    t0 = time.monotonic()
    while proc.poll() is None and time.monotonic() - t0 < 10:
        time.sleep(0.05)
    assert proc.poll() is not None
    assert jobs.run_info(ws, "r-running")["state"] == "cancelled"


def test_influence_page(populated):
    ws, _ = populated
    at = open_page("views/influence.py")
    assert by_label(at.selectbox, "Run").value == "r-done"
    assert by_label(at.selectbox, "Prompt").value == "q00"
    helpful = at.dataframe[0].value
    assert list(helpful["rank"])[:3] == [1, 2, 3] and int(helpful["doc_id"].iloc[0]) == 0
    assert (helpful["score"] > 0).all() and "source" in helpful.columns
    harmful = at.dataframe[1].value
    assert (harmful["score"] < 0).all()
    assert "Positive = helpful" in texts(at.info) and "loss units" in texts(at.info)
    assert "loss on it: 3.250 nats" in texts(at.caption)
    assert "query_loss" not in helpful.columns  # not a metadata column
    md = texts(at.markdown)
    # Document text is escaped; shared n-grams are highlighted.
    assert "&lt;script&gt;" in md and "<script>" not in md
    assert "<mark>json.dumps(obj) returns a str</mark>" in md
    assert "<b>" not in md.split("<span")[1].split("</span>")[0]  # continuation's markup escaped too
    # One view at a time (issue 17: every tab's charts made the tables wait): by default only the ranking chart.
    assert not [d for d in at.dataframe if "n_queries" in d.value.columns]
    assert len(at.get("plotly_chart")) == 1
    # Cross-prompt view: doc 0 is helpful for all three prompts.
    at.session_state["influence_view"] = "Across prompts"
    at.run()
    rec = [d.value for d in at.dataframe if "n_queries" in d.value.columns][0]
    assert int(rec.iloc[0]["doc_id"]) == 0 and int(rec.iloc[0]["n_queries"]) == 3

    by_label(at.selectbox, "Prompt").set_value("q02").run()
    assert not at.exception and "match many strings" in texts(at.markdown)


def test_influence_page_without_corpus_shows_snippets(populated):
    ws, _ = populated
    make_run(ws, "r-orphan", "done", attributions=True, corpus="gone")
    at = open_page("views/influence.py")
    by_label(at.selectbox, "Run").set_value("r-orphan").run()
    assert not at.exception
    assert "stored snippet only" in texts(at.warning) and "'gone'" in texts(at.warning)


def test_audit_pages(populated):
    at = open_page("views/contamination.py")
    vals = {m.label: m.value for m in at.metric}
    assert vals["Items checked"] == "2" and vals["Items flagged as leaked"] == "1"
    assert "&lt;str&gt;" in texts(at.markdown)
    at.toggle(key="contam_only_leaked").set_value(True).run()
    assert len(at.dataframe[0].value) == 1

    at = open_page("views/selection.py")
    vals = {m.label: m.value for m in at.metric}
    assert vals == {"Documents listed": "30", "Keep": "20", "Drop": "10"}
    at.multiselect(key="selection_filter").set_value(["drop"]).run()
    assert set(at.dataframe[0].value["decision"]) == {"drop"}

    by_label(at.selectbox, "Run").set_value("r-failed").run()  # no selection.parquet, no attributions
    assert "has not been run" in texts(at.info) and not at.exception


def test_highlight_escapes_and_marks_shared_ngrams():
    from dashboard.highlight import highlight_html, shared_ngrams

    doc = "Use <b>json.dumps</b>(obj) to get a str & more; of the of the"
    html_out, n = highlight_html(doc, "call json.dumps obj to get it, of the", n=2)
    assert "<b>" not in html_out and "&lt;b&gt;" in html_out and "&amp;" in html_out
    assert "&lt;b&gt;<mark>json.dumps</mark>&lt;/b&gt;(<mark>obj) to get</mark> a str" in html_out
    assert ("of", "the") not in shared_ngrams(doc, "of the", 2)  # stopword-only n-grams are not highlighted
    assert n == len(shared_ngrams(doc, "call json.dumps obj to get it, of the", 2))
    assert highlight_html("<x>", "nothing", 3) == ("&lt;x&gt;", 0)


def test_stride_app_command(tmp_path, monkeypatch):
    import socket

    from stride_core.cli import app as app_cli
    from stride_core.cli import main

    started, execs = [], []
    monkeypatch.setattr(jobs, "start_demo_job",
                        lambda ws, preset, device, run: started.append((preset, run)) or {"pid": 1})
    monkeypatch.setattr(app_cli.os, "execve", lambda exe, argv, env: execs.append((argv, env)))
    root = tmp_path / "ws"
    assert main(["--workspace", str(root), "app", "--port", "8765", "--demo-preset", "ci"]) == 0
    assert started == [("ci", "demo-ci")]
    argv, env = execs[-1]
    assert argv[1:4] == ["-m", "streamlit", "run"] and Path(argv[4]) == Path(APP).resolve()
    assert argv[argv.index("--server.port") + 1] == "8765" and argv[argv.index("--server.address") + 1] == "127.0.0.1"
    assert env["STRIDE_WORKSPACE"] == str(root.resolve())
    (root / "runs" / "demo").mkdir(parents=True)
    assert main(["--workspace", str(root), "app", "--port", "8765"]) == 0 and len(started) == 1  # demo exists
    assert main(["--workspace", str(tmp_path / "other"), "app", "--no-demo", "--port", "8765"]) == 0
    assert len(started) == 1
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        assert main(["--workspace", str(root), "app", "--port", str(busy)]) == 2  # clear error, no traceback


def test_setup_waits_while_another_job_trains_the_builtin_model(populated):
    ws, proc = populated
    d = ws.run_dir("demo")
    d.mkdir(parents=True)
    (d / "job.json").write_text(json.dumps({"run": "demo", "ensure_model_preset": "ci", "ensure_corpus": None,
                                            "pid": proc.pid, "created_at": time.time()}))
    from stride_core.runs.progress import RunStatus, write_status

    write_status(d, RunStatus(run="demo", state="running", stage="prepare", pid=proc.pid))
    at = open_page("views/setup.py")
    assert "is training the built-in model (ci preset)" in texts(at.warning)
    assert by_label(at.button, "Start run").disabled
    at.radio(key="preset_choice").set_value("default").run()  # another preset: another model folder
    assert "is training the built-in model" not in texts(at.warning)
    assert not by_label(at.button, "Start run").disabled


def test_setup_page_when_the_database_is_unreadable(tmp_path, monkeypatch):
    root = tmp_path / "ws"
    root.mkdir()
    (root / "stride.duckdb").write_bytes(b"this is not a duckdb file")
    monkeypatch.setenv("STRIDE_WORKSPACE", str(root))
    from dashboard import queries

    monkeypatch.setattr(queries, "LOCK_TIMEOUT_S", 0.3)  # Workspace.connect retries IO errors as locks
    at = open_page("views/setup.py")
    assert at.error  # a message, not a traceback
    assert by_label(at.button, "Start run").disabled


def test_influence_page_generic_view_and_truncated_prompt(populated):
    """The "Helps every prompt" view reads generic.parquet; a truncated prompt shows the unused part struck out."""
    import pandas as pd

    from dashboard_fixtures import attributions_frame

    ws, _ = populated
    make_run(ws, "r-generic", "done", attributions=True)
    d = ws.run_dir("r-generic")
    df = attributions_frame()
    df["prompt_used"] = df["prompt"].str[-12:]
    df["truncated"] = df["query_id"] == "q00"
    df["continuation_given"] = df["query_id"] == "q01"
    df.to_parquet(d / "attributions.parquet", index=False)
    pd.DataFrame({"direction": ["helpful", "harmful"], "rank": [1, 1], "doc_id": [7, 8], "score": [0.5, -0.2],
                  "snippet": ["generic helper", "generic harm"]}).to_parquet(d / "generic.parquet", index=False)
    at = open_page("views/influence.py")
    by_label(at.selectbox, "Run").set_value("r-generic")
    at.session_state["influence_view"] = "Helps every prompt"
    at.run()
    assert not at.exception
    gen = [x.value for x in at.dataframe if "snippet" in x.value.columns and "generic helper" in set(x.value["snippet"])]
    assert gen and list(gen[0]["doc_id"]) == [7, 8]
    assert "line-through" in texts(at.markdown) and "max_tokens" in texts(at.warning)
    assert "the model's own continuation" in texts(at.caption)
    by_label(at.selectbox, "Prompt").set_value("q01").run()  # not truncated: no warning
    assert "max_tokens" not in texts(at.warning)
    assert "the completion you gave" in texts(at.caption)  # a given completion is labelled as such


PASTE = ("First copied document, line one\nline two of the same document\n\n"
         "Second document\nwith two lines\n\nA single sentence.")


def test_audit_paste_counts_blank_line_items_and_jsonl(populated, monkeypatch):
    started = {}
    monkeypatch.setattr(jobs, "start_audit_job", lambda ws, run, kind, text, **kw: started.update(run=run, kind=kind, text=text, **kw))
    at = open_page("views/contamination.py")
    at.text_area(key="contamination_paste").set_value(PASTE).run()
    assert "**3 item(s)** parsed, separated by a blank line (auto-detected)" in texts(at.caption)
    at.radio(key="contamination_paste_mode").set_value("lines").run()
    assert "**5 item(s)** parsed, one per line." in texts(at.caption)
    at.radio(key="contamination_paste_mode").set_value("auto").run()
    at.button(key="contamination_start").click().run()
    assert not at.exception and started["kind"] == "contamination" and started["filename"] == "items.jsonl"
    rows = [json.loads(line) for line in started["text"].splitlines()]
    assert [r["text"] for r in rows] == ["First copied document, line one\nline two of the same document",
                                         "Second document\nwith two lines", "A single sentence."]

    at = open_page("views/selection.py")
    at.text_area(key="select_paste").set_value('{"item_id": "t1", "text": "a target"}\n{"item_id": "t2", "text": "b"}').run()
    assert "**2 item(s)** parsed, JSONL (one JSON object per line) (auto-detected)" in texts(at.caption)
    at.text_area(key="select_paste").set_value('{"item_id": "t1", "text": "a"}\n{"item_id": "t1", "text": "b"}').run()
    assert "duplicate item_id" in texts(at.error)


def test_parse_pasted_modes():
    from stride_core.errors import InputError
    from stride_core.store.items import detect_paste_mode, parse_pasted

    assert detect_paste_mode('{"text": "a"}\n\n{"text": "b"}') == "jsonl"
    assert detect_paste_mode('{"text": "a"}\nplain') == "blank"
    mode, items, _ = parse_pasted("a\n  \n\n\nb\nc\n", "auto")
    assert mode == "blank" and [i.text for i in items] == ["a", "b\nc"]
    assert len(parse_pasted("a\nb", "lines")[1]) == 2
    with pytest.raises(InputError, match="corrupt JSON"):
        parse_pasted("{not json", "jsonl")
    with pytest.raises(InputError, match="unknown paste mode"):
        parse_pasted("a", "csv")


def test_evidence_label_names_the_pair_shown(populated):
    import pandas as pd

    ws, _ = populated
    at = open_page("views/contamination.py")
    box = at.selectbox(key="contam_pair_r-done")
    box.set_value("item_id q01 · doc_id 4").run()
    assert "logging" in texts(at.markdown)
    # Re-running the audit writes another report: the label kept must still name the pair whose text is shown.
    p = ws.run_dir("r-done") / "contamination.parquet"
    pd.DataFrame([dict(item_id="q09", doc_id=7, overlap_score=0.9, influence_score=0.9, combined_score=2.0,
                       evidence="NEW EVIDENCE q09", leaked=True),
                  dict(item_id="q01", doc_id=4, overlap_score=0.1, influence_score=0.05, combined_score=0.1,
                       evidence="OLD PAIR q01 doc 4", leaked=False)]).to_parquet(p, index=False)
    at.run()
    box = at.selectbox(key="contam_pair_r-done")
    assert box.value == "item_id q01 · doc_id 4" and "OLD PAIR q01 doc 4" in texts(at.markdown)
    assert "NEW EVIDENCE" not in texts(at.markdown)
    at.toggle(key="contam_only_leaked").set_value(True).run()  # q01 is not flagged: the selection moves, with its text
    box = at.selectbox(key="contam_pair_r-done")
    assert box.value == "item_id q09 · doc_id 7" and "NEW EVIDENCE q09" in texts(at.markdown)


def test_runs_page_shows_cli_runs_preset_prompts_and_total_duration(populated):
    from stride_core.runs.progress import read_status, write_status

    ws, _ = populated
    d = make_run(ws, "r-cli", "done", attributions=True)  # args.json + status.json only, as the CLI leaves them
    st = read_status(d)
    st.durations = {"load model": 10.0, "cache activations": 260.0, "train operators": 300.0, "indexed": 0.0,
                    "attribute": 100.0, "attributed": 0.0}
    st.info = {"preset": "ci", "n_prompts": 3}
    write_status(d, st)
    at = open_page("views/runs.py")
    hist = at.dataframe[0].value.set_index("run")
    assert hist.loc["r-cli", "preset"] == "ci" and int(hist.loc["r-cli", "prompts"]) == 3
    assert hist.loc["r-cli", "duration"] == "11m 10s"
    assert list(hist.columns)[:2] == ["state", "results"]  # results next to the state: never cut off at the right
    at.selectbox(key="runs_pick").set_value("r-cli").run()
    assert "finished in 11m 10s (index 9m 30s, attribute 1m 40s)" in texts(at.success)


def _trained_model(path, corpus, used, total):
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2}))
    (path / "model.safetensors").write_bytes(b"")  # only validated, never loaded
    (path / "stride_training.json").write_text(json.dumps({"corpus": corpus, "n_used_docs": used, "n_corpus_docs": total}))
    return path


def test_setup_defaults_the_corpus_to_the_models_and_warns_on_a_partial_model(populated, tmp_path):
    from stride_core.store.corpus import ImportOptions, import_corpus

    ws, _ = populated
    src = tmp_path / "other.jsonl"
    src.write_text("".join(json.dumps({"text": f"other document number {i} with some words"}) + "\n" for i in range(12)))
    import_corpus(ws, src, "another", ImportOptions())
    model = _trained_model(tmp_path / "m-tiny", "tiny", 20, 30)
    at = open_page("views/setup.py")
    at.radio(key="model_kind").set_value("local").run()
    at.text_input(key="model_path").input(str(model)).run()
    assert "trained on corpus `tiny` (20 documents)" in texts(at.success)
    assert by_label(at.selectbox, "Corpus").value == "tiny"  # not the alphabetically first corpus ("another")
    assert "trained on only the first 20 of the 30 documents of corpus 'tiny'" in texts(at.warning)
    by_label(at.selectbox, "Corpus").set_value("another").run()
    assert "trained on corpus 'tiny', not on 'another'" in texts(at.warning)
    assert not by_label(at.button, "Start run").disabled  # a warning, not a refusal


def test_runs_page_shows_the_pairing_warning_of_a_run(populated):
    ws, _ = populated
    d = ws.run_dir("r-done")
    prov = json.loads((d / "provenance.json").read_text())
    prov["pairing_warnings"] = ["the model was trained on corpus 'pydocs', not on 'tiny' that is being indexed"]
    (d / "provenance.json").write_text(json.dumps(prov))
    at = open_page("views/runs.py")
    at.selectbox(key="runs_pick").set_value("r-done").run()
    assert "not on 'tiny' that is being indexed" in texts(at.warning)


def test_selection_page_words_counts_from_the_measurements(populated):
    import pandas as pd

    ws, _ = populated
    d = ws.run_dir("r-done")
    rows = [dict(doc_id=i, decision="keep", rank=i + 1, score=0.3 if i < 2 else 0.0, matched_score=0.1 - i / 100,
                 n_targets_helped=3 if i == 0 else (1 if i == 1 else 0), n_targets_hurt=0, duplicate_of=None) for i in range(5)]
    rows += [dict(doc_id=10, decision="drop", rank=1, score=-0.2, matched_score=-0.1, n_targets_helped=0, n_targets_hurt=3,
                  duplicate_of=None),
             dict(doc_id=11, decision="drop", rank=2, score=-0.01, matched_score=0.0, n_targets_helped=1, n_targets_hurt=1,
                  duplicate_of=None)]
    pd.DataFrame(rows).to_parquet(d / "selection.parquet", index=False)
    (d / "selection_args.json").write_text(json.dumps({"budget": 5, "n_targets": 3, "n_docs": 30, "n_nonzero": 4,
                                                       "n_positive": 2, "n_negative": 2}))
    at = open_page("views/selection.py")
    md = texts(at.markdown)
    assert "**4 of 30** documents have a non-zero influence score on the 3 target(s) (2 positive, 2 negative)" in md
    assert "ordered by that score, then by `matched_score`" in md
    assert "**3 of the 5 kept documents have score 0**" in md
    assert "1 document(s) hurt 3 of 3 target(s), 1 document(s) hurt 1 of 3 target(s)" in md
    table = at.dataframe[0].value
    assert list(table.columns)[:3] == ["doc_id", "decision", "why"]
    table = table.set_index("doc_id")
    assert table.loc[11, "why"] == "hurts 1 of 3 target(s), helps 1" and table.loc[10, "why"] == "hurts 3 of 3 target(s)"
    assert table.loc[4, "why"] == "score 0: kept by matched_score" and table.loc[0, "why"] == "helps 3 of 3 target(s)"
    assert "consistently" not in md + texts(at.caption)


def test_influence_explorer_strikes_out_the_unused_part_of_a_truncated_prompt(populated):
    from dashboard_fixtures import attributions_frame

    ws, _ = populated
    d = make_run(ws, "r-cut", "done")
    df = attributions_frame()
    long = df["prompt"] == df.loc[df["query_id"] == "q00", "prompt"].iloc[0]
    df["prompt_used"] = df["prompt"]
    df["truncated"] = False
    df.loc[long, "prompt_used"] = " a JSON string, you can call"  # the end the model saw (decoded tokens)
    df.loc[long, "truncated"] = True
    df.to_parquet(d / "attributions.parquet", index=False)
    at = open_page("views/influence.py")
    by_label(at.selectbox, "Run").set_value("r-cut").run()
    md = texts(at.markdown)
    assert ("<span style='color:#9e9e9e;text-decoration:line-through'>To serialize a Python dictionary as </span>"
            "<b>a JSON string, you can call</b>") in md
    assert "`max_tokens`" in texts(at.warning) and "stride index --max-tokens" in texts(at.warning)
    by_label(at.selectbox, "Prompt").set_value("q01").run()  # an uncut prompt: all bold, nothing struck out
    assert "line-through" not in texts(at.markdown) and "max_tokens" not in texts(at.warning)


def test_influence_explorer_labels_a_stride_plus_lexical_run_and_shows_both_scores(populated):
    from dashboard_fixtures import attributions_frame

    ws, _ = populated
    d = make_run(ws, "r-hyb", "done")
    df = attributions_frame()
    df["prompt_used"], df["truncated"] = df["prompt"], False
    df["lexical"] = 0.25
    df["hybrid_z"] = 3.0 - 0.1 * df["rank"]
    df.to_parquet(d / "attributions.parquet", index=False)
    at = open_page("views/influence.py")
    by_label(at.selectbox, "Run").set_value("r-hyb").run()
    assert "stride+lexical" in texts(at.caption) and "STRIDE's own Δ loss" in texts(at.caption)
    helpful, harmful = at.dataframe[0].value, at.dataframe[1].value
    assert list(helpful.columns[:5]) == ["rank", "doc_id", "hybrid_z", "score", "lexical"]
    assert "lexical" not in harmful.columns  # harmful rows stay STRIDE's
    assert not {"lexical", "hybrid_z", "prompt_used", "truncated"} & set(queries_meta(d))  # not corpus metadata


def queries_meta(run_dir):
    from dashboard import queries

    p = run_dir / "attributions.parquet"
    return queries.attribution_meta_columns(str(p), p.stat().st_mtime)
