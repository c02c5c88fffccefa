"""The bad-input probe of 2026-12-02 kept as tests (issue 16): one parametrised test per area (import,
model, index, attribute, audits), each case one `error:` line and exit 2 (or, where accepting is right,
what was ignored is printed), nothing half-written shown as complete; plus failed stages recorded in
status.json, the per-run lock, the attribution store's one source of truth, and SIGKILL at each stage
resuming to identical rankings. ci preset, tiny data (the session's `small` corpus and run `r1`)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stride_core.cli import commands as cli
from stride_core.method.arguments import AttributeArgs
from stride_core.runs.progress import read_status

REPO = Path(__file__).resolve().parents[2]


def _cli(capsys, *argv):
    """Run the CLI in-process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    rc = cli.main(["--no-progress", *[str(a) for a in argv]])
    out, err = capsys.readouterr()
    return rc or 0, out, err


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def _assert_one_error(rc, err, fragment):
    assert rc == 2, err
    lines = _error_lines(err)
    assert len(lines) == 1 and fragment in lines[0], err
    assert "Traceback" not in err


def _corpora(ws):
    from stride_core.store.corpus import list_corpora

    return {r["name"]: r["n_docs"] for r in list_corpora(ws)}


# ----------------------------------------------------------------------------------------- import


def _write(path: Path, content):
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


IMPORT_CASES = {
    "corrupt-json": ("c.jsonl", '{"text": "a"}\n{oops\n', [], "corrupt JSON"),
    "missing-text-field": ("c.jsonl", '{"body": "a"}\n', [], "missing text field"),
    "text-not-a-string": ("c.jsonl", '{"text": 5}\n', [], "not a string"),
    "only-blank-documents": ("c.jsonl", '{"text": "  "}\n', [], "empty"),
    "empty-file": ("c.jsonl", "", [], "empty"),
    "not-utf8": ("c.jsonl", b'{"text": "caf\xe9"}\n', [], "not valid UTF-8"),
    "unknown-format": ("c.docx", "x", [], "unknown corpus format"),
    "shard-size-0": ("c.jsonl", '{"text": "a"}\n', ["--shard-size", "0"], "--shard-size"),
    "unknown-encoding": ("c.jsonl", '{"text": "a"}\n', ["--encoding", "klingon"], "--encoding"),
    "bad-name": ("c.jsonl", '{"text": "a"}\n', ["--name", "1; DROP"], "invalid corpus name"),
    "existing-name": ("c.jsonl", '{"text": "a"}\n', ["--name", "good"], "already exists"),
    "missing-file": (None, None, [], "no such file"),
    "corrupt-parquet": ("c.parquet", b"PAR1 not really", [], "Parquet"),
}


@pytest.mark.parametrize("case", sorted(IMPORT_CASES))
def test_import_bad_inputs(case, ws, tmp_path, capsys):
    good = _write(tmp_path / "good.jsonl", "".join(json.dumps({"text": f"doc {i}"}) + "\n" for i in range(3)))
    assert _cli(capsys, "--workspace", ws.root, "corpus", "import", good, "--name", "good")[0] == 0
    name, content, extra, fragment = IMPORT_CASES[case]
    path = tmp_path / "missing.jsonl" if name is None else _write(tmp_path / name, content)
    argv = ["--workspace", ws.root, "corpus", "import", path] + (extra if "--name" in extra else ["--name", "new", *extra])
    rc, _, err = _cli(capsys, *argv)
    _assert_one_error(rc, err, fragment)
    assert _corpora(ws) == {"good": 3}  # the earlier corpus is intact, nothing half-imported
    assert not list(ws.root.glob(".import-*"))


