"""dattri's TRAK (one checkpoint) and LoGra on the digits MLP and the tiny LM.
"""

from __future__ import annotations

import copy
import logging
import tempfile
import time


from .settings import DigitsContext, LMContext
from .peer_inputs import PeerUnavailable, TensorDictDataset, lm_linear_model, lm_query_batch, lm_train_windows, require, sum_windows, timing, token_margin

logger = logging.getLogger(__name__)


TRAK_PROJ_DIM = 512


LOGRA_PROJ_DIM = 256  # per layer: 16 x 16 (Kronecker-factored); dattri's default is 4096 = 64 x 64


# Damping relative to the mean eigenvalue of each layer's projected Fisher. 0.1 is kronfluence's default
# heuristic; dattri's own default (1e-5) leaves the 256- or 4096-dimensional Fisher of 1000 examples
# nearly singular (digits LDS 0.22 / 0.03 instead of 0.41; see BENCHMARKS.md).
LOGRA_DAMPING = 0.1


def dattri_trak_scores(ctx, proj_dim: int = TRAK_PROJ_DIM, batch_size: int = 64):
    """TRAK with dattri on the base model (one checkpoint; see the module docstring)."""
    require("dattri")
    import torch
    from dattri.algorithm.trak import TRAKAttributor
    from dattri.task import AttributionTask
    from torch.func import functional_call
    from torch.utils.data import DataLoader

    dev = str(ctx.device)
    if isinstance(ctx, DigitsContext):
        model = copy.deepcopy(ctx.model).eval()

        def margin(params, data):
            x, y = data
            logits = functional_call(model, params, (x[None],))
            return token_margin(logits, y[None])[0].sum()

        def correct_prob(params, data):
            x, y = data
            logits = functional_call(model, params, (x[None],))
            return token_margin(logits, y[None])[1].sum().exp()

        train = TensorDictDataset((torch.as_tensor(ctx.X_train), torch.as_tensor(ctx.y_train)))
        query = TensorDictDataset((torch.as_tensor(ctx.X_query), torch.as_tensor(ctx.y_query)))
        train_margin = query_margin = margin
        owner = None
    elif isinstance(ctx, LMContext):
        from ..store.models import load_model_and_tokenizer

        model, _ = load_model_and_tokenizer(ctx.model_dir, device=ctx.device)
        model.eval()

        def _margins(params, ids, labels):
            logits = functional_call(model, params, (), {"input_ids": ids[None]}).logits
            return token_margin(logits, labels[None])

        def train_margin(params, data):
            ids, labels = data
            return _margins(params, ids, labels)[0].sum()  # summed over the window's tokens

        def query_margin(params, data):
            ids, labels = data
            m, _, valid = _margins(params, ids, labels)
            return m.sum() / valid.sum().clamp(min=1)  # mean over the continuation, like the output

        def correct_prob(params, data):
            ids, labels = data
            _, logp, valid = _margins(params, ids, labels)
            return (logp.sum() / valid.sum().clamp(min=1)).exp()  # geometric-mean token probability

        tw, owner = lm_train_windows(ctx)
        qb = lm_query_batch(ctx)
        train = TensorDictDataset((tw["input_ids"], tw["labels"]))
        query = TensorDictDataset((qb["input_ids"], qb["labels"]))
    else:
        raise PeerUnavailable(f"no dattri adapter for context type {type(ctx).__name__}")

    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    task = AttributionTask(loss_func=train_margin, model=model, checkpoints=state, target_func=query_margin)
    proj = {"proj_dim": proj_dim, "proj_max_batch_size": 32, "proj_seed": 0, "device": dev}
    attributor = TRAKAttributor(task=task, correct_probability_func=correct_prob, projector_kwargs=proj, device=dev)
    train_loader = DataLoader(train, batch_size=batch_size, shuffle=False)
    query_loader = DataLoader(query, batch_size=batch_size, shuffle=False)
    t0 = time.perf_counter()
    attributor.cache(train_loader)
    t1 = time.perf_counter()
    s = attributor.attribute(query_loader).T.double().cpu().numpy()  # (n_train_examples, Q) -> (Q, .)
    t2 = time.perf_counter()
    if owner is not None:
        s = sum_windows(s, owner, ctx.n_train)
    return s, timing(t1 - t0, t2 - t1, proj_dim=proj_dim, checkpoints=1, n_train_examples=len(train))


