"""Background jobs: start (detached, logged), watch, cancel, and detection of jobs that died silently."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stride_core.runs import jobs
from stride_core.errors import InputError, RunError
from stride_core.runs.progress import RunStatus, read_status, write_status

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the shared helpers
from dashboard_fixtures import fake_command  # noqa: E402

def wait_for(pred, timeout=30.0, interval=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError("condition not reached in time")


def _start(ws, monkeypatch, mode, run="job1", **kw):
    monkeypatch.setattr(jobs.launch, "run_command", fake_command(mode))
    return jobs.start_job(ws, run, "tiny", "/models/x", ["first prompt", {"prompt": "second", "prompt_id": "p2"}],
                          "ci", "cpu", [0, 2], **kw)


def test_parse_prompts():
    assert jobs.parse_prompts_text(" a \n\n b\n") == ["a", "b"]
    # an upload is read exactly as `stride run --prompts` reads a file of the same name
    recs = jobs.parse_prompt_upload('{"prompt": "x", "prompt_id": 7}\n\n{"text": " y "}\n', "p.jsonl")
    assert recs == [{"prompt": "x", "prompt_id": "7"}, {"prompt": "y", "prompt_id": "q001"}]
    assert jobs.parse_prompt_upload('[{"prompt": "x"}]', "p.json") == [{"prompt": "x", "prompt_id": "q000"}]
    assert [r["prompt"] for r in jobs.parse_prompt_upload("a\n\nb\n", "p.txt")] == ["a", "b"]
    with pytest.raises(InputError, match=":1: corrupt JSON"):
        jobs.parse_prompt_upload("not json", "p.jsonl")
    with pytest.raises(InputError, match="'prompt'"):
        jobs.parse_prompt_upload('{"body": "x"}', "p.jsonl")
    norm = jobs.normalise_prompts(["a", {"prompt": "b", "prompt_id": "q00"}, "  ", "c"])
    assert [r["prompt"] for r in norm] == ["a", "b", "c"]
    assert len({r["prompt_id"] for r in norm}) == 3
    with pytest.raises(InputError, match="empty"):
        jobs.normalise_prompts(["", "  "])
    samples = jobs.load_prompt_file(jobs.sample_prompts_path("jsonl"))
    assert len(samples) >= 10 and all(s["prompt"] for s in samples)
    assert len(jobs.load_prompt_file(jobs.sample_prompts_path("txt"))) == len(samples)
    # a completion (the text to attribute by teacher forcing) is kept from an upload and by normalising;
    # a blank one means "let the model continue", a non-string one is refused
    up = jobs.parse_prompt_upload('{"prompt": "p", "completion": " x y"}\n{"prompt": "q"}\n', "p.jsonl")
    assert up == [{"prompt": "p", "prompt_id": "q000", "completion": " x y"}, {"prompt": "q", "prompt_id": "q001"}]
    norm = jobs.normalise_prompts([*up, {"prompt": "r", "completion": "  "}])
    assert [r.get("completion") for r in norm] == [" x y", None, None]
    with pytest.raises(InputError, match="'completion' must be a string"):
        jobs.normalise_prompts([{"prompt": "r", "completion": 3}])


def test_run_command_shape(ws):
    cmd = jobs.run_command(ws, "r1", "pydocs", "/m", ws.run_dir("r1") / "prompts.jsonl", "ci", "auto", [0, 1])
    assert cmd[:3] == [sys.executable, "-m", "stride_core.cli"]
    i = cmd.index("run")
    assert cmd[cmd.index("--workspace") + 1] == str(ws.root) and cmd.index("--workspace") < i
    for flag, value in (("--run", "r1"), ("--corpus", "pydocs"), ("--model", "/m"), ("--preset", "ci"),
                        ("--device", "auto"), ("--shards", "0,1")):
        assert cmd[cmd.index(flag) + 1] == value


def test_job_runs_to_done(ws, monkeypatch):
    job = _start(ws, monkeypatch, "done")
    run_dir = ws.run_dir("job1")
    assert job["pid"] and job["n_prompts"] == 2 and job["shards"] == [0, 2]
    lines = [json.loads(x) for x in (run_dir / "prompts.jsonl").read_text().splitlines()]
    assert [x["prompt"] for x in lines] == ["first prompt", "second"] and lines[1]["prompt_id"] == "p2"
    info = wait_for(lambda: (lambda r: r if r["state"] == "done" and not r["alive"] else None)(jobs.run_info(ws, "job1")))
    assert info["progress"] == 1.0 and info["corpus"] == "tiny" and info["preset"] == "ci"
    log = (run_dir / "job.log").read_text()
    assert "fake engine working" in log and "finished with exit status 0" in log
    assert [r["run"] for r in jobs.list_runs(ws)] == ["job1"]
    with pytest.raises(RunError, match="already exists"):
        _start(ws, monkeypatch, "done")
    assert jobs.cancel_job(ws, "job1") is False  # nothing to cancel


def test_cancel_kills_the_process_group(ws, monkeypatch):
    job = _start(ws, monkeypatch, "sleep")
    # the fake engine writes the stage, then its metrics: wait for both (reading in between was flaky under load)
    wait_for(lambda: (lambda s: s.stage == "attribute" and s.metrics)(read_status(ws.run_dir("job1")) or RunStatus(run="x")))
    engine_pid = read_status(ws.run_dir("job1")).pid
    assert engine_pid != job["pid"] and jobs.job_alive(engine_pid)
    live = jobs.run_info(ws, "job1")
    assert live["state"] == "running" and live["alive"] and live["metrics"] == {"fidelity": 1.25}
    assert jobs.cancel_job(ws, "job1", grace_s=2.0) is True
    assert not jobs.job_alive(job["pid"]) and not jobs.job_alive(engine_pid)
    info = jobs.run_info(ws, "job1")
    assert info["state"] == "cancelled" and info["stage"] == "attribute"


def test_crashed_command_is_recorded_as_failed(ws, monkeypatch):
    _start(ws, monkeypatch, "crash")
    info = wait_for(lambda: (lambda r: r if r["state"] == "failed" and not r["alive"] else None)(jobs.run_info(ws, "job1")))
    assert info["recorded_state"] == "failed"  # the wrapper wrote it
    assert "status 3" in info["error"] and "boom: something broke" in info["error"]


def test_silently_dead_job_shows_as_failed_with_log_tail(ws):
    run_dir = ws.run_dir("ghost")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    write_status(run_dir, RunStatus(run="ghost", state="running", stage="index", progress=0.3, pid=gone.pid))
    (run_dir / "job.log").write_text("indexing\nKilled\n")
    info = jobs.run_info(ws, "ghost")
    assert info["recorded_state"] == "running" and info["state"] == "failed"
    assert "ended without recording a final state" in info["error"] and "Killed" in info["error"]
    assert read_status(run_dir).state == "running"  # reading never rewrites the status


def test_list_runs_orders_and_skips(ws):
    assert jobs.list_runs(ws) == []
    for name, t in (("old", 100.0), ("new", 200.0)):
        write_status(ws.run_dir(name), RunStatus(run=name, state="done", started_at=t))
    (ws.runs_dir / ".tmp-junk").mkdir()
    (ws.runs_dir / "stray.txt").write_text("x")
    assert [r["run"] for r in jobs.list_runs(ws)] == ["new", "old"]


def test_start_job_rejects_bad_input(ws, monkeypatch):
    monkeypatch.setattr(jobs.launch, "run_command", fake_command("done"))
    with pytest.raises(InputError, match="empty"):
        jobs.start_job(ws, "r1", "tiny", "/m", [], "ci")
    with pytest.raises(InputError, match="preset"):
        jobs.start_job(ws, "r1", "tiny", "/m", ["p"], "huge")
    with pytest.raises(Exception, match="run name"):
        jobs.start_job(ws, "../evil", "tiny", "/m", ["p"], "ci")
    assert not ws.run_dir("r1").exists()


def test_stage_eta():
    assert jobs.stage_eta(0.5, 10.0) == pytest.approx(10.0)
    assert jobs.stage_eta(0.0, 10.0) is None and jobs.stage_eta(1.0, 10.0) is None
    # a stage that spent 30 s before its loop (at 2%), then went 2% -> 50% in 20 s: 20 s left, not 50 s
    st = RunStatus(run="r", state="running", progress=0.5, stage_started_at=100.0, progress_anchor=[130.0, 0.02])
    assert jobs.status_eta(st, 150.0) == pytest.approx(0.5 / (0.48 / 20.0))
    st.progress_anchor = [149.0, 0.499]  # not moved 1% past the anchor yet: linear from the stage start
    assert jobs.status_eta(st, 150.0) == pytest.approx(50.0)


def test_job_builds_the_default_corpus_first(ws, monkeypatch):
    from stride_core.store.corpus import list_corpora

    _start(ws, monkeypatch, "done", ensure_corpus="pydocs")
    info = wait_for(lambda: (lambda r: r if r["state"] in ("done", "failed") and not r["alive"] else None)(
        jobs.run_info(ws, "job1")), timeout=120)
    assert info["state"] == "done", info["error"]
    assert "pydocs" in [c["name"] for c in list_corpora(ws)]
    assert "--ensure-corpus" not in info["job"]["command"]  # the wrapper's option, not the engine's


def test_engine_probe_reports_the_run_command():
    ok, text = jobs.launch._engine_probe()
    assert isinstance(ok, bool)
    if ok:
        assert "--run" in text and "--prompts" in text
    else:
        assert "run" in text  # argparse's "invalid choice: 'run'"


def test_sample_prompts_missing_outside_a_checkout_is_a_clear_error(tmp_path, monkeypatch):
    """A non-editable install has no data/ beside the package: say how to fix it, not FileNotFoundError."""
    import stride_core.runs.demo as demo
    from stride_core.errors import StrideError

    assert jobs.sample_prompts_path("txt").is_file()
    monkeypatch.setattr(demo, "__file__", str(tmp_path / "site-packages" / "stride_core" / "runs" / "demo.py"))
    with pytest.raises(StrideError, match="pip install -e"):
        jobs.sample_prompts_path()


def test_cli_runs_total_duration_preset_and_prompts_across_commands(ws, monkeypatch):
    """`stride index` then `stride attribute` (two processes, two Reporters): the run's duration is the sum of
    both, and the preset / prompt count the CLI noted are shown although there is no job.json."""
    from stride_core.runs import progress

    run_dir = ws.run_dir("cli-run")
    clock = [1000.0]
    monkeypatch.setattr(progress.time, "time", lambda: clock[0])
    monkeypatch.setattr(progress, "_PROCESS_INFO", {})
    progress.set_process_info(preset="ci")
    rep = progress.Reporter(run_dir, "cli-run", min_interval=0)  # `stride index`
    rep.stage("cache activations")
    clock[0] += 300
    rep.stage("train operators")
    clock[0] += 270
    rep.stage("indexed")
    rep.finish("done")
    clock[0] += 3600  # an hour later: `stride attribute` (no --preset option)
    monkeypatch.setattr(progress, "_PROCESS_INFO", {})
    progress.set_process_info(preset=None, n_prompts=10)
    rep = progress.Reporter(run_dir, "cli-run", min_interval=0)
    rep.stage("attribute")
    clock[0] += 100
    rep.stage("attributed")
    rep.finish("done")
    st = read_status(run_dir)
    assert st.info == {"preset": "ci", "n_prompts": 10}
    assert progress.total_seconds(st) == pytest.approx(670.0)
    info = jobs.run_info(ws, "cli-run")
    assert info["preset"] == "ci" and info["n_prompts"] == 10
    assert info["total_s"] == pytest.approx(670.0) and info["elapsed_s"] == pytest.approx(100.0)
    assert info["phases"] == pytest.approx({"index": 570.0, "attribute": 100.0})


def test_old_status_files_without_durations_still_read(ws):
    d = ws.run_dir("old")
    d.mkdir(parents=True)
    (d / "status.json").write_text(json.dumps({"run": "old", "state": "done", "started_at": 100.0, "updated_at": 160.0,
                                               "stage_started_at": 150.0}))
    info = jobs.run_info(ws, "old")
    assert info["total_s"] == pytest.approx(60.0) and info["preset"] is None


def test_job_reports_a_stage_fraction_and_eta_while_preparing(ws, monkeypatch):
    """First launch: building the corpus and training the built-in model are stages with a fraction (so the
    Runs page has an ETA), not one 'prepare 0%' for ten minutes; their time counts in the run's duration."""
    import stride_core.runs.demo as demo
    import stride_core.store.pydocs as pydocs

    seen = {}

    def fake_build(ws_, name="pydocs", replace=False, on_progress=None):
        time.sleep(1.05)  # past the Reporter's write throttle
        on_progress(0.4, "reading docstrings: 40 of 100 stdlib files")
        seen["build"] = read_status(ws.run_dir("first"))

    def fake_train(ws_, preset, device="cpu", progress=True, on_progress=None):
        time.sleep(1.05)
        on_progress(0.5, "step 50 of 100", loss=2.5)
        seen["train"] = jobs.run_info(ws, "first")

    monkeypatch.setattr(pydocs, "build_default_corpus", fake_build)
    monkeypatch.setattr(demo, "ensure_default_model", fake_train)
    d = ws.run_dir("first")
    d.mkdir(parents=True)
    write_status(d, RunStatus(run="first", state="queued", stage="queued"))
    engine = fake_command("done")(ws, "first", "pydocs", "/m", None, "ci")
    from stride_core.runs.jobs import execute

    rc = execute._exec_main(["--workspace", str(ws.root), "--run", "first", "--ensure-model", "ci", "--", *engine])
    assert rc == 0
    assert seen["build"].stage == "build corpus" and seen["build"].progress == pytest.approx(0.4)
    train = seen["train"]
    assert train["stage"] == "train model" and train["progress"] == pytest.approx(0.5)
    assert train["message"] == "step 50 of 100" and train["metrics"] == {"loss": 2.5}
    assert train["eta_s"] is not None and train["eta_s"] > 0  # the Runs page's "Stage ETA"
    assert train["state"] == "running" and train["phases"].get("prepare", 0) >= 0
    final = jobs.run_info(ws, "first")
    assert final["state"] == "done"
    assert {"build corpus", "train model", "attribute"} <= set(final["durations"])  # the engine closed the wrapper's stage
    assert set(final["phases"]) == {"prepare", "attribute"}


