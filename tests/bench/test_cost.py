"""`stride bench cost`: arguments, the crossover, the time budget and a small end-to-end run."""

import importlib.util
import json
import math

import pytest

from stride_core.bench import cost
from stride_core.errors import StrideError


def test_arguments_name_what_is_wrong():
    with pytest.raises(StrideError, match="unknown sizes"):
        cost.CostArgs(sizes=("3m",))
    with pytest.raises(StrideError, match="unknown methods"):
        cost.CostArgs(methods=("trak",))
    with pytest.raises(StrideError, match="tokens"):
        cost.CostArgs(tokens=2000)


def _row(size, n, method, total, status="ok"):
    return {"size": size, "n_params": n, "method": method, "status": status, "total_s": total, "fit_s": total * 0.8,
            "query_s": total * 0.2, "peak_rss_mb": 100.0}


def test_crossover_is_interpolated_on_log_axes():
    rows = [_row("1m", 1e6, "stride", 20), _row("1m", 1e6, "kronfluence", 10),
            _row("100m", 1e8, "stride", 50), _row("100m", 1e8, "kronfluence", 100)]
    c = cost.crossover(rows)
    assert math.isclose(c["params"], 1e7, rel_tol=1e-6)  # ratio 2 -> 0.5: halfway in log params
    assert "10.0M" in c["text"]
    assert cost.crossover(rows[:2])["params"] is None  # slower at the only size
    failed = rows[:2] + [_row("100m", 1e8, "stride", 0, "over budget (> 5 s)"), rows[3]]
    assert cost.crossover(failed)["params"] is None  # a size without STRIDE's time is not a crossover
    table = cost.format_table({"rows": failed})
    assert "over budget" in table and "0.50x" in table  # the failed row is shown, not dropped


def test_a_method_over_its_budget_is_recorded_not_dropped(tmp_path):
    args = cost.CostArgs(max_seconds=0.2)
    row = cost.run_one("stride", tmp_path / "no-model", tmp_path / "w", args)
    assert row["status"].startswith("over budget")


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="transformers missing")
def test_small_cost_bench_runs_the_product_and_keeps_finished_rows(tmp_path):
    methods = ("stride",) + (("kronfluence",) if importlib.util.find_spec("kronfluence") else ())
    args = cost.CostArgs(sizes=("1m",), methods=methods, docs=12, queries=2, tokens=32, vocab_size=300, max_seconds=600)
    res = cost.run_cost_bench(tmp_path, args)
    rows = {r["method"]: r for r in res["rows"]}
    st = rows["stride"]
    assert st["status"] == "ok", st["status"]
    assert st["total_s"] == pytest.approx(st["fit_s"] + st["query_s"], abs=1e-2)
    assert "train operators" in st["stages"]["fit"] and "attribute" in st["stages"]["query"]
    assert st["peak_rss_mb"] > 0 and st["n_params"] > 0 and st["K"] <= 12
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["corpus"]["docs"] == 12 and saved["corpus"]["queries"] == 2
    again = cost.run_cost_bench(tmp_path, args)  # same data arguments: the finished rows are kept, not re-run
    assert again["rows"][0]["total_s"] == st["total_s"]
    assert "1m" in cost.format_table(again)
    other = cost.run_cost_bench(tmp_path, cost.CostArgs(**{**args.__dict__, "methods": ("stride",), "max_seconds": 0.2,
                                                         "sizes": ("5m",)}))
    by = {(r["size"], r["method"]): r for r in other["rows"]}
    assert by[("5m", "stride")]["status"].startswith("over budget")  # recorded, not dropped
    assert by[("1m", "stride")]["total_s"] == st["total_s"]  # the earlier size stays in the file and the table
