"""Safe loading of local Hugging Face causal LMs: safetensors only, never remote code, never a hub."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ..errors import ModelError

logger = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def check_model_dir(path: str | Path) -> dict:
    """Validate a model directory without loading weights; returns its config dict."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelError(f"model directory {p} does not exist (give a local Hugging Face model folder; nothing is downloaded)")
    if not p.is_dir():
        raise ModelError(f"{p} is a file: give the folder that holds config.json and *.safetensors")
    cfg_path = p / "config.json"
    if not cfg_path.exists():
        raise ModelError(f"{p} has no config.json: not a Hugging Face model folder")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{cfg_path} is not valid JSON ({exc})") from exc
    if cfg.get("auto_map") or any(p.glob("*.py")):
        raise ModelError(f"{p} needs custom code (auto_map / .py files); STRIDE never runs trust_remote_code models")
    weights = list(p.glob("*.safetensors"))
    if not weights:
        pickled = [f.name for f in p.iterdir() if f.suffix in PICKLE_SUFFIXES]
        if pickled:
            raise ModelError(
                f"{p} has only pickled weights ({', '.join(sorted(pickled)[:3])}); STRIDE loads safetensors only: "
                "convert with `model.save_pretrained(dir, safe_serialization=True)` in a trusted environment"
            )
        raise ModelError(f"{p} has no *.safetensors weights")
    return cfg


def ignored_model_files(path: str | Path) -> list[str]:
    """What a (checked) model folder holds that loading never uses, one line each: pickled files beside the
    safetensors (loading passes use_safetensors=True, so they are never unpickled) and custom-code
    references of the tokenizer (loading passes trust_remote_code=False, so that code is never run).
    Custom code in config.json or .py files is refused by check_model_dir instead."""
    p = Path(path).expanduser()
    out = [f"{f.name} (pickled file: never loaded, only *.safetensors weights are read)"
           for f in sorted(p.iterdir()) if f.is_file() and f.suffix in PICKLE_SUFFIXES]
    for name in ("tokenizer_config.json", "processor_config.json", "preprocessor_config.json"):
        f = p / name
        if not f.exists():
            continue
        try:
            obj = json.loads(f.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ModelError(f"{f} is not valid JSON ({exc})") from exc
        if isinstance(obj, dict) and obj.get("auto_map"):
            out.append(f"auto_map in {name} (custom code: never run, loading uses trust_remote_code=False and the built-in classes)")
    return out


def check_vocab_fits(model, tok, where) -> None:
    """Every id the tokenizer can produce must have a row in the model's input embedding and output head:
    a larger tokenizer makes the forward pass fail (or read another token's row) on its extra ids."""
    vocab = tok.get_vocab()
    n_ids = max(len(tok), (max(vocab.values()) + 1) if vocab else 0)
    emb = model.get_input_embeddings()
    head = model.get_output_embeddings()
    parts = [("input embedding", None if emb is None else emb.weight.shape[0]),
             ("output head", None if head is None else head.weight.shape[0])]
    for what, rows in parts:
        if rows is not None and n_ids > rows:
            raise ModelError(f"{where}: the tokenizer has {n_ids} token ids but the model's {what} has {rows} rows; "
                             "the tokenizer does not belong to these weights (put the tokenizer files the model was "
                             "trained with in the folder)")


def load_model_and_tokenizer(path: str | Path, device: str = "cpu", dtype=None):
    """AutoModelForCausalLM + AutoTokenizer from a local folder, eval mode, on `device`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_model_dir(path)
    p = str(Path(path).expanduser())
    try:
        tok = AutoTokenizer.from_pretrained(p, local_files_only=True, trust_remote_code=False)
    except Exception as exc:
        raise ModelError(f"cannot load the tokenizer from {p}: {exc}") from exc
    try:
        model = AutoModelForCausalLM.from_pretrained(
            p, local_files_only=True, trust_remote_code=False, use_safetensors=True,
            dtype=dtype or torch.float32,
        )
    except Exception as exc:
        raise ModelError(f"cannot load a causal LM from {p}: {exc}") from exc
    if not tok("The quick brown fox.", add_special_tokens=False)["input_ids"]:
        # transformers builds an empty tokenizer from a folder without tokenizer files instead of failing
        raise ModelError(f"{p}: the tokenizer encodes text to nothing ({len(tok)} token ids); the folder needs the "
                         "model's tokenizer files (tokenizer.json, or vocab.json + merges.txt, ...)")
    check_vocab_fits(model, tok, p)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model.to(device).eval()
    return model, tok


def resolve_device(device: str = "auto") -> str:
    import torch

    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise ModelError(f"unknown device {device!r}: use auto, cpu or cuda")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError("--device cuda was requested but no CUDA device is available; use --device cpu or auto")
    return device


# ------------------------------------------------------------------------------------------ pairing

TRAINING_FILE = "stride_training.json"  # written by `stride model train-tiny` (stride_core.store.tiny_model)


def training_record(model_dir: str | Path) -> dict | None:
    """What a model folder records about its training data ({"corpus", "n_corpus_docs", "n_used_docs", ...}),
    or None for a folder that records nothing (any Hugging Face model not trained by `stride model train-tiny`)."""
    try:
        rec = json.loads((Path(model_dir).expanduser() / TRAINING_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) and rec.get("corpus") else None


def pairing_warnings(record: dict | None, corpus: str, n_docs: int | None) -> list[str]:
    """Why rankings of a model over `corpus` (holding `n_docs` documents) may mislead, from the model's
    training record: it was trained on another corpus, on part of this one, or on an older version of it.
    STRIDE traces what the model learned from the indexed documents; documents it never saw score ~0."""
    if not record:
        return []
    trained_on = str(record.get("corpus"))
    used, total = record.get("n_used_docs"), record.get("n_corpus_docs")
    retrain = f"stride model train-tiny --corpus {corpus} --out MODEL_DIR"
    if trained_on != corpus:
        return [f"the model was trained on corpus {trained_on!r}, not on {corpus!r} that is being indexed: rankings "
                f"can only reflect what it learned from {trained_on!r}. Index {trained_on!r}, or train a model on "
                f"this corpus with `{retrain}`"]
    out = []
    if used is not None and total is not None and int(used) < int(total):
        out.append(f"the model was trained on only the first {int(used):,} of the {int(total):,} documents of "
                   f"corpus {corpus!r}: the other {int(total) - int(used):,} were never seen by it, so they cannot "
                   f"rank as training influence. Retrain on all of them with `{retrain} --max-docs 0` (or `--preset default`)")
    if total is not None and n_docs is not None and int(total) != int(n_docs):
        out.append(f"corpus {corpus!r} had {int(total):,} documents when the model was trained and has {int(n_docs):,} "
                   f"now (re-imported or changed since): documents added since are unseen by the model")
    return out