def test_train_tiny_reports_progress(ws, tmp_path):
    """tiny_model.train_tiny / train_lm call on_progress with the overall fraction, a step message and the loss."""
    from dashboard_fixtures import make_corpus
    from stride_core.store.tiny_model import TinyModelArgs, train_tiny

    make_corpus(ws, tmp_path, "tiny", n=30)
    calls = []
    args = TinyModelArgs(vocab_size=300, n_layer=1, n_embd=16, n_head=2, block_size=16, epochs=1.0, batch_size=8,
                         val_fraction=0.1)
    m = train_tiny(ws, "tiny", tmp_path / "m", args, progress=False,
                   on_progress=lambda f, message=None, **metrics: calls.append((f, message, metrics)))
    fractions = [c[0] for c in calls]
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == pytest.approx(1.0)
    steps = [c for c in calls if c[1] and c[1].startswith("step ")]
    assert steps and all("loss" in c[2] for c in steps) and steps[-1][1].endswith(f"of {len(steps)}")
    assert m["corpus"] == "tiny" and m["n_used_docs"] == 30


def test_default_tiny_model_is_a_llama_that_loads_like_any_local_model(ws, tmp_path):
    """The default preset trains the Llama form (measured: lower validation loss in less CPU time than GPT-2);
    the saved folder loads through the same checks as a user's model, and an unknown family is refused."""
    from dashboard_fixtures import make_corpus
    from stride_core.errors import StrideError
    from stride_core.store.models import load_model_and_tokenizer
    from stride_core.store.tiny_model import TinyModelArgs, build_model, train_tiny

    default = TinyModelArgs.preset("default")
    assert default.family == "llama" and default.min_steps >= 2000 and TinyModelArgs.preset("ci").family == "gpt2"
    assert type(build_model(default, 4096, 0)).__name__ == "LlamaForCausalLM"
    make_corpus(ws, tmp_path, "tiny", n=30)
    args = TinyModelArgs(family="llama", vocab_size=300, n_layer=2, n_embd=16, n_head=2, block_size=16, epochs=1.0,
                         batch_size=8, val_fraction=0.1)
    m = train_tiny(ws, "tiny", tmp_path / "m", args, progress=False)
    model, tok = load_model_and_tokenizer(tmp_path / "m")[:2]
    assert model.config.model_type == "llama" and model.config.tie_word_embeddings
    assert m["n_params"] == sum(p.numel() for p in model.parameters()) and m["val_loss"] == m["val_loss"]
    with pytest.raises(StrideError, match="family"):
        TinyModelArgs(family="rnn")
