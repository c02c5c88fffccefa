"""End to end: index + attribute on a small corpus with the ci-preset model, and the bad inputs."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from stride_core.method.arguments import AttributeArgs
from stride_core.errors import InputError, RunError, StrideError
from stride_core.runs.pipeline import attribute, index, make_config, read_prompts


@pytest.fixture(scope="module")
def small(small_run):
    return small_run


def test_attribute_outputs_ranked_documents(small, tmp_path):
    ws, _, _ = small
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "The json module", "prompt_id": "a"}) + "\n" + json.dumps({"prompt": "Logging handlers"}) + "\n")
    out = tmp_path / "o.parquet"
    df = attribute(ws, "r1", prompts, AttributeArgs(top_k=5, max_new_tokens=8, device="cpu"), out=out, progress=False)
    assert list(df.columns[:8]) == ["query_id", "prompt", "continuation", "direction", "rank", "doc_id", "score", "snippet"]
    assert "source" in df.columns
    assert set(df["query_id"]) <= {"a", "q001"}
    for (_, direction), g in df.groupby(["query_id", "direction"]):
        s = g.sort_values("rank")["score"].to_numpy()
        assert (np.diff(s) <= 1e-12).all() if direction == "helpful" else (np.diff(s) >= -1e-12).all()
        assert ((s > 0) if direction == "helpful" else (s < 0)).all()
        assert len(g) <= 5
    assert pd.read_parquet(out).shape == df.shape
    with ws.connect(read_only=True) as con:
        n = con.execute("SELECT count(*) FROM attributions WHERE run = ?", ["r1"]).fetchone()[0]
    assert n == len(df)
    # csv and jsonl outputs
    for suffix in (".csv", ".jsonl"):
        attribute(ws, "r1", prompts, AttributeArgs(top_k=3, max_new_tokens=4, device="cpu"), out=tmp_path / f"o{suffix}", progress=False)
        assert (tmp_path / f"o{suffix}").stat().st_size > 0


def test_rerun_skips_and_changed_args_raise(small):
    ws, model_dir, cfg = small
    before = (ws.run_dir("r1") / "operators.safetensors").stat().st_mtime
    index(ws, "r1", cfg, device="cpu", progress=False)  # finished stages are skipped
    assert (ws.run_dir("r1") / "operators.safetensors").stat().st_mtime == before
    other = make_config("small", str(model_dir), "ci", **{"subsets.K": 30, "operators.steps": 20})
    with pytest.raises(RunError, match="different arguments"):
        index(ws, "r1", other, device="cpu", progress=False)
    mismatched = make_config("pydocs", str(model_dir), "ci", **{"subsets.K": 40, "operators.steps": 20})
    with pytest.raises(RunError, match="different arguments"):
        index(ws, "r1", mismatched, device="cpu", progress=False)


def test_bad_inputs(small, tmp_path):
    ws, model_dir, _ = small
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(InputError, match="empty"):
        read_prompts(empty)
    with pytest.raises(InputError, match="no such"):
        read_prompts(tmp_path / "none.txt")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"body": "no prompt field"}\n')
    with pytest.raises(InputError, match="prompt"):
        read_prompts(bad)
    bad.write_text('{"id": 1, "prompt": "a"}\n{"id": 1, "prompt": "b"}\n')
    with pytest.raises(InputError, match="duplicate prompt ids: 1"):
        read_prompts(bad)
    with pytest.raises(RunError, match="unknown run"):
        attribute(ws, "nope", [{"query_id": "a", "prompt": "x"}], progress=False)
    with pytest.raises(StrideError, match="larger than"):
        index(ws, "big", make_config("small", str(model_dir), "ci", **{"subsets.K": 500}), device="cpu", progress=False)
    assert not (ws.run_dir("big") / "args.json").exists()  # nothing written: the corrected retry needs no --overwrite
    with pytest.raises(StrideError, match="no module named"):
        index(ws, "lay", make_config("small", str(model_dir), "ci", **{"cache.layer": "transformer.h.99"}), device="cpu", progress=False)
    with pytest.raises(StrideError, match="unknown corpus"):
        index(ws, "nc", make_config("missing", str(model_dir), "ci"), device="cpu", progress=False)


def test_prompt_files_in_the_formats_users_have(tmp_path):
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + b'{"query_id": 0, "prompt": "first"}\r\n{"text": "second"}\r\n')
    assert read_prompts(bom) == [{"query_id": "0", "prompt": "first"}, {"query_id": "q001", "prompt": "second"}]
    lst = tmp_path / "p.json"
    lst.write_text('[{"id": "a", "prompt": "x"}, {"prompt": "y"}]')
    assert [(o["query_id"], o["prompt"]) for o in read_prompts(lst)] == [("a", "x"), ("q001", "y")]
    nd = tmp_path / "p.ndjson"
    nd.write_text('{"prompt": "z"}\n')
    assert read_prompts(nd) == [{"query_id": "q000", "prompt": "z"}]
    txt = tmp_path / "p.txt"
    txt.write_bytes(b"\xef\xbb\xbfone\r\n\r\ntwo\r\n")
    assert [o["prompt"] for o in read_prompts(txt)] == ["one", "two"]


def test_long_prompt_is_truncated_with_warning(small, caplog):
    ws, _, _ = small
    long = "the json module encodes " * 200
    with caplog.at_level("WARNING"):
        df = attribute(ws, "r1", [{"query_id": "long", "prompt": long}], AttributeArgs(top_k=3, max_new_tokens=4, device="cpu"), progress=False)
    assert "long" in caplog.text and "truncated" in caplog.text
    assert set(df["query_id"]) <= {"long"}


def test_interrupted_run_resumes_to_same_result(small, monkeypatch):
    """Kill operator training mid-way: the re-run redoes that stage and matches an uninterrupted run."""
    import stride_core.method.estimator as est_mod

    ws, model_dir, _ = small
    cfg = make_config("small", str(model_dir), "ci", **{"subsets.K": 40, "operators.steps": 20})
    orig = est_mod.StrideEstimator.fit

    def boom(self, *a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(est_mod.StrideEstimator, "fit", boom)
    with pytest.raises(KeyboardInterrupt):
        index(ws, "r2", cfg, device="cpu", progress=False)
    assert not (ws.run_dir("r2") / "operators.safetensors").exists()
    monkeypatch.setattr(est_mod.StrideEstimator, "fit", orig)
    index(ws, "r2", cfg, device="cpu", progress=False)
    p = [{"query_id": "a", "prompt": "The json module"}]
    a = attribute(ws, "r1", p, AttributeArgs(top_k=5, max_new_tokens=6, device="cpu"), progress=False)
    b = attribute(ws, "r2", p, AttributeArgs(top_k=5, max_new_tokens=6, device="cpu"), progress=False)
    assert a["doc_id"].tolist() == b["doc_id"].tolist()
    assert np.allclose(a["score"], b["score"], atol=1e-6)


def test_cli_run_and_errors(small, tmp_path):
    ws, model_dir, _ = small
    prompts = tmp_path / "p.txt"
    prompts.write_text("The logging module\n")
    base = [sys.executable, "-m", "stride_core.cli", "--workspace", str(ws.root), "--no-progress"]
    res = subprocess.run(base + ["attribute", "--run", "r1", "--prompts", str(prompts), "--top-k", "3", "--max-new-tokens", "4",
                                 "--device", "cpu", "--out", str(tmp_path / "o.csv")], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "o.csv").exists()
    (tmp_path / "e.txt").write_text("")
    res = subprocess.run(base + ["attribute", "--run", "r1", "--prompts", str(tmp_path / "e.txt")], capture_output=True, text=True, timeout=600)
    assert res.returncode == 2 and res.stderr.startswith("error:") and "Traceback" not in res.stderr


def test_designs_run_through_the_cli(small, tmp_path):
    """`--designs 2`: one stacked subsets file, both designs' operators in one file, attribution works."""
    from stride_core.cli import commands as cli

    ws, model_dir, _ = small
    prompts = tmp_path / "p.txt"
    prompts.write_text("The json module\n")
    rc = cli.main(["--workspace", str(ws.root), "--no-progress", "run", "--corpus", "small", "--model", str(model_dir),
                   "--run", "ens", "--preset", "ci", "--K", "20", "--steps", "10", "--designs", "2", "--prompts", str(prompts),
                   "--top-k", "3", "--max-new-tokens", "4", "--device", "cpu"])
    assert rc == 0
    args = json.loads((ws.run_dir("ens") / "args.json").read_text())
    assert args["index"]["subsets"]["designs"] == 2
    from safetensors.torch import load_file

    keys = load_file(str(ws.run_dir("ens") / "operators.safetensors")).keys()
    assert "shape" in keys and "d1.shape" in keys
    assert len(pd.read_parquet(ws.run_dir("ens") / "attributions.parquet")) > 0


