import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def pytest_collection_modifyitems(config, items):
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA device (run on the device machine)")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture
def ws(tmp_path):
    from stride_core.store.workspace import Workspace

    return Workspace(tmp_path / "ws").ensure()


@pytest.fixture(scope="session")
def pydocs_ws(tmp_path_factory):
    """A workspace holding the default corpus and a ci-preset model (built once per session)."""
    from stride_core.runs.demo import ensure_default_model
    from stride_core.store.workspace import Workspace

    ws = Workspace(tmp_path_factory.mktemp("pydocs_ws")).ensure()
    model_dir = ensure_default_model(ws, preset="ci", device="cpu", progress=False)
    return ws, model_dir


@pytest.fixture(scope="session")
def small_run(pydocs_ws, tmp_path_factory):
    """Corpus "small" (the first 160 pydocs documents) indexed as run "r1" with the ci preset, K=40, 20 steps
    (built once per session). Returns (workspace, model folder, IndexConfig)."""
    from stride_core.store.corpus import import_corpus, list_corpora, load_documents
    from stride_core.runs.pipeline import index, make_config

    ws, model_dir = pydocs_ws
    src = tmp_path_factory.mktemp("small") / "small.jsonl"
    docs = load_documents(ws, "pydocs", columns=["text", "source"], limit=160)
    docs.to_json(src, orient="records", lines=True)
    if "small" not in [r["name"] for r in list_corpora(ws)]:
        import_corpus(ws, src, "small")
    cfg = make_config("small", str(model_dir), "ci", **{"subsets.K": 40, "operators.steps": 20})
    index(ws, "r1", cfg, device="cpu", progress=False)
    return ws, model_dir, cfg
