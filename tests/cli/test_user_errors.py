"""Errors a user causes are one `error:` line with exit 2 (issue 18, item 6); a damaged run file is named
with the command that rebuilds it; a dashboard on a non-loopback host warns that it has no login (item 7)."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from stride_core.method.arguments import parse_int_list, parse_number_or_auto
from stride_core.errors import RunError, StrideError


def _stride(*args, ws):
    return subprocess.run([sys.executable, "-m", "stride_core.cli", "--workspace", str(ws), "--no-progress", *args],
                          capture_output=True, text=True, timeout=600)


def _one_error_line(res, *fragments):
    assert res.returncode == 2, (res.returncode, res.stderr)
    lines = [line for line in res.stderr.strip().splitlines() if " INFO " not in line and "Loading weights" not in line
             and "model/corpus pairing:" not in line and line.strip()]  # a warning about the model is no error line
    assert len(lines) == 1 and lines[0].startswith("error:") and "unexpected" not in lines[0], res.stderr
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


@pytest.mark.parametrize("args, fragment", [
    (["index", "--corpus", "c", "--model", "m", "--run", "r", "--shards", "abc"], "--shards takes comma-separated"),
    (["index", "--corpus", "c", "--model", "m", "--run", "r", "--shards", "0,-1"], "got '0,-1'"),
    (["run", "--corpus", "c", "--model", "m", "--run", "r", "--prompts", "p.txt", "--shards", "1;2"], "--shards"),
    (["attribute", "--run", "r", "--prompts", "p.txt", "--alpha", "abc"], "--alpha takes 'auto' or a number"),
    (["attribute", "--run", "r", "--prompts", "p.txt", "--alpha", "nan"], "--alpha"),
    (["attribute", "--run", "r", "--prompts", "p.txt", "--alpha", "-1"], "--alpha"),
    (["audit", "contamination", "--run", "r", "--benchmark", "b.jsonl", "--z-threshold", "high"], "--z-threshold"),
    (["bench", "scale", "--out", "o", "--sizes", "10k"], "--sizes"),
    (["index", "--corpus", "c", "--model", "m", "--run", "r", "--K", "abc"], "argument --K: invalid int value"),
    (["index", "--corpus", "c", "--run", "r"], "required: --model"),
])
def test_bad_option_values_are_one_error_line_with_exit_2(tmp_path, args, fragment):
    _one_error_line(_stride(*args, ws=tmp_path / "ws"), fragment)


def test_option_parsers():
    assert parse_int_list("0, 2,", "--shards") == [0, 2]
    assert parse_number_or_auto("auto", "--alpha") == "auto" and parse_number_or_auto("1e-3", "--alpha") == 1e-3
    for bad in ("", "x", "1.5", "-3"):
        with pytest.raises(StrideError, match="--shards"):
            parse_int_list(bad, "--shards")
    for bad in ("abc", "inf", "-0.1", ""):
        with pytest.raises(StrideError, match="--alpha"):
            parse_number_or_auto(bad, "--alpha")


@pytest.fixture(scope="module")
def run(pydocs_ws, tmp_path_factory):
    """A finished small run (ci model) in the session's pydocs workspace."""
    from stride_core.store.corpus import import_corpus, list_corpora, load_documents
    from stride_core.runs.pipeline import index, make_config

    ws, model_dir = pydocs_ws
    if "errs" not in [r["name"] for r in list_corpora(ws)]:
        src = tmp_path_factory.mktemp("errs") / "errs.jsonl"
        load_documents(ws, "pydocs", columns=["text", "source"], limit=40).to_json(src, orient="records", lines=True)
        import_corpus(ws, src, "errs")
    cfg = make_config("errs", str(model_dir), "ci", **{"subsets.K": 10, "operators.steps": 5})
    index(ws, "errs-r", cfg, device="cpu", progress=False)
    return ws, model_dir, cfg


def _copy_run(ws, name):
    dst = ws.run_dir(name)
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(ws.run_dir("errs-r"), dst)
    return dst