def _ClassifierWithLoss(net):
    """`net` behind forward(x, labels, reduction="mean") -> an object with `.logits` and `.loss`."""
    import torch.nn as nn
    import torch.nn.functional as F

    class ClassifierWithLoss(nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x, labels=None, reduction="mean"):
            from types import SimpleNamespace

            logits = self.net(x)
            loss = None if labels is None else F.cross_entropy(logits, labels, reduction=reduction)
            return SimpleNamespace(logits=logits, loss=loss)

    return ClassifierWithLoss(net)


def dattri_logra_scores(ctx, proj_dim: int = LOGRA_PROJ_DIM, batch_size: int = 64, damping: float | None = LOGRA_DAMPING):
    """LoGra with dattri on the base model (see the module docstring)."""
    require("dattri")
    import torch
    import torch.nn.functional as F
    from dattri.algorithm.logra import LoGraAttributor
    from dattri.task import AttributionTask
    from torch.utils.data import DataLoader

    dev = str(ctx.device)
    if isinstance(ctx, DigitsContext):
        # dict batches: dattri 0.3's compressor setup indexes tuple batches twice (batch[0][0], a
        # single image), so the MLP is wrapped to take {"x", "labels"} and return its loss
        model = _ClassifierWithLoss(copy.deepcopy(ctx.model)).eval()

        def train_loss(model, batch, device):
            return model(x=batch["x"].to(device), labels=batch["labels"].to(device), reduction="sum").loss

        train = TensorDictDataset({"x": torch.as_tensor(ctx.X_train), "labels": torch.as_tensor(ctx.y_train)})
        query = TensorDictDataset({"x": torch.as_tensor(ctx.X_query), "labels": torch.as_tensor(ctx.y_query)})
        owner = None
    elif isinstance(ctx, LMContext):
        model = lm_linear_model(ctx)

        def train_loss(model, batch, device):
            logits = model(input_ids=batch["input_ids"].to(device)).logits
            return F.cross_entropy(logits.reshape(-1, logits.size(-1)), batch["labels"].to(device).reshape(-1),
                                   ignore_index=-100, reduction="sum")

        tw, owner = lm_train_windows(ctx)
        train = TensorDictDataset({"input_ids": tw["input_ids"], "labels": tw["labels"]})
        # LoGra scores queries through the model's own loss, which shifts `labels` by one: give it the
        # whole `[eos] + prompt + continuation` with labels = the continuation tokens in place
        seqs = [[ctx.eos_id, *p, *c] for p, c in zip(ctx.query_prompt_ids, ctx.query_cont_ids)]
        L = max(len(x) for x in seqs)
        qin = torch.full((len(seqs), L), ctx.eos_id, dtype=torch.long)
        qlab = torch.full((len(seqs), L), -100, dtype=torch.long)
        for i, (x, p) in enumerate(zip(seqs, ctx.query_prompt_ids)):
            qin[i, :len(x)] = torch.tensor(x)
            qlab[i, 1 + len(p):len(x)] = torch.tensor(x[1 + len(p):])
        query = TensorDictDataset({"input_ids": qin, "labels": qlab})
    else:
        raise PeerUnavailable(f"no dattri adapter for context type {type(ctx).__name__}")

    task = AttributionTask(loss_func=train_loss, model=model,
                           checkpoints={k: v.detach().clone() for k, v in model.state_dict().items()})
    with tempfile.TemporaryDirectory(prefix="stride-logra-") as tmp:
        attributor = LoGraAttributor(task=task, device=dev, proj_dim=proj_dim, damping=damping, offload="cpu",
                                     cache_dir=tmp)
        train_loader = DataLoader(train, batch_size=batch_size, shuffle=False)
        # batch size 1: the model's loss is a mean over the batch's tokens, so one query per batch
        # makes each query's gradient that of its own mean continuation NLL
        query_loader = DataLoader(query, batch_size=1, shuffle=False)
        t0 = time.perf_counter()
        attributor.cache(train_loader)
        t1 = time.perf_counter()
        s = attributor.attribute(train_loader, query_loader).T.double().cpu().numpy()
        t2 = time.perf_counter()
    if owner is not None:
        s = sum_windows(s, owner, ctx.n_train)
    return s, timing(t1 - t0, t2 - t1, proj_dim=proj_dim, damping=damping, n_train_examples=len(train))