def test_staged_import_files_are_listed_and_cleaned(ws, tmp_path, capsys):
    """A `corpus import` killed during the DuckDB load leaves its .import-* folder: `corpus list` names it
    with a hint, the next import removes it; a folder an import is using right now is left alone."""
    good = _write(tmp_path / "good.jsonl", '{"text": "a"}\n{"text": "b"}\n')
    stale = ws.root / ".import-killed"
    stale.mkdir()
    (stale / "staged.parquet").write_bytes(b"x" * 2_000_000)
    os.utime(stale, (time.time() - 3600,) * 2)  # left by an older version (no lock file): stale after a grace period
    rc, out, _ = _cli(capsys, "--workspace", ws.root, "corpus", "list")
    assert rc == 0 and ".import-killed" in out and "2.0 MB" in out and "next `stride corpus import` removes" in out
    with ws.staging_dir() as busy:  # held: another import's staging
        assert [d for d, _ in ws.stale_staging()] == [stale]
        assert _cli(capsys, "--workspace", ws.root, "corpus", "import", good, "--name", "good")[0] == 0
        assert not stale.exists() and busy.exists()
    assert not busy.exists()
    rc, out, _ = _cli(capsys, "--workspace", ws.root, "corpus", "list")
    assert "note:" not in out and "good" in out


