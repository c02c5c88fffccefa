"""Query-specific rankings (the generic component removed), given completions, and the tracing bench."""

import json

import numpy as np
import pandas as pd
import pytest

from stride_core.method.arguments import AttributeArgs
from stride_core.store.corpus import load_documents
from stride_core.errors import InputError, StrideError
from stride_core.method.generic import GENERIC_FILE, GENERIC_TABLE, masked_mean, remove_generic
from stride_core.runs.pipeline import attribute, index, read_prompts
from stride_core.method.recovery import LassoRecovery
from stride_core.method.subsets import SubsetDesign


def test_masked_mean_leaves_out_each_rows_own_subsets():
    y = np.array([[1.0, 10.0, 3.0], [5.0, 7.0, 100.0]])
    members = np.array([[1], [2]])  # row 0 is in subset 1, row 1 in subset 2
    assert np.allclose(masked_mean(y, members), [3.0, 7.0, 3.0])


def test_removing_a_common_component_recovers_each_querys_own_documents():
    """Planted truth: every query's y = M (w_generic + w_q). Raw recovery puts the generic documents on top of
    every query; after subtracting the generic component (measured as the mean of reference queries with
    their own subsets left out) each query's top documents are its own planted ones."""
    rng = np.random.default_rng(0)
    N, K, S, Q = 400, 160, 4, 6
    design = SubsetDesign.random(np.arange(N), K, S, seed=1)
    M = design.dense()  # (K, N)
    w_gen = np.zeros(N)
    w_gen[[3, 50, 77]] = 2.0  # helps every query alike
    own = [rng.choice(np.arange(100, N), 2, replace=False) for _ in range(Q)]
    W = np.zeros((Q, N))
    for q in range(Q):
        W[q, own[q]] = 1.0
    Y = (W + w_gen) @ M.T + 0.01 * rng.standard_normal((Q, K))
    # reference queries: other documents' self-effects plus the generic one
    R = 40
    refs = rng.choice(np.arange(100, N), R, replace=False)
    Wr = np.zeros((R, N))
    Wr[np.arange(R), refs] = 1.0
    Yr = (Wr + w_gen) @ M.T
    c = masked_mean(Yr, design.members[refs])
    raw = LassoRecovery(alpha="auto").fit(design, Y).influence_
    spec = LassoRecovery(alpha="auto").fit(design, Y - c[None]).influence_
    fitted = LassoRecovery(alpha="auto").fit(design, remove_generic(Y, c)).influence_  # what attribute ranks by
    for q in range(Q):
        assert set(np.argsort(-raw[q])[:3]) == {3, 50, 77}
        assert set(np.argsort(-spec[q])[:2]) == set(own[q].tolist())
        assert set(np.argsort(-fitted[q])[:2]) == set(own[q].tolist())
    assert np.allclose(c, w_gen @ M.T, atol=0.05)


def test_remove_generic_fits_each_rows_own_amount_and_never_adds_it():
    rng = np.random.default_rng(0)
    c = rng.standard_normal(50)
    s = rng.standard_normal((3, 50))
    s -= np.outer(s @ c / (c @ c), c)  # specific parts orthogonal to c
    y = s + np.array([0.3, 1.0, -2.0])[:, None] * c[None]
    out = remove_generic(y, c)
    assert np.allclose(out[:2], s[:2])  # each row loses exactly its own multiple of c
    assert np.allclose(out[2], y[2])  # a row anti-aligned with c is left alone (the multiple is floored at 0)
    assert np.allclose(remove_generic(y[:1], c), out[:1])  # row by row: independent of the other prompts
    assert np.allclose(remove_generic(y, np.zeros(50)), y)


@pytest.fixture(scope="module")
def run(small_run):
    """Run "g1": the session's small corpus and ci model indexed like "r1", so these tests leave "r1" alone."""
    ws, _, cfg = small_run
    index(ws, "g1", cfg, device="cpu", progress=False)
    return ws


ARGS = dict(top_k=5, max_new_tokens=6, device="cpu", n_reference_queries=16)


