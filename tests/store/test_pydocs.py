from stride_core.store.corpus import load_documents
from stride_core.store.pydocs import build_default_corpus, iter_pydocs


def test_default_corpus_is_deterministic_and_sized(tmp_path):
    from stride_core.store.workspace import Workspace

    a = Workspace(tmp_path / "a")
    b = Workspace(tmp_path / "b")
    ia = build_default_corpus(a)
    build_default_corpus(b)
    da = load_documents(a, "pydocs", columns=["doc_id", "content_hash", "source"])
    db = load_documents(b, "pydocs", columns=["doc_id", "content_hash", "source"])
    assert da.equals(db)
    assert 1500 <= ia["n_docs"] <= 6000
    assert 0.8e6 <= ia["n_chars"] <= 3e6
    assert {"json", "logging", "re", "pydoc_data.topics"} <= set(da["source"])
    # idempotent: a second build returns the existing corpus
    assert build_default_corpus(a)["n_docs"] == ia["n_docs"]


def test_sample_prompts_not_copied_from_corpus():
    from pathlib import Path
    import json

    data = Path(__file__).resolve().parents[2] / "data"
    prompts = [l.strip() for l in (data / "sample_prompts.txt").read_text().splitlines() if l.strip()]
    jl = [json.loads(l)["prompt"] for l in (data / "sample_prompts.jsonl").read_text().splitlines() if l.strip()]
    assert len(prompts) >= 20 and prompts == jl
    corpus = " ".join(" ".join(d["text"].split()) for d in iter_pydocs())
    assert not [p for p in prompts if p in corpus]
