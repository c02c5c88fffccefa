"""`stride demo`: the embedded default end to end (corpus, model, and a STRIDE run when available)."""

from __future__ import annotations

import logging
from pathlib import Path

logger = logging.getLogger(__name__)


def default_model_dir(ws, preset: str = "default") -> Path:
    return ws.models_dir / ("pydocs-tiny" if preset == "default" else f"pydocs-tiny-{preset}")


def ensure_default_model(ws, preset: str = "default", device: str = "cpu", progress: bool = True) -> Path:
    from .models import check_model_dir
    from .pydocs import build_default_corpus
    from .tiny_model import TinyModelArgs, train_tiny

    build_default_corpus(ws)
    out = default_model_dir(ws, preset)
    try:
        check_model_dir(out)
        if (out / "stride_training.json").exists():
            return out
    except Exception:
        pass
    logger.info("training the built-in tiny model (preset %s) into %s", preset, out)
    train_tiny(ws, "pydocs", out, TinyModelArgs.preset(preset), progress=progress, device=device)
    return out


def run_demo(ws, preset: str = "default", device: str = "auto", progress: bool = True) -> dict:
    from .corpus import corpus_info
    from .models import resolve_device

    dev = resolve_device(device)
    ws.ensure()
    model_dir = ensure_default_model(ws, preset, dev, progress)
    info = corpus_info(ws, "pydocs")
    print(f"corpus 'pydocs': {info['n_docs']} documents in {ws.db_path}")
    print(f"model: {model_dir}")
    return {"model_dir": str(model_dir), "corpus": "pydocs"}
