"""Two processes through torchrun (gloo, CPU) give the rankings of one process (stride_core.runs.distributed)."""

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from stride_core.method.arguments import AttributeArgs
from stride_core.runs.distributed import Comm, DataParallel, DistArgs, token_blocks, top_rows
from stride_core.errors import InputError, StrideError
from stride_core.runs.pipeline import attribute, index, make_config

PROMPTS = ["The json module", "Logging handlers", "Regular expressions match", "Open a file"]
OVERRIDES = {"subsets.K": 24, "operators.steps": 10, "operators.linearity_weight": 0.5}


def _torchrun(ws, *args, nproc=2):
    """`torchrun --standalone --nproc_per_node N -m stride_core.cli.torchrun -- ARGS` (the `--` keeps
    torchrun's own parser away from options such as --run)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "-m", "stride_core.cli.torchrun", "--", *args, "--workspace", str(ws.root), "--no-progress"]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def tiny(pydocs_ws, tmp_path_factory):
    from stride_core.store.corpus import import_corpus, list_corpora, load_documents

    ws, model_dir = pydocs_ws
    d = tmp_path_factory.mktemp("dist")
    if "tiny" not in [r["name"] for r in list_corpora(ws)]:
        load_documents(ws, "pydocs", columns=["text", "source"], limit=120).to_json(d / "tiny.jsonl", orient="records", lines=True)
        import_corpus(ws, d / "tiny.jsonl", "tiny")
    prompts = d / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    return ws, model_dir, prompts


def test_two_processes_match_one_process(tiny):
    ws, model_dir, prompts = tiny
    cfg = make_config("tiny", str(model_dir), "ci", **OVERRIDES)
    index(ws, "one", cfg, device="cpu", progress=False)
    one = attribute(ws, "one", prompts, AttributeArgs(top_k=5, max_new_tokens=4, device="cpu"), progress=False)

    res = _torchrun(ws, "run", "--corpus", "tiny", "--model", str(model_dir), "--run", "two", "--preset", "ci",
                    "--K", "24", "--steps", "10", "--linearity-weight", "0.5", "--device", "cpu",
                    "--prompts", str(prompts), "--top-k", "5", "--max-new-tokens", "4")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    two = pd.read_parquet(ws.run_dir("two") / "attributions.parquet")

    # the index: same cache rows, operators equal up to float summation order
    from safetensors.numpy import load_file

    from stride_core.method.activations import FeatureCache

    ca, cb = FeatureCache.open(ws.run_dir("one") / "cache"), FeatureCache.open(ws.run_dir("two") / "cache")
    assert np.array_equal(ca.doc_ids, cb.doc_ids) and np.array_equal(ca.target, cb.target)
    assert np.allclose(np.asarray(ca.h, np.float32), np.asarray(cb.h, np.float32), atol=2e-3)
    oa, ob = load_file(ws.run_dir("one") / "operators.safetensors"), load_file(ws.run_dir("two") / "operators.safetensors")
    for name in oa:
        assert np.allclose(oa[name], ob[name], rtol=1e-3, atol=1e-5), name
    # the rankings: same documents in the same order, scores within float tolerance
    assert list(one.columns) == list(two.columns)
    key = ["query_id", "direction", "rank"]
    m = one.merge(two, on=key, how="outer", suffixes=("_1", "_2"), indicator=True)
    assert (m["_merge"] == "both").all(), m[m["_merge"] != "both"][key]
    assert (m["doc_id_1"] == m["doc_id_2"]).all(), m[m["doc_id_1"] != m["doc_id_2"]][key + ["score_1", "score_2"]]
    assert np.allclose(m["score_1"], m["score_2"], rtol=1e-3, atol=1e-5)
    assert (m["continuation_1"] == m["continuation_2"]).all()
    assert np.allclose(np.load(ws.run_dir("one") / "last_measurements.npy"), np.load(ws.run_dir("two") / "last_measurements.npy"), atol=1e-5)
    with ws.connect(read_only=True) as con:
        assert con.execute("SELECT count(*) FROM attributions WHERE run = 'two'").fetchone()[0] == len(two)


def test_a_failing_rank_stops_every_rank_with_one_message(tiny):
    ws, model_dir, _ = tiny
    res = _torchrun(ws, "index", "--corpus", "tiny", "--model", str(model_dir), "--run", "bad", "--preset", "ci",
                    "--K", "500", "--device", "cpu")
    assert res.returncode != 0
    assert res.stderr.count("error: K=500 subsets is larger than the 120 documents") == 1, res.stderr[-2000:]


def test_token_blocks_balance_tokens_and_cover_all_documents():
    offsets = np.concatenate([[0], np.cumsum([10, 1, 1, 1, 1, 10, 5, 5])])
    blocks = token_blocks(offsets, 2)
    assert blocks[0][0] == 0 and blocks[-1][1] == 8 and blocks[0][1] == blocks[1][0]
    sizes = [offsets[b] - offsets[a] for a, b in blocks]
    assert max(sizes) - min(sizes) <= 10
    assert token_blocks(offsets, 1) == [(0, 8)]
    assert [b - a for a, b in token_blocks(np.arange(3), 4)].count(0) >= 2  # more ranks than documents


def test_top_rows_equal_a_full_sort():
    rng = np.random.default_rng(0)
    w = np.where(rng.random(1000) < 0.1, rng.standard_normal(1000), 0.0)
    w[[5, 7]] = w.max() + 1  # a tie: lower index first among helpful
    w[[9, 3]] = w.min() - 1  # a tie: higher index first among harmful
    order = np.argsort(-w, kind="stable")
    hp, hm = top_rows(w, 20)
    assert hp.tolist() == [j for j in order[:20] if w[j] > 0]
    assert hm.tolist() == [j for j in order[::-1][:20] if w[j] < 0]
    assert hp[:2].tolist() == [5, 7] and hm[:2].tolist() == [9, 3]


def test_one_process_comm_and_arguments():
    comm = Comm()
    assert comm.block(7) == (0, 7) and comm.all_gather_object(3) == [3] and comm.broadcast_object("x") == "x"
    assert DataParallel(comm).share(5) == (0, 5)
    assert [Comm(r, 3).block(10) for r in range(3)] == [(0, 3), (3, 6), (6, 10)]
    with pytest.raises(ValueError, match="boom"):
        comm.agree(lambda: (_ for _ in ()).throw(ValueError("boom")))
    for bad in (dict(backend="mpi"), dict(query_batch=0), dict(timeout_s=0)):
        with pytest.raises(StrideError):
            DistArgs(**bad)


def test_the_hybrid_method_is_refused_not_silently_dropped():
    from stride_core.runs import distributed

    with pytest.raises(InputError, match="stride\\+lexical.*one process"):
        distributed.attribute(None, "r", [{"prompt": "x"}], Comm(), AttributeArgs(method="stride+lexical"))