def test_import_killed_mid_load_is_cleaned_by_the_next_import(ws, tmp_path):
    """SIGKILL while the staged file is loaded: the corpus is absent, the staging folder is stale, and the
    next import cleans it."""
    src = _write(tmp_path / "c.jsonl", "".join(json.dumps({"text": f"document number {i}"}) + "\n" for i in range(2000)))
    code = ("import sys, time, stride_core.store.workspace as w\n"
            "orig = w.Workspace.connect\n"
            "def connect(self, *a, **k):\n"
            "    if any(self.root.glob('.import-*/staged.parquet')):\n"
            "        open(sys.argv[1], 'w').close(); time.sleep(120)\n"
            "    return orig(self, *a, **k)\n"
            "w.Workspace.connect = connect\n"
            "from stride_core.cli import main\n"
            f"main(['--workspace', {str(ws.root)!r}, 'corpus', 'import', {str(src)!r}, '--name', 'c'])\n")
    flag = tmp_path / "flag"
    proc = subprocess.Popen([sys.executable, "-c", code, str(flag)], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        _wait_for(flag, proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert len([d for d, _ in ws.stale_staging()]) == 1 and "c" not in _corpora(ws)
    from stride_core.store.corpus import ImportOptions, import_corpus

    import_corpus(ws, src, "c", ImportOptions())
    assert _corpora(ws)["c"] == 2000 and not list(ws.root.glob(".import-*"))


def _wait_for(flag: Path, proc, timeout_s: float = 300, log: Path | None = None):
    deadline = time.time() + timeout_s
    while not flag.exists():
        assert proc.poll() is None, (f"the process ended (rc {proc.returncode}) before reaching the kill point"
                                     + (f": {log.read_text()[-2000:]}" if log else ""))
        assert time.time() < deadline, "the process did not reach the kill point"
        time.sleep(0.05)


# ------------------------------------------------------------------------------------------ model


def _model_variant(src: Path, dst: Path, case: str) -> Path:
    if case == "missing":
        return dst / "nope"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("stride_training.json"))
    if case == "vocab-larger-than-embedding":  # 100 embedding rows, the 1024-id tokenizer of the ci model
        from transformers import GPT2Config, GPT2LMHeadModel

        cfg = json.loads((src / "config.json").read_text())
        cfg["vocab_size"] = 100
        (dst / "model.safetensors").unlink()
        GPT2LMHeadModel(GPT2Config(**{k: v for k, v in cfg.items() if k != "architectures"})).save_pretrained(dst)
    elif case == "pickle-beside-safetensors":
        (dst / "pytorch_model.bin").write_bytes(b"not unpickled")
    elif case == "tokenizer-auto-map":
        p = dst / "tokenizer_config.json"
        p.write_text(json.dumps({**json.loads(p.read_text()), "auto_map": {"AutoTokenizer": ["evil/repo--tok.Tok", None]}}))
    elif case == "config-auto-map":
        p = dst / "config.json"
        p.write_text(json.dumps({**json.loads(p.read_text()), "auto_map": {"AutoModelForCausalLM": "modeling.M"}}))
    elif case == "python-file":
        (dst / "modeling_evil.py").write_text("import os\n")
    elif case == "only-pickles":
        (dst / "model.safetensors").unlink()
        (dst / "pytorch_model.bin").write_bytes(b"x")
    elif case == "corrupt-config":
        (dst / "config.json").write_text("{")
    elif case == "no-tokenizer":
        for f in dst.glob("tokenizer*"):
            f.unlink()
    return dst


MODEL_CASES = {  # case: (exit code, fragment of the error line, or of the output when accepted)
    "vocab-larger-than-embedding": (2, "tokenizer has 1024 token ids but the model's input embedding has 100 rows"),
    "pickle-beside-safetensors": (0, "ignored: pytorch_model.bin (pickled file: never loaded"),
    "tokenizer-auto-map": (0, "ignored: auto_map in tokenizer_config.json (custom code: never run"),
    "config-auto-map": (2, "custom code"),
    "python-file": (2, "custom code"),
    "only-pickles": (2, "only pickled weights"),
    "corrupt-config": (2, "not valid JSON"),
    "no-tokenizer": (2, "the tokenizer encodes text to nothing"),
    "missing": (2, "does not exist"),
}


@pytest.mark.parametrize("case", sorted(MODEL_CASES))
def test_model_check_bad_inputs(case, pydocs_ws, tmp_path, capsys):
    _, model_dir = pydocs_ws
    d = _model_variant(Path(model_dir), tmp_path / "m", case)
    rc, out, err = _cli(capsys, "--workspace", tmp_path / "ws", "model", "check", d)
    want_rc, fragment = MODEL_CASES[case]
    if want_rc == 0:
        assert rc == 0 and out.startswith("ok:") and fragment in out, (out, err)
    else:
        _assert_one_error(rc, err, fragment)


# ------------------------------------------------------------------------------------------ index


INDEX_CASES = {  # options: fragment of the one error line; all refused before anything is written
    "--steps 0": "steps must be an integer in 1..",
    "--lr inf": "lr must be a finite number > 0",
    "--lr nan": "lr must be a finite number > 0",
    "--lr 0": "lr must be a finite number > 0",
    "--lr -1": "lr must be a finite number > 0",
    "--stability-weight inf": "stability_weight must be a finite number >= 0",
    "--fidelity-weight -1": "fidelity_weight must be a finite number >= 0",
    "--linearity-weight nan": "linearity_weight must be a finite number >= 0",
    "--fidelity-weight 0 --stability-weight 0": "at least one loss weight",
    "--temperature 0": "temperature must be a finite number > 0",
    "--temperature inf": "temperature must be a finite number > 0",
    "--K 1": "K must be an integer in 2..",
    "--K 500": "larger than the 160 documents",
    "--S 0": "S must be an integer >= 1",
    "--S 50": "S must be in 1..K",
    "--R 0": "R must be an integer in 1..",
    "--max-tokens 1": "max_tokens must be an integer in 2..",
    "--designs 0": "designs must be an integer in 1..16",
    "--seed -1": "seed must be an integer",
    "--corpus missing": "unknown corpus",
    "--run bad/name": "invalid run name",
}


@pytest.mark.parametrize("opts", sorted(INDEX_CASES))
def test_index_bad_inputs(opts, small_run, capsys):
    ws, model_dir, _ = small_run
    argv = {"--corpus": "small", "--model": str(model_dir), "--run": "probe-index", "--preset": "ci", "--K": "40", "--steps": "5",
            "--device": "cpu"}
    extra = opts.split()
    for k, v in zip(extra[::2], extra[1::2]):
        argv[k] = v
    rc, _, err = _cli(capsys, "--workspace", ws.root, "index", *[x for kv in argv.items() for x in kv])
    _assert_one_error(rc, err, INDEX_CASES[opts])
    assert not ws.run_dir("probe-index").exists()  # refused before anything is written


def _index_argv(ws, model_dir, run, *extra):
    return ["--workspace", ws.root, "index", "--corpus", "small", "--model", model_dir, "--run", run, "--preset", "ci",
            "--K", "40", "--steps", "20", "--device", "cpu", *extra]


def test_diverging_training_fails_and_the_fixed_retry_resumes(small_run, capsys):
    """A loss that turns nan stops training with the step and the loss term named; the run is marked
    failed with that error and has no operators; the corrected retry needs no --overwrite and keeps the
    finished activation cache."""
    ws, model_dir, _ = small_run
    rc, _, err = _cli(capsys, *_index_argv(ws, model_dir, "diverge", "--lr", "1e30"))
    _assert_one_error(rc, err, "operator training diverged at step")
    line = _error_lines(err)[0]
    assert "loss" in line and ("fidelity" in line or "stability" in line) and "lower --lr" in line
    rdir = ws.run_dir("diverge")
    st = read_status(rdir)
    assert st.state == "failed" and st.stage == "train operators" and "diverged at step" in st.error
    assert not (rdir / "operators.safetensors").exists()
    cache_stamp = (rdir / "cache" / "h.bin").stat().st_mtime_ns
    rc, out, err = _cli(capsys, *_index_argv(ws, model_dir, "diverge"))
    assert rc == 0, err
    assert read_status(rdir).state == "done" and (rdir / "operators.safetensors").exists()
    assert (rdir / "cache" / "h.bin").stat().st_mtime_ns == cache_stamp  # the finished stage was kept
    # the finished run now refuses arguments its operators depend on
    rc, _, err = _cli(capsys, *_index_argv(ws, model_dir, "diverge", "--lr", "0.01"))
    _assert_one_error(rc, err, "different arguments (operators.lr)")


def test_failed_index_records_failed_and_a_fixed_model_resumes(small_run, tmp_path, capsys):
    """issue 18.5: a model the index cannot use (its tokenizer does not fit the embedding) marks the run
    failed with the error, not "running"; the retry with the fixed model is accepted without --overwrite."""
    ws, model_dir, _ = small_run
    bad = _model_variant(Path(model_dir), tmp_path / "bad", "vocab-larger-than-embedding")
    rc, _, err = _cli(capsys, *_index_argv(ws, bad, "fixmodel"))
    _assert_one_error(rc, err, "input embedding has 100 rows")
    st = read_status(ws.run_dir("fixmodel"))
    assert st.state == "failed" and "100 rows" in st.error
    from stride_core.runs.jobs import list_runs

    assert {r["run"]: r["state"] for r in list_runs(ws)}["fixmodel"] == "failed"
    rc, _, err = _cli(capsys, *_index_argv(ws, model_dir, "fixmodel", "--steps", "5"))
    assert rc == 0, err
    assert read_status(ws.run_dir("fixmodel")).state == "done"
    # a layer that does not exist fails after the run folder was written: recorded, and the retry works
    rc, _, err = _cli(capsys, *_index_argv(ws, model_dir, "badlayer", "--layer", "transformer.h.99"))
    _assert_one_error(rc, err, "no module named")
    assert read_status(ws.run_dir("badlayer")).state == "failed"
    assert _cli(capsys, *_index_argv(ws, model_dir, "badlayer", "--steps", "5"))[0] == 0


def test_refused_commands_leave_a_finished_run_as_it_was(small_run, tmp_path, capsys):
    """`stride run` / `index` refused on a finished run (different arguments, an empty prompts file) must
    not record the finished run as failed: status.json is untouched."""
    ws, model_dir, _ = small_run
    before = read_status(ws.run_dir("r1"))
    prompts = _write(tmp_path / "p.txt", "The json module\n")
    empty = _write(tmp_path / "e.txt", "\n")
    for extra in (["--K", "30", "--prompts", prompts], ["--prompts", empty], ["--prompts", prompts, "--out", tmp_path / "o.xls"]):
        rc, _, err = _cli(capsys, "--workspace", ws.root, "run", "--corpus", "small", "--model", model_dir, "--run", "r1",
                          "--preset", "ci", "--K", "40", "--steps", "20", "--device", "cpu", *extra)
        assert rc == 2 and len(_error_lines(err)) == 1, err
    rc, _, err = _cli(capsys, *_index_argv(ws, model_dir, "r1", "--R", "4"))
    _assert_one_error(rc, err, "different arguments (operators.R)")
    after = read_status(ws.run_dir("r1"))
    assert (after.state, after.updated_at, after.error) == (before.state, before.updated_at, before.error)
    # a run the dashboard queued (status "queued", nothing indexed yet) gets the refusal as its error
    from stride_core.runs.progress import RunStatus, write_status

    write_status(ws.run_dir("queued"), RunStatus(run="queued", state="queued"))
    rc, _, err = _cli(capsys, "--workspace", ws.root, "run", "--corpus", "small", "--model", model_dir, "--run", "queued",
                      "--preset", "ci", "--K", "500", "--device", "cpu", "--prompts", prompts)
    _assert_one_error(rc, err, "larger than the 160 documents")
    st = read_status(ws.run_dir("queued"))
    assert st.state == "failed" and "larger than" in st.error


def test_index_reports_ignored_files(small_run, tmp_path, capsys, caplog):
    ws, model_dir, _ = small_run
    d = _model_variant(Path(model_dir), tmp_path / "m", "pickle-beside-safetensors")
    with caplog.at_level("WARNING"):
        rc, _, err = _cli(capsys, *_index_argv(ws, d, "ignored", "--steps", "3"))
    assert rc == 0, err
    assert "ignored pytorch_model.bin (pickled file: never loaded" in caplog.text


# -------------------------------------------------------------------------------------- attribute


def _broken_run(ws, name: str, how: str):
    """A copy of run r1 that is not fully indexed, or whose operators are untrained (all zero), nan, or
    all zero with `steps: 0` in args.json (what `--steps 0` left before steps >= 1 was enforced)."""
    import torch
    from safetensors.torch import load_file, save_file

    dst = ws.run_dir(name)
    if not dst.exists():
        shutil.copytree(ws.run_dir("r1"), dst, ignore=shutil.ignore_patterns("attributions.parquet", "status.json"))
        if how == "not-indexed":
            (dst / "operators.safetensors").unlink()
            return name
        if how == "steps-0":
            args = json.loads((dst / "args.json").read_text())
            args["index"]["operators"]["steps"] = 0
            (dst / "args.json").write_text(json.dumps(args))
        st = load_file(str(dst / "operators.safetensors"))
        st["A"] = torch.full_like(st["A"], float("nan")) if how == "nan" else torch.zeros_like(st["A"])
        save_file(st, str(dst / "operators.safetensors"))
    return name


ATTRIBUTE_CASES = {  # case: (run, options, fragment)
    "empty-prompts": ("r1", ["--prompts", "{empty}"], "empty"),
    "missing-prompts": ("r1", ["--prompts", "{tmp}/none.txt"], "no such"),
    "bad-out-suffix": ("r1", ["--out", "{tmp}/o.xlsx"], "--out"),
    "top-k-0": ("r1", ["--top-k", "0"], "top_k must be an integer in 1.."),
    "max-new-tokens-negative": ("r1", ["--max-new-tokens", "-1"], "max_new_tokens must be an integer in 0..512"),
    "max-new-tokens-huge": ("r1", ["--max-new-tokens", "600"], "max_new_tokens must be an integer in 0..512"),
    "max-new-tokens-fills-context": ("r1", ["--max-new-tokens", "64"], "leaves no room for the prompt"),
    "alpha-negative": ("r1", ["--alpha", "-1"], "--alpha takes 'auto' or a number >= 0"),
    "alpha-nan": ("r1", ["--alpha", "nan"], "--alpha takes 'auto' or a number >= 0"),
    "alpha-inf": ("r1", ["--alpha", "inf"], "--alpha takes 'auto' or a number >= 0"),
    "unknown-run": ("nope", [], "unknown run"),
    "not-fully-indexed": ("not-indexed", [], "not fully indexed"),
    "untrained-operators": ("untrained", [], "untrained operators"),
    "indexed-with-steps-0": ("steps-0", [], "was indexed with arguments that are refused now (steps must be"),
    "nan-operators": ("nan", [], "hold nan or inf"),
}


@pytest.mark.parametrize("case", sorted(ATTRIBUTE_CASES))
def test_attribute_bad_inputs(case, small_run, tmp_path, capsys):
    ws, _, _ = small_run
    run, opts, fragment = ATTRIBUTE_CASES[case]
    if run in ("untrained", "nan", "not-indexed", "steps-0"):
        run = _broken_run(ws, f"probe-{run}", run)
    prompts = _write(tmp_path / "p.txt", "The json module\n")
    empty = _write(tmp_path / "e.txt", "\n")
    argv = {"--run": run, "--prompts": str(prompts), "--top-k": "3", "--max-new-tokens": "4", "--device": "cpu"}
    for k, v in zip(opts[::2], opts[1::2]):
        argv[k] = v.format(tmp=tmp_path, empty=empty)
    before = read_status(ws.run_dir("r1"))
    rc, _, err = _cli(capsys, "--workspace", ws.root, "attribute", *[x for kv in argv.items() for x in kv])
    _assert_one_error(rc, err, fragment)
    after = read_status(ws.run_dir("r1"))
    if case != "max-new-tokens-fills-context":  # refused before the run is opened: its status is untouched
        assert (before.state, before.updated_at) == (after.state, after.updated_at)
    else:  # found while attributing: recorded as this attribute call's failure
        assert after.state == "failed" and "no room" in after.error
        assert _cli(capsys, "--workspace", ws.root, "attribute", "--run", "r1", "--prompts", prompts, "--top-k", "3",
                    "--max-new-tokens", "4", "--device", "cpu")[0] == 0
        assert read_status(ws.run_dir("r1")).state == "done"
    if run.startswith("probe-"):
        assert not (ws.run_dir(run) / "attributions.parquet").exists()


def test_attribute_summary_counts_prompts_not_rows(small_run, tmp_path, capsys):
    ws, _, _ = small_run
    prompts = _write(tmp_path / "p.txt", "The json module\nLogging handlers\n")
    rc, out, err = _cli(capsys, "--workspace", ws.root, "attribute", "--run", "r1", "--prompts", prompts, "--top-k", "2",
                        "--max-new-tokens", "4", "--device", "cpu")
    assert rc == 0, err
    assert "\n2 prompts, " in out


# ----------------------------------------------------------------------------------------- audits


AUDIT_CASES = {  # case: (command, run, options, fragment)
    "empty-benchmark": ("contamination", "r1", ["--benchmark", "{empty}"], "no items"),
    "ngram-0": ("contamination", "r1", ["--ngram", "0"], "ngram must be an integer in 1..64"),
    "overlap-threshold-nan": ("contamination", "r1", ["--overlap-threshold", "nan"], "overlap_threshold"),
    "z-threshold-negative": ("contamination", "r1", ["--z-threshold", "-1"], "--z-threshold takes 'auto' or a number"),
    "z-threshold-nan": ("contamination", "r1", ["--z-threshold", "nan"], "--z-threshold takes 'auto' or a number"),
    "influence-only-z-nan": ("contamination", "r1", ["--influence-only-z", "nan"], "influence_only_z"),
    "contamination-untrained": ("contamination", "untrained", [], "untrained operators"),
    "contamination-nan": ("contamination", "nan", [], "hold nan or inf"),
    "budget-0": ("select", "r1", ["--budget", "0"], "budget must be a positive integer"),
    "budget-larger-than-corpus": ("select", "r1", ["--budget", "10000"], "larger than"),
    "dedup-threshold-nan": ("select", "r1", ["--dedup-threshold", "nan"], "dedup_threshold"),
    "select-untrained": ("select", "untrained", [], "untrained operators"),
    "select-unknown-run": ("select", "nope", [], "unknown run"),
}


@pytest.mark.parametrize("case", sorted(AUDIT_CASES))
def test_audit_bad_inputs(case, small_run, tmp_path, capsys):
    ws, _, _ = small_run
    command, run, opts, fragment = AUDIT_CASES[case]
    if run in ("untrained", "nan"):
        run = _broken_run(ws, f"probe-{run}", run)
    items = _write(tmp_path / "b.txt", "The json module encodes objects\n")
    empty = _write(tmp_path / "e.jsonl", "")
    argv = {"--run": run, "--device": "cpu"}
    argv.update({"--benchmark": str(items)} if command == "contamination" else {"--target": str(items), "--budget": "3"})
    for k, v in zip(opts[::2], opts[1::2]):
        argv[k] = v.format(empty=empty)
    rc, _, err = _cli(capsys, "--workspace", ws.root, "audit", command, *[x for kv in argv.items() for x in kv])
    _assert_one_error(rc, err, fragment)
    if run.startswith("probe-"):
        assert not (ws.run_dir(run) / "contamination.parquet").exists() and not (ws.run_dir(run) / "selection.parquet").exists()


# ------------------------------------------------------- attribution store: one source, one lock


def _duckdb_rows(ws, run):
    with ws.connect(read_only=True) as con:
        return con.execute("SELECT query_id, direction, rank, doc_id, score FROM attributions WHERE run = ? "
                           "ORDER BY query_id, direction, rank", [run]).df()


def _parquet_rows(ws, run):
    df = pd.read_parquet(ws.run_dir(run) / "attributions.parquet")
    return df[["query_id", "direction", "rank", "doc_id", "score"]].sort_values(["query_id", "direction", "rank"]).reset_index(drop=True)


def test_duckdb_attributions_are_derived_from_the_parquet(small_run):
    """attributions.parquet is the source of truth: a DuckDB copy left stale (a kill between the two
    writes) is rebuilt from it by the next sync (every attribute call starts with one)."""
    from stride_core.runs.pipeline import attribute, sync_attributions

    ws, _, _ = small_run
    shutil.copytree(ws.run_dir("r1"), ws.run_dir("store"), ignore=shutil.ignore_patterns("attributions.parquet", "status.json"))
    attribute(ws, "store", [{"query_id": "a", "prompt": "The json module"}], AttributeArgs(top_k=4, max_new_tokens=4, device="cpu"),
              progress=False)
    pd.testing.assert_frame_equal(_duckdb_rows(ws, "store"), _parquet_rows(ws, "store"), check_dtype=False)
    assert not sync_attributions(ws, "store")  # already derived from this file
    p = ws.run_dir("store") / "attributions.parquet"
    pd.read_parquet(p).head(2).to_parquet(p, index=False)  # the file changed, the database did not
    assert sync_attributions(ws, "store")
    pd.testing.assert_frame_equal(_duckdb_rows(ws, "store"), _parquet_rows(ws, "store"), check_dtype=False)
    p.unlink()
    assert sync_attributions(ws, "store") and _duckdb_rows(ws, "store").empty


def test_concurrent_attribute_calls_on_one_run_serialize(small_run, tmp_path):
    """A second `attribute` on a run waits for the process holding the run's lock, then runs; the stores agree."""
    from stride_core.runs.pipeline import attribute

    ws, _, _ = small_run
    flag, release = tmp_path / "held", tmp_path / "release"
    code = ("import sys, time, pathlib\nfrom stride_core.store.locks import run_lock\n"
            "with run_lock(pathlib.Path(sys.argv[1])):\n"
            "    open(sys.argv[2], 'w').close()\n"
            "    while not pathlib.Path(sys.argv[3]).exists(): time.sleep(0.05)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(ws.run_dir("r1")), str(flag), str(release)], cwd=REPO,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        _wait_for(flag, holder, 60)
        result = {}
        t = threading.Thread(target=lambda: result.update(df=attribute(
            ws, "r1", [{"query_id": "c", "prompt": "Logging handlers"}], AttributeArgs(top_k=3, max_new_tokens=4, device="cpu"),
            progress=False)))
        t.start()
        t.join(3.0)
        assert t.is_alive() and "df" not in result  # waiting for the lock
        release.touch()
        t.join(300)
        assert "df" in result
    finally:
        release.touch()
        holder.wait(60)
    assert set(_parquet_rows(ws, "r1")["query_id"]) == {"c"}
    pd.testing.assert_frame_equal(_duckdb_rows(ws, "r1"), _parquet_rows(ws, "r1"), check_dtype=False)


# --------------------------------------------------------------------- SIGKILL at each stage, resumed

# Each entry pauses the `stride run` subprocess at one point (it writes the flag file and sleeps) so the
# test can SIGKILL it there; `check` says what the kill left behind.
_PAUSE_DRIVER = r"""
import sys, time
stage, flag = sys.argv[1], sys.argv[2]

def pause():
    open(flag, "w").close()
    time.sleep(600)

import stride_core.runs.indexing as ix, stride_core.runs.attribution as atr, stride_core.runs.progress as pr, stride_core.store.tokens as tk
if stage == "tokenize":
    orig_tok = tk.tokenize_part
    def tokenize_part(*a, **k):
        pause()
    tk.tokenize_part = tokenize_part
elif stage == "load model":
    orig_load = ix.load_task
    def _load_task(*a, **k):
        pause()
    ix.load_task = _load_task
elif stage in ("cache activations", "train operators", "attribute"):
    orig_update = pr.Reporter.update
    at = {"cache activations": 0.4, "train operators": 0.5, "attribute": 0.3}[stage]
    def update(self, progress, *a, **k):
        orig_update(self, progress, *a, **k)
        if self.status.stage == stage and progress >= at:
            pause()
    pr.Reporter.update = update
elif stage == "write":
    orig_sync = atr.sync_attributions
    def sync_attributions(ws, run, log_repair=True):
        if not log_repair:  # the parquet file was just replaced, the DuckDB copy not yet
            pause()
        return orig_sync(ws, run, log_repair)
    atr.sync_attributions = sync_attributions
from stride_core.cli import main
sys.exit(main(sys.argv[3:]))
"""

KILL_STAGES = ["tokenize", "load model", "cache activations", "train operators", "attribute", "write"]


def test_sigkill_at_each_stage_resumes_to_identical_rankings(small_run, tmp_path):
    """`stride run` is SIGKILLed at every stage in turn (each restart resumes what the previous kill left and
    is killed at the next stage), then finished: the rankings equal those of the uninterrupted run r1, and
    the DuckDB rows equal attributions.parquet."""
    from stride_core.runs.pipeline import attribute

    ws, model_dir, _ = small_run
    prompts = _write(tmp_path / "p.txt", "The json module\nLogging handlers\n")
    opts = ["--top-k", "5", "--max-new-tokens", "6"]
    ref = attribute(ws, "r1", str(prompts), AttributeArgs(top_k=5, max_new_tokens=6, device="cpu"), progress=False)
    argv = ["--workspace", str(ws.root), "--no-progress", "run", "--corpus", "small", "--model", str(model_dir), "--run", "killed",
            "--preset", "ci", "--K", "40", "--steps", "20", "--device", "cpu", "--prompts", str(prompts), *opts]
    rdir = ws.run_dir("killed")
    for stage in KILL_STAGES:
        flag = tmp_path / f"flag-{stage.replace(' ', '-')}"
        log = tmp_path / f"log-{stage.replace(' ', '-')}.txt"
        with open(log, "w") as fh:  # a file, not a pipe: a full pipe would block the child before the kill point
            proc = subprocess.Popen([sys.executable, "-c", _PAUSE_DRIVER, stage, str(flag), *argv], cwd=REPO,
                                    env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=fh, stderr=subprocess.STDOUT)
            try:
                _wait_for(flag, proc, log=log)
            finally:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
        st = read_status(rdir)
        assert st.state == "running" and st.pid == proc.pid  # what SIGKILL leaves; readers see the dead pid (jobs.list_runs)
        assert not (rdir / "operators.safetensors").exists() or stage in ("attribute", "write")
        if stage == "write":
            assert (rdir / "attributions.parquet").exists()
    from stride_core.runs.jobs import list_runs

    assert {r["run"]: r["state"] for r in list_runs(ws)}["killed"] == "failed"
    assert cli.main(argv) in (0, None)
    got = pd.read_parquet(rdir / "attributions.parquet")
    assert got["doc_id"].tolist() == ref["doc_id"].tolist()
    assert got["continuation"].tolist() == ref["continuation"].tolist()
    assert np.allclose(got["score"], ref["score"], atol=1e-6)
    pd.testing.assert_frame_equal(_duckdb_rows(ws, "killed"), _parquet_rows(ws, "killed"), check_dtype=False)
    assert read_status(rdir).state == "done"