def test_specific_ranking_is_the_default_and_never_depends_on_other_prompts(run):
    ws = run
    a = [{"query_id": "a", "prompt": "The json module"}]
    b = [{"query_id": "b", "prompt": "A socket connects to"}]
    alone = attribute(ws, "g1", a, AttributeArgs(**ARGS), progress=False)
    gen_file = ws.run_dir("g1") / GENERIC_FILE
    mtime = gen_file.stat().st_mtime
    both = attribute(ws, "g1", a + b, AttributeArgs(**ARGS), progress=False)
    assert gen_file.stat().st_mtime == mtime  # measured once per run and setting, then reused
    same = both[both["query_id"] == "a"]
    assert alone["doc_id"].tolist() == same["doc_id"].tolist()
    # Float rounding only: the batched forward changes y by ~1e-5 relative (padding, other matmul shapes), and the
    # Lasso's stopping rule (a 1e-4 relative step over 10 iterations) turns that into up to ~2e-3 on a score
    # (1.7e-3 measured, 2026-12-03). A dependence on the other prompt (e.g. a generic part taken from the batch)
    # moves scores by their own size.
    assert np.allclose(alone["score"], same["score"], rtol=1e-2, atol=1e-5)
    generic = pd.read_parquet(ws.run_dir("g1") / GENERIC_TABLE)
    assert {"direction", "rank", "doc_id", "score", "snippet"} <= set(generic.columns)
    raw = attribute(ws, "g1", a + b, AttributeArgs(**ARGS, ranking="raw"), progress=False)
    # the generic part was removed from at least one prompt (a prompt anti-aligned with it keeps its y)
    assert not (raw["doc_id"].tolist() == both["doc_id"].tolist() and np.allclose(raw["score"], both["score"]))
    y = np.load(ws.run_dir("g1") / "last_measurements.npy")  # the raw measurements stay available
    assert y.shape[0] == 2


def test_given_completion_is_attributed_by_teacher_forcing(run, tmp_path):
    ws = run
    p = tmp_path / "p.jsonl"
    p.write_text(json.dumps({"id": "c", "prompt": "The json module", "completion": " encodes objects as strings."}) + "\n")
    assert read_prompts(p)[0]["completion"] == " encodes objects as strings."
    df = attribute(ws, "g1", p, AttributeArgs(**ARGS), progress=False)
    assert set(df["continuation"]) == {" encodes objects as strings."}
    assert df["continuation_given"].all()  # the dashboard says whose text it is
    gen = attribute(ws, "g1", [{"query_id": "c", "prompt": "The json module"}], AttributeArgs(**ARGS), progress=False)
    assert gen["continuation"].iloc[0] != " encodes objects as strings."
    assert not gen["continuation_given"].any()
    # teacher forcing scores exactly the completion's tokens, after the prompt's
    from stride_core.runs.pipeline import open_run
    from stride_core.runs.prompts import generate, query_items

    task = open_run(ws, "g1", AttributeArgs(device="cpu")).task
    g = generate(task, [{"query_id": "c", "prompt": "The json module", "completion": " encodes objects as strings."}], AttributeArgs(**ARGS))[0]
    tok = task.tokenizer
    assert g["prompt_ids"] == tok("The json module", add_special_tokens=False)["input_ids"]
    assert g["continuation_ids"] == tok(" encodes objects as strings.", add_special_tokens=False)["input_ids"]
    assert query_items([g], "continuation") == [(g["prompt_ids"] + g["continuation_ids"], len(g["prompt_ids"]))]
    assert query_items([g]) == [(g["prompt_ids"] + g["continuation_ids"], 0)]  # default: prompt + continuation
    p.write_text(json.dumps({"prompt": "x", "completion": ""}) + "\n")
    with pytest.raises(InputError, match="completion"):
        read_prompts(p)


def test_cli_prompt_and_completion(run, capsys):
    from stride_core.cli import main

    ws = run
    rc = main(["--workspace", str(ws.root), "--no-progress", "attribute", "--run", "g1", "--prompt", "The json module",
               "--completion", " loads a string.", "--top-k", "3", "--max-new-tokens", "4", "--device", "cpu"])
    assert rc == 0
    assert "loads a string." in capsys.readouterr().out
    assert main(["--workspace", str(ws.root), "attribute", "--run", "g1", "--completion", "x"]) == 2
    assert "either --prompts FILE or --prompt TEXT" in capsys.readouterr().err
    out = ws.root / "hyb.parquet"
    assert main(["--workspace", str(ws.root), "--no-progress", "attribute", "--run", "g1", "--prompt", "The json module",
                 "--method", "stride+lexical", "--top-k", "3", "--max-new-tokens", "2", "--device", "cpu", "--out", str(out)]) == 0
    assert {"lexical", "hybrid_z"} <= set(pd.read_parquet(out).columns)
    with pytest.raises(SystemExit) as bad:  # argparse's own usage error for an unknown choice
        main(["--workspace", str(ws.root), "attribute", "--run", "g1", "--prompt", "x", "--method", "lexical"])
    assert bad.value.code == 2 and "stride+lexical" in capsys.readouterr().err


def test_truncation_names_the_index_limit(run, caplog):
    ws = run
    long = "the json module encodes " * 200
    with caplog.at_level("WARNING"):
        df = attribute(ws, "g1", [{"query_id": "long", "prompt": long}], AttributeArgs(**ARGS), progress=False)
    assert "max_tokens=64" in caplog.text and "--max-tokens" in caplog.text
    assert df["truncated"].all() and (df["prompt_used"].str.len() < len(long)).all()