@pytest.mark.parametrize("damaged", ["cache/h.bin", "cache/z.bin", "cache/offsets.npy", "cache/target.npy", "tokens/ids.bin"])
def test_truncated_run_file_is_named_with_the_command_that_rebuilds_it(run, tmp_path, damaged):
    from stride_core.runs.pipeline import attribute, index

    ws, model_dir, cfg = run
    name = "errs-dmg"
    rdir = _copy_run(ws, name)
    path = rdir / damaged
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    prompts = tmp_path / "p.txt"
    prompts.write_text("The json module\n")
    if damaged.startswith("cache/"):
        line = _one_error_line(_stride("attribute", "--run", name, "--prompts", str(prompts), "--max-new-tokens", "2",
                                       "--device", "cpu", ws=ws.root), str(path), "is damaged")
    else:  # the token store is read by `stride index` (attribute reads the cache only)
        line = _one_error_line(_stride("index", "--corpus", "errs", "--model", str(model_dir), "--run", name, "--preset", "ci",
                                       "--K", "10", "--steps", "5", "--device", "cpu", ws=ws.root), str(path), "is damaged")
    assert f"delete the folder {path.parent}" in line and f"stride index --run {name}" in line and "--overwrite" in line
    # What the message says rebuilds it: delete the folder, index again with the same arguments.
    if damaged.startswith("tokens/"):
        shutil.rmtree(rdir / "cache")  # the cache was built from the old store; it is rebuilt from the new one
    shutil.rmtree(path.parent)
    index(ws, name, cfg, device="cpu", progress=False)
    df = attribute(ws, name, [{"query_id": "q", "prompt": "The json module"}], progress=False)
    assert len(df) > 0


def test_damaged_meta_json_is_named(run):
    from stride_core.method.activations import FeatureCache

    ws, _, _ = run
    rdir = _copy_run(ws, "errs-meta")
    (rdir / "cache" / "meta.json").write_text("{not json")
    with pytest.raises(RunError, match=r"meta.json is damaged .*stride index --run errs-meta"):
        FeatureCache.open(rdir / "cache")
    (rdir / "cache" / "meta.json").write_text(json.dumps({"finished": True, "dtype": "float16", "n_tokens": 10 ** 6,
                                                          "n_docs": 3, "D": 4, "C": 4}))
    with pytest.raises(RunError, match="is damaged"):
        FeatureCache.open(rdir / "cache")


def test_open_memmap_checks_the_size(tmp_path):
    from stride_core.method.storage import open_memmap

    p = tmp_path / "runs" / "r" / "cache" / "h.bin"
    p.parent.mkdir(parents=True)
    np.zeros((4, 3), np.float16).tofile(p)
    assert open_memmap(p, np.float16, "r", (4, 3), p.parent).shape == (4, 3)
    with pytest.raises(RunError, match=r"h.bin is damaged \(24 bytes, expected 32\).*stride index --run r"):
        open_memmap(p, np.float16, "r", (4, 4), p.parent)
    with pytest.raises(RunError, match="missing"):
        open_memmap(p.with_name("z.bin"), np.float16, "r", (4, 3), p.parent)


# --------------------------------------------------------------------------------- stride app --host


@pytest.fixture
def app_calls(monkeypatch):
    from stride_core.cli import app as app_cli
    from stride_core.runs import jobs

    execs = []
    monkeypatch.setattr(jobs, "start_demo_job", lambda ws, preset, device, run: {"pid": 1})
    monkeypatch.setattr(app_cli.os, "execve", lambda exe, argv, env: execs.append(argv))
    return execs


@pytest.mark.parametrize("host, warns", [("0.0.0.0", True), ("::", True), ("127.0.0.1", False), ("localhost", False),
                                         ("::1", False)])
def test_app_warns_on_a_non_loopback_host(tmp_path, capsys, app_calls, host, warns):
    from stride_core.cli.app import port_free
    from stride_core.cli import main

    if not port_free(host, 8766):
        pytest.skip(f"cannot bind {host} here")
    assert main(["--workspace", str(tmp_path / "ws"), "app", "--no-demo", "--host", host, "--port", "8766"]) == 0
    err = capsys.readouterr().err
    assert ("no authentication" in err) == warns, err
    if warns:
        assert err.startswith(f"warning: --host {host} ") and "127.0.0.1" in err
    argv = app_calls[-1]
    assert argv[argv.index("--server.address") + 1] == host


def test_is_loopback():
    from stride_core.cli.app import is_loopback

    assert all(is_loopback(h) for h in ("127.0.0.1", "127.0.1.1", "::1", "[::1]", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.20", "10.0.0.1", "no-such-host.invalid"))
