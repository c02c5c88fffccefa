"""`stride bench plot`: LDS against total time from results.json files (matplotlib is optional)."""

import json

import pytest

from stride_core.bench.plot import load_rows, total_seconds
from stride_core.errors import StrideError


def _row(setting, method, lds, fit, query):
    return {"setting": setting, "method": method, "lds_mean": lds, "lds_ci_low": lds - 0.05,
            "lds_ci_high": lds + 0.05, "fit_seconds": fit, "query_seconds": query, "device": "cpu",
            "n_models": 4, "n_queries": 5}


def _write(path, rows):
    path.mkdir(parents=True, exist_ok=True)
    (path / "results.json").write_text(json.dumps({"rows": rows, "skipped": []}))
    return path / "results.json"


def test_load_rows_groups_by_setting_and_later_files_win(tmp_path):
    a = _write(tmp_path / "a", [_row("digits-mlp", "random", 0.0, 0.0, 0.01), _row("digits-mlp", "stride", 0.3, 5, 6)])
    _write(tmp_path / "b", [_row("digits-mlp", "stride", 0.35, 4, 4), _row("tiny-lm", "tfidf", 0.3, 0.5, 0.01)])
    data = load_rows([a, tmp_path / "b"])  # a folder stands for its results.json
    assert sorted(data) == ["digits-mlp", "tiny-lm"]
    digits = {r["method"]: r for r in data["digits-mlp"]}
    assert digits["stride"]["lds_mean"] == 0.35 and total_seconds(digits["stride"]) == 8
    bad = _write(tmp_path / "c", [{"setting": "x", "method": "m"}])
    with pytest.raises(StrideError, match="lacks"):
        load_rows([bad])
    with pytest.raises(StrideError, match="cannot read"):
        load_rows([tmp_path / "missing.json"])


def test_bench_plot_cli_writes_a_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from stride_core.cli import main

    a = _write(tmp_path / "a", [_row("digits-mlp", "random", 0.0, 0.0, 0.0), _row("digits-mlp", "stride", 0.3, 5, 6),
                                _row("digits-mlp", "kronfluence", 0.31, 5, 6)])
    b = _write(tmp_path / "b", [_row("tiny-lm", "tfidf", 0.3, 0.5, 0.01)])
    out = tmp_path / "docs" / "lds.png"
    assert main(["bench", "plot", "--results", str(a), str(b), "--out", str(out), "--note", "toy"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000
    assert "wrote" in capsys.readouterr().out