def test_stride_plus_lexical_ranks_helpful_documents_by_the_z_sum_and_keeps_strides_score(run):
    ws = run
    docs = load_documents(ws, "small", ["doc_id", "text"])
    src = int(docs["doc_id"].iloc[7])
    copied = " ".join(str(docs["text"].iloc[7]).split()[:14])  # a prompt copied from one document
    prompts = [{"query_id": "a", "prompt": copied}, {"query_id": "b", "prompt": "A socket connects to"}]
    args = dict(ARGS, top_k=8, max_new_tokens=0)
    pure = attribute(ws, "g1", prompts, AttributeArgs(**args), progress=False)
    hyb = attribute(ws, "g1", prompts, AttributeArgs(**args, method="stride+lexical"), progress=False)
    assert {"lexical", "hybrid_z"} <= set(hyb.columns) and "hybrid_z" not in pure.columns
    for q in ("a", "b"):
        h = hyb[(hyb["query_id"] == q) & (hyb["direction"] == "helpful")].sort_values("rank")
        assert len(h) == 8 and (np.diff(h["hybrid_z"].to_numpy()) <= 1e-12).all()  # best first
        p = pure[pure["query_id"] == q]
        same = h.merge(p[p["direction"] == "helpful"][["doc_id", "score"]], on="doc_id", suffixes=("", "_pure"))
        assert np.allclose(same["score"], same["score_pure"])  # `score` is STRIDE's own
        harm = lambda d: d[(d["query_id"] == q) & (d["direction"] == "harmful")][["doc_id", "score"]].reset_index(drop=True)  # noqa: E731
        pd.testing.assert_frame_equal(harm(hyb), harm(pure))  # harmful documents stay STRIDE's
    # the lexical part brings in the document the prompt was copied from, which the sparse Lasso left at 0;
    # cosines are in [0, 1], and the copied document has the largest
    top = hyb[(hyb["query_id"] == "a") & (hyb["direction"] == "helpful")].sort_values("rank")
    assert src in set(top["doc_id"]) and src not in set(pure[pure["query_id"] == "a"]["doc_id"]), top
    assert top["lexical"].between(0, 1 + 1e-6).all() and int(top.loc[top["lexical"].idxmax(), "doc_id"]) == src
    # the DuckDB copy keeps the result-only columns out of the corpus metadata
    with ws.connect(read_only=True) as con:
        meta = con.execute("SELECT metadata FROM attributions WHERE run = 'g1' LIMIT 1").fetchone()[0]
    assert "hybrid_z" not in meta and "lexical" not in meta


def test_bad_attribute_settings():
    with pytest.raises(StrideError, match="method"):
        AttributeArgs(method="lexical")
    with pytest.raises(StrideError, match="ranking"):
        AttributeArgs(ranking="generic")
    with pytest.raises(StrideError, match="repetition_penalty"):
        AttributeArgs(repetition_penalty=float("nan"))


def test_tracing_bench_reports_every_method(run, tmp_path):
    from stride_core.bench.tracing import run_tracing_bench

    res = run_tracing_bench(run, "g1", tmp_path / "tr", n_prompts=6, k=10, device="cpu", progress=False)
    assert set(res["methods"]) == {"stride", "stride-raw", "stride-continuation", "stride+lexical", "tfidf"}
    for r in res["methods"].values():
        assert 0.0 <= r["hit@10"] <= 1.0 and 0.0 < r["max_share@10"] <= 1.0
    assert res["methods"]["tfidf"]["hit@10"] >= 0.8  # a verbatim prefix is lexically its source
    assert (tmp_path / "tr" / "results.json").exists()


def test_tracing_copied_prompts_needs_the_prompts_loss(small_run, tmp_path):
    """Small CPU tracing check: prompts copied from corpus documents trace to their source when the prompt's
    own tokens are scored (the default), and do not when only the model's continuation is (the method's
    operators lower the loss of their subsets' text; a continuation the model wrote is not that text)."""
    from stride_core.bench.tracing import run_tracing_bench
    from stride_core.runs.pipeline import make_config

    ws, model_dir, _ = small_run
    cfg = make_config("small", str(model_dir), "ci", **{"subsets.K": 150, "subsets.S": 3, "operators.R": 16, "operators.steps": 150})
    index(ws, "trace", cfg, device="cpu", progress=False)
    res = run_tracing_bench(ws, "trace", tmp_path / "tr", n_prompts=20, k=10, device="cpu", progress=False)["methods"]
    assert res["stride"]["hit@10"] >= 0.25, res
    assert res["stride"]["hit@10"] >= res["stride-continuation"]["hit@10"] + 0.2, res
