"""What every peer adapter shares: the tiny-lm training windows and query batch as tensors, window scores
summed per document, GPT-2's Conv1D as nn.Linear (the libraries track Linear layers), the LM margin,
timings, and `PeerUnavailable` for a library that is missing or cannot run a setting.
"""

from __future__ import annotations

import logging

import numpy as np

from ..errors import StrideError
from .baselines import _lm_windows
from .settings import LMContext

logger = logging.getLogger(__name__)


class PeerUnavailable(StrideError):
    """A peer method cannot run on this setting (the message says why)."""


def timing(fit: float, query: float, **extra) -> dict:
    return {"fit_seconds": float(fit), "query_seconds": float(query), **extra}


def require(package: str):
    import importlib

    try:
        return importlib.import_module(package)
    except ImportError as exc:  # the harness checks first; this covers direct calls
        raise PeerUnavailable(f"the {package!r} package is not importable ({exc}); install the `bench` extra") from exc


class TensorDictDataset:
    """A map-style dataset of dicts (or tuples) of equally long tensors; batches collate by key."""

    def __init__(self, tensors: dict | tuple):
        self.tensors = tensors
        first = next(iter(tensors.values())) if isinstance(tensors, dict) else tensors[0]
        self.n = int(first.shape[0])

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if isinstance(self.tensors, dict):
            return {k: v[i] for k, v in self.tensors.items()}
        return tuple(v[i] for v in self.tensors)


def lm_train_windows(ctx: LMContext):
    """Training windows of every document: input_ids (W, B), labels (W, B) (-100 = not scored),
    mask (W, B) (1 = a real input token) and owner (W,) (the document index of each window)."""
    import torch

    B = ctx.block_size
    wins, owner = [], []
    for d, ids in enumerate(ctx.train_token_ids):
        if not ids:
            continue
        for w in _lm_windows(ids, ctx.eos_id, B):
            wins.append(w)
            owner.append(d)
    inp = torch.full((len(wins), B), ctx.eos_id, dtype=torch.long)
    lab = torch.full((len(wins), B), -100, dtype=torch.long)
    mask = torch.zeros((len(wins), B), dtype=torch.long)
    for i, w in enumerate(wins):
        n = len(w) - 1
        inp[i, :n] = torch.tensor(w[:-1])
        lab[i, :n] = torch.tensor(w[1:])
        mask[i, :n] = 1
    return {"input_ids": inp, "labels": lab, "mask": mask}, np.asarray(owner)


def lm_query_batch(ctx: LMContext):
    """Queries as the ground truth scores them: input `[eos] + prompt + continuation[:-1]`, labels
    only on the continuation (input-aligned: labels[t] is the target of position t)."""
    import torch

    seqs = [[ctx.eos_id, *p, *c] for p, c in zip(ctx.query_prompt_ids, ctx.query_cont_ids)]
    L = max(len(s) for s in seqs) - 1
    inp = torch.full((len(seqs), L), ctx.eos_id, dtype=torch.long)
    lab = torch.full((len(seqs), L), -100, dtype=torch.long)
    mask = torch.zeros((len(seqs), L), dtype=torch.long)
    for i, (s, p) in enumerate(zip(seqs, ctx.query_prompt_ids)):
        n = len(s) - 1
        inp[i, :n] = torch.tensor(s[:-1])
        lab[i, len(p):n] = torch.tensor(s[1 + len(p):])
        mask[i, :n] = 1
    return {"input_ids": inp, "labels": lab, "mask": mask}


def sum_windows(scores_qw: np.ndarray, owner: np.ndarray, n_docs: int) -> np.ndarray:
    """(Q, W) window scores -> (Q, N) document scores (sum over each document's windows)."""
    out = np.zeros((scores_qw.shape[0], n_docs))
    np.add.at(out.T, owner, scores_qw.T)
    return out


def conv1d_to_linear(model):
    """Replace every transformers `Conv1D` (y = x W + b, W: in x out) in `model` by the equivalent
    `nn.Linear` (weight = W^T), in place; returns the number replaced."""
    import torch.nn as nn
    from transformers.pytorch_utils import Conv1D

    n = 0
    for name, mod in list(model.named_modules()):
        for child_name, child in list(mod.named_children()):
            if isinstance(child, Conv1D):
                w = child.weight  # (in, out)
                lin = nn.Linear(w.shape[0], w.shape[1], bias=child.bias is not None)
                lin.weight.data.copy_(w.data.t())
                if child.bias is not None:
                    lin.bias.data.copy_(child.bias.data)
                lin.to(w.device, w.dtype)
                setattr(mod, child_name, lin)
                n += 1
    return n


def lm_linear_model(ctx: LMContext):
    """A fresh copy of the base LM with Conv1D -> nn.Linear (checked to give the same logits)."""
    import torch

    from ..store.models import load_model_and_tokenizer

    ref = ctx.load_model()
    model, _ = load_model_and_tokenizer(ctx.model_dir, device=ctx.device)
    n = conv1d_to_linear(model)
    model.eval()
    x = torch.tensor([[ctx.eos_id, *ctx.train_token_ids[0][:ctx.block_size - 1]]], device=ctx.device)
    with torch.no_grad():
        diff = (model(input_ids=x).logits - ref(input_ids=x).logits).abs().max().item()
    if diff > 1e-4:
        raise StrideError(f"Conv1D -> Linear conversion changed the logits (max diff {diff:.2e})")
    logger.debug("converted %d Conv1D modules to nn.Linear (max logit diff %.1e)", n, diff)
    return model


def token_margin(logits, labels):
    """Per-token margin log p_y - log(1 - p_y) = logit_y - logsumexp(other logits), and log p_y;
    labels == -100 positions give 0."""
    import torch

    valid = labels != -100
    y = labels.clamp(min=0)
    true = logits.gather(-1, y[..., None])[..., 0]
    other = logits.scatter(-1, y[..., None], float("-inf")).logsumexp(-1)
    logp = true - logits.logsumexp(-1)
    z = torch.zeros_like(true)
    return torch.where(valid, true - other, z), torch.where(valid, logp, z), valid
