"""`stride demo`: the embedded default end to end (corpus, model, and a STRIDE run when available)."""

from __future__ import annotations

import logging
from pathlib import Path

from ..errors import StrideError

logger = logging.getLogger(__name__)


def default_model_dir(ws, preset: str = "default") -> Path:
    return ws.models_dir / ("pydocs-tiny" if preset == "default" else f"pydocs-tiny-{preset}")


def ensure_default_model(ws, preset: str = "default", device: str = "cpu", progress: bool = True,
                         on_progress=None) -> Path:
    """The built-in model folder, trained first when missing (the default corpus built first when missing).
    `on_progress(fraction, message=None, **metrics)` follows the training (tiny_model.train_tiny)."""
    from ..store.models import check_model_dir
    from ..store.pydocs import build_default_corpus
    from ..store.tiny_model import TinyModelArgs, train_tiny

    build_default_corpus(ws)
    out = default_model_dir(ws, preset)
    try:
        check_model_dir(out)
        if (out / "stride_training.json").exists():
            return out
    except Exception:
        pass
    logger.info("training the built-in tiny model (preset %s) into %s", preset, out)
    train_tiny(ws, "pydocs", out, TinyModelArgs.preset(preset), progress=progress, device=device, on_progress=on_progress)
    return out


def sample_prompts_path(kind: str = "jsonl") -> Path:
    """The checkout's data/sample_prompts.{jsonl,txt}: found beside the package, i.e. with the README's
    editable install (`pip install -e .`); a clear error otherwise."""
    path = Path(__file__).resolve().parents[2] / "data" / f"sample_prompts.{kind}"  # <checkout>/stride_core/runs/demo.py
    if not path.is_file():
        raise StrideError(f"sample prompts not found at {path}: install stride from its checkout with `pip install -e .` "
                          "(as `make app` does), or pass your own prompts file")
    return path


def run_demo(ws, preset: str = "default", device: str = "auto", progress: bool = True, index_and_attribute: bool = True) -> dict:
    from ..store.corpus import corpus_info
    from ..store.models import resolve_device

    dev = resolve_device(device)
    ws.ensure()
    model_dir = ensure_default_model(ws, preset, dev, progress)
    info = corpus_info(ws, "pydocs")
    print(f"corpus 'pydocs': {info['n_docs']} documents in {ws.db_path}")
    print(f"model: {model_dir}")
    if not index_and_attribute:
        return {"model_dir": str(model_dir), "corpus": "pydocs"}
    from ..method.arguments import AttributeArgs
    from .attribution import run_all, summary_lines
    from .config import make_config

    run = "demo" if preset == "default" else f"demo-{preset}"
    config = make_config("pydocs", str(model_dir), preset)
    df = run_all(ws, run, config, sample_prompts_path(), AttributeArgs(top_k=20, device=dev), device=dev, progress=progress)
    print("\n".join(summary_lines(df, 5)))
    print(f"\nrun {run!r}: {ws.run_dir(run)} (browse it with `stride app`)")
    return {"model_dir": str(model_dir), "corpus": "pydocs", "run": run}