def test_preset_K_is_scaled_to_a_small_corpus(small, tmp_path):
    """A preset K too large for the corpus is lowered to 0.6 N (S at most K) and its steps with it; an explicit K
    or steps is kept."""
    import json

    from stride_core.cli import commands as cli
    from stride_core.store.corpus import import_corpus, load_documents

    ws, model_dir, _ = small
    cfg = make_config("small", str(model_dir), "default", n_docs=160)
    assert (cfg.subsets.K, cfg.subsets.S) == (96, 5)
    assert make_config("small", str(model_dir), "default", n_docs=3).subsets.K == 2
    assert make_config("small", str(model_dir), "default", n_docs=3).subsets.S == 2
    assert make_config("small", str(model_dir), "default", n_docs=160, **{"subsets.K": 150}).subsets.K == 150
    assert make_config("small", str(model_dir), "default", n_docs=10_000).subsets.K == 1000  # large corpora untouched
    # the steps follow K down, so that each subset is trained in as many batches as at the preset's K (100)
    assert make_config("small", str(model_dir), "default", n_docs=1000).operators.steps == 240  # K=600: 240 * 250 / 600
    assert cfg.operators.steps == 100  # K=96 < subset_batch: every subset in every step
    assert make_config("small", str(model_dir), "default", n_docs=10_000).operators.steps == 400
    assert make_config("small", str(model_dir), "default", n_docs=1000, **{"operators.steps": 7}).operators.steps == 7
    src = tmp_path / "tiny.jsonl"
    load_documents(ws, "pydocs", columns=["text"], limit=50).to_json(src, orient="records", lines=True)
    import_corpus(ws, src, "tiny50")
    rc = cli.main(["--workspace", str(ws.root), "--no-progress", "index", "--corpus", "tiny50", "--model", str(model_dir),
                   "--run", "tinyk", "--preset", "ci", "--steps", "3", "--device", "cpu"])
    assert rc in (0, None)
    args = json.loads((ws.run_dir("tinyk") / "args.json").read_text())["index"]
    assert args["subsets"]["K"] == 30 and args["subsets"]["S"] == 4
    from stride_core.runs import jobs

    info = jobs.run_info(ws, "tinyk")  # a CLI run: the preset the command had is shown, and its working time
    assert info["preset"] == "ci" and info["phases"].get("index", 0) > 0
    # the same command again resolves to the same arguments: the finished run is reused, nothing raises
    assert cli.main(["--workspace", str(ws.root), "--no-progress", "index", "--corpus", "tiny50", "--model", str(model_dir),
                     "--run", "tinyk", "--preset", "ci", "--steps", "3", "--device", "cpu"]) in (0, None)
