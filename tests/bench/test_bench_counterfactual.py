"""`stride bench counterfactual` at toy size: top-k removal, random control, caching, reference."""

import json

import numpy as np
import pytest

from stride_core.bench.counterfactual import retrain_without, run_counterfactual, summarize, top_k


def test_top_k_and_summary():
    assert list(top_k(np.array([0.1, 3.0, -1.0, 3.0, 2.0]), 3)) == [1, 3, 4]  # ties by index
    base = np.array([1.0, 2.0])
    rows = summarize(base, {("m", 2): np.array([1.3, 2.1])}, {2: np.array([[1.1, 2.0], [1.1, 2.0]])})
    (r,) = rows
    assert r["method"] == "m" and r["k"] == 2 and r["n_queries"] == 2
    assert r["topk_increase_mean"] == pytest.approx(0.2) and r["random_increase_mean"] == pytest.approx(0.05)
    assert r["ratio_to_random"] == pytest.approx(4.0) and r["share_queries_above_random"] == 1.0


def _oracle_helpful(ctx):
    """Scores that rank documents by their index (a deterministic, query-independent ranking)."""
    return np.tile(-np.arange(ctx.n_train, dtype=float), (ctx.n_query, 1)), {"fit_seconds": 0, "query_seconds": 0}


def test_counterfactual_end_to_end_digits(tmp_path):
    kw = dict(queries=3, ks="5,20", methods="idx", random_seeds=1, device="cpu", cache_dir=tmp_path / "cache",
              extra_methods={"idx": _oracle_helpful}, setting_overrides={"n_train": 120, "epochs": 3},
              print_table=False)
    res = run_counterfactual("digits-mlp", tmp_path / "out", **kw)
    assert res["n_retrains"] == 4  # query-independent ranking: one job per k, plus one random per k
    saved = json.loads((tmp_path / "out" / "counterfactual.json").read_text())
    rows = {(r["method"], r["k"]): r for r in saved["rows"]}
    assert set(rows) == {("idx", 5), ("idx", 20)}
    for r in rows.values():
        assert r["n_queries"] == 3 and np.isfinite(r["topk_increase_mean"]) and np.isfinite(r["random_increase_mean"])
    # top-5 of every query are documents 0..4
    cached = [json.loads(p.read_text()) for p in (tmp_path / "out" / "retrains").glob("*.json")]
    assert [0, 1, 2, 3, 4] in [c["removed"] for c in cached] and len(cached) == 4
    again = run_counterfactual("digits-mlp", tmp_path / "out", **kw)  # everything cached: same numbers
    assert json.dumps(again["rows"]) == json.dumps(res["rows"])  # (a ratio may be nan)


def test_retraining_with_nothing_removed_reproduces_the_base_model(tmp_path):
    from stride_core.bench.settings import get_setting

    s = get_setting("digits-mlp", n_train=120, n_query=4, epochs=3)
    ctx = s.build_context(tmp_path, device="cpu", progress=False)
    res = retrain_without(s, ctx, np.array([], dtype=np.int64), s.base_seed)
    base = s.query_outputs(ctx, ctx.model)["loss"]
    assert np.allclose(res["losses"], base, atol=1e-6)  # the loss increase is measured from the data alone
    res2 = retrain_without(s, ctx, np.arange(30), s.base_seed)
    assert res2["n_removed"] == 30 and not np.allclose(res2["losses"], base)
