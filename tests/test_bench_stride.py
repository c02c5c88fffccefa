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
