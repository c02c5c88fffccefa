"""The audit benchmarks at CI size: planted-truth corpus construction, and both benches end to end."""

import json

import numpy as np
import pandas as pd
import pytest

from stride_core.bench.audit_bench import (AuditBenchConfig, SelectionBenchConfig, build_bench_corpus, contamination_metrics,
                                           run_contamination_bench, run_selection_bench)
from stride_core.audits.contamination import NgramIndex
from stride_core.errors import StrideError


def _docs(n=300, seed=0):
    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(3000)]
    return [{"text": "\n\n".join(" ".join(rng.choice(words, 40)) for _ in range(2)), "source": f"m{i % 5}", "object": f"o{i}",
             "kind": "docstring"} for i in range(n)]


def test_bench_corpus_plants_copies_decoys_and_holds_out_items():
    cfg = AuditBenchConfig(counts=(1, 2, 4), items_per_count=2, n_clean=2, n_targets=6, item_words=24)
    docs = _docs()
    records, items, targets = build_bench_corpus(docs, cfg)
    assert len(items) == 8 and list(items["copies"]) == [1, 1, 2, 2, 4, 4, 0, 0]
    roles = pd.Series([r["role"] for r in records])
    assert (roles == "decoy").sum() == 8
    planted = pd.DataFrame([r for r in records if r["role"] in ("copy", "host")])
    counts = planted.groupby("planted_item").size()
    for _, it in items.iterrows():
        assert counts.get(it["item_id"], 0) == it["copies"]
    # verbatim copies contain the item exactly; decoys are not copies
    idx = NgramIndex(items["text"].tolist(), 8)
    for r in records:
        if r["role"] in ("copy", "host"):
            q = int(r["planted_item"][4:])
            if items.iloc[q]["kind"] == "verbatim":
                assert idx.scan(r["text"])[q][0] == 1.0
        if r["role"] == "decoy":
            q = int(r["planted_item"][4:])
            assert idx.scan(r["text"]).get(q, (0,))[0] < 0.5
    # held-out: no item source or target is an original corpus document
    originals = {r["text"] for r in records if r["role"] == "original"}
    assert not set(targets["text"]) & originals
    with pytest.raises(StrideError):
        AuditBenchConfig(preset="huge")


def test_contamination_metrics_count_items_copies_and_decoys():
    docs = pd.DataFrame({"doc_id": [1, 2, 3, 4], "role": ["copy", "host", "decoy", "original"],
                         "planted_item": ["a", "a", "a", None]})
    items = pd.DataFrame({"item_id": ["a", "c"], "copies": [2, 0]})
    pairs = pd.DataFrame({"item_id": ["a", "a", "a", "c"], "doc_id": [1, 2, 3, 4]}).merge(docs, on="doc_id")
    rows = {r["copies"]: r for r in contamination_metrics(pairs, items, docs, pd.Series([True, False, True, False]))}
    assert rows[2]["item_recall"] == 1.0 and rows[2]["copy_recall"] == 0.5
    assert rows["decoys"]["decoys_flagged"] == 1.0 and rows[0]["clean_items_flagged"] == 0.0


def test_audit_benches_end_to_end_at_ci_size(tmp_path):
    cfg = AuditBenchConfig(preset="ci", counts=(1, 2), items_per_count=2, n_clean=2, n_targets=4, max_docs=300)
    res = run_contamination_bench(tmp_path, cfg, device="cpu", progress=False)
    methods = {r["method"] for r in res["rows"]}
    assert {"overlap-only (default 0.5)", "combined (default)"} <= methods
    combined = [r for r in res["rows"] if r["method"] == "combined (default)" and r["copies"] in (1, 2)]
    assert all(0 <= r["item_recall"] <= 1 for r in combined)
    assert json.loads((tmp_path / "contamination_results.json").read_text())["rows"]
    sel = run_selection_bench(tmp_path, cfg, SelectionBenchConfig(budget=20, seeds=1, steps=10, methods=["stride", "random"]),
                              device="cpu", progress=False)
    assert {r["method"] for r in sel["rows"]} == {"stride", "random"}
    assert all(np.isfinite(r["target_loss"]) for r in sel["rows"])
