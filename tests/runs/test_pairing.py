"""Model/corpus pairing: a model folder's training record (stride_training.json) against the corpus a run indexes."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from stride_core.store.models import pairing_warnings, training_record

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the shared helpers
from dashboard_fixtures import make_corpus  # noqa: E402


def test_pairing_warnings():
    rec = {"corpus": "pydocs", "n_used_docs": 400, "n_corpus_docs": 2329}
    (w,) = pairing_warnings(rec, "mine", 1500)
    assert "trained on corpus 'pydocs', not on 'mine'" in w and "stride model train-tiny --corpus mine" in w
    (w,) = pairing_warnings(rec, "pydocs", 2329)
    assert "only the first 400 of the 2,329 documents" in w and "1,929 were never seen" in w and "--max-docs 0" in w
    assert pairing_warnings({**rec, "n_used_docs": 2329}, "pydocs", 2329) == []
    (w,) = pairing_warnings({**rec, "n_used_docs": 2329}, "pydocs", 2400)
    assert "had 2,329 documents when the model was trained and has 2,400 now" in w
    assert pairing_warnings(None, "pydocs", 10) == []  # a model that records nothing: nothing to check


def test_index_warns_and_records_the_pairing_in_provenance(ws, tmp_path, caplog):
    from stride_core.runs.pipeline import begin_run, make_config

    make_corpus(ws, tmp_path, "tiny", n=30)
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    (model / "model.safetensors").write_bytes(b"")
    assert training_record(model) is None
    (model / "stride_training.json").write_text(json.dumps({"corpus": "pydocs", "n_used_docs": 400, "n_corpus_docs": 2329}))
    assert training_record(model)["corpus"] == "pydocs"
    with caplog.at_level(logging.WARNING, logger="stride_core.runs.indexing"):
        rdir, _ = begin_run(ws, "r", make_config("tiny", str(model), "ci", n_docs=30), "cpu")
    assert "model/corpus pairing: the model was trained on corpus 'pydocs', not on 'tiny'" in caplog.text
    prov = json.loads((rdir / "provenance.json").read_text())
    assert len(prov["pairing_warnings"]) == 1 and "'pydocs'" in prov["pairing_warnings"][0]
    from stride_core.runs import jobs

    assert jobs.run_info(ws, "r")["pairing_warnings"] == prov["pairing_warnings"]
