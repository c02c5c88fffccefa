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
    from stride_core.workspace import Workspace

    return Workspace(tmp_path / "ws").ensure()


@pytest.fixture(scope="session")
def pydocs_ws(tmp_path_factory):
    """A workspace holding the default corpus and a ci-preset model (built once per session)."""
    from stride_core.demo import ensure_default_model
    from stride_core.workspace import Workspace

    ws = Workspace(tmp_path_factory.mktemp("pydocs_ws")).ensure()
    model_dir = ensure_default_model(ws, preset="ci", device="cpu", progress=False)
    return ws, model_dir
