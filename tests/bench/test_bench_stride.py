"""The STRIDE row of the LDS harness, at toy size so the harness never rots."""

import json

from stride_core.bench.harness import METHODS, run_lds_bench
from stride_core.bench.stride_method import stride_method


def test_stride_is_registered_and_runs_in_the_harness(tmp_path):
    assert "stride" in METHODS and "stride-linearity" in METHODS
    res = run_lds_bench("digits-mlp", tmp_path / "out", models=4, queries=5, methods="stride-tiny,random", device="cpu",
                        extra_methods={"stride-tiny": stride_method(K=40, S=4, steps=15, linearity_weight=0.5, jl_dim=8,
                                                                     linearity_batch=4)},
                        cache_dir=tmp_path / "cache", progress=False, print_table=False)
    rows = {r["method"]: r for r in res["rows"]}
    assert set(rows) == {"stride-tiny", "random"}
    r = rows["stride-tiny"]
    assert -1 <= r["lds_mean"] <= 1 and r["fit_seconds"] > 0 and r["query_seconds"] > 0
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert any(x["method"] == "stride-tiny" for x in saved["rows"])


def test_stride_plus_lexical_is_the_z_sum_and_reuses_the_same_calls_stride_scores(tmp_path):
    import numpy as np

    from stride_core.bench.stride_method import _hybrid, _resolve
    from stride_core.store.text import zscore_rows

    small = {"K": 40, "S": 4, "steps": 15, "designs": 1}
    calls = []

    def counted(ctx):
        calls.append(1)
        return _resolve(small)(ctx)

    run_lds_bench("digits-mlp", tmp_path / "out", models=3, queries=4, methods="st,hyb,tfidf", device="cpu",
                  extra_methods={"st": counted, "hyb": _hybrid(small)}, cache_dir=tmp_path / "cache", progress=False,
                  print_table=False)
    assert len(calls) == 1  # the hybrid took the scores STRIDE computed earlier in the call
    sc = {m: np.load(tmp_path / "out" / "scores" / f"{m}.npy") for m in ("st", "hyb", "tfidf")}
    assert np.allclose(sc["hyb"], zscore_rows(sc["st"]) + zscore_rows(sc["tfidf"]), atol=1e-4)
    z = zscore_rows(np.array([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]]))
    assert np.allclose(z[0], [-1.2247, 0.0, 1.2247], atol=1e-4) and (z[1] == 0).all()  # a constant row is 0


def test_matched_tail_breaks_only_the_lasso_ties():
    """order_tail_by_matched keeps every non-zero entry as it is and orders the zeros by the matched statistic,
    strictly between the smallest positive and the largest negative entry of the query."""
    import numpy as np
    from types import SimpleNamespace

    from stride_core.audits.selection import matched_scores
    from stride_core.bench.stride_method import order_tail_by_matched
    from stride_core.method.subsets import SubsetDesign

    rng = np.random.default_rng(0)
    design = SubsetDesign.random(np.arange(30), K=12, S=3, seed=1)
    y = rng.normal(size=(2, 12))
    W = np.zeros((2, 30))
    W[0, [3, 7]], W[0, 11] = [0.4, 0.1], -0.2
    W[1, 5] = 0.05
    out = order_tail_by_matched(W, y, [SimpleNamespace(design=design)])
    nz = W != 0
    assert np.array_equal(out[nz], W[nz])
    m = matched_scores(y, design.members)
    for q in range(2):
        zero = ~nz[q]
        assert np.abs(out[q, zero]).max() < np.abs(W[q, nz[q]]).min()
        assert np.array_equal(np.argsort(out[q, zero], kind="stable"), np.argsort(m[q, zero], kind="stable"))
