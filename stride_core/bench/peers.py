"""Peer attribution methods run through the peers' own libraries (the optional `bench` extra).

Each is `method(ctx) -> (scores, timing)` like the baselines (see baselines.py): scores (Q, N), positive
= including the training document lowers the query's loss; the sign of every method here was
checked against the ground truth on digits-mlp (a flipped sign gives a clearly negative LDS).

- `kronfluence`: EK-FAC influence functions (`kronfluence.Analyzer`, strategy "ekfac", the library's
  default damping heuristic). Score = g_query^T (G + damping)^-1 g_train, query measurement = the
  query's loss (digits: cross-entropy of the true label; tiny-lm: mean continuation NLL, exactly the
  ground-truth output). Fit = covariance + eigendecomposition + eigenvalue correction; query =
  pairwise scores.
- `dattri-trak`: TRAK (`dattri.algorithm.trak.TRAKAttributor`), one checkpoint (the base model, like
  every other method here), all parameters, random projection to 512 dimensions (dattri's default),
  model output = the margin log(p / (1 - p)) of the true label (per token, summed, for the LM) and
  correct-probability weights Q = 1 - p. Fit = `cache` (train projections and the kernel solve);
  query = `attribute`.
- `dattri-logra`: LoGra (`dattri.algorithm.logra.LoGraAttributor`): per-layer Kronecker-factored
  projected gradients of every nn.Linear layer, empirical-Fisher preconditioner. Fit = `cache`;
  query = `attribute`.

On `tiny-lm` the training documents are longer than the 64-token block the models see, so every
method here treats each document as its `[eos] + tokens` cut into block-size windows (as the
`graddot` baseline does): the library scores each window as a training example, and a document's score
is the sum over its windows (the influence of a group of examples in these linear approximations;
packed training also sums the token losses of a document). GPT-2's `Conv1D` projections are not
`nn.Linear`, which kronfluence and LoGra need, so those methods run on an exact copy of the base
model with every `Conv1D` replaced by the equivalent `nn.Linear` (outputs are checked to match).

A method that cannot run on a setting raises `PeerUnavailable` with the reason; the harness records it
in `skipped` instead of a traceback.
"""

from __future__ import annotations

import copy
import logging
import tempfile
import time

import numpy as np

from ..errors import StrideError
from .baselines import _lm_windows
from .settings import DigitsContext, LMContext

logger = logging.getLogger(__name__)

# method name -> the importable package it needs (the harness skips the method when it is missing)
PEER_PACKAGES = {"kronfluence": "kronfluence", "dattri-trak": "dattri", "dattri-logra": "dattri"}

TRAK_PROJ_DIM = 512
LOGRA_PROJ_DIM = 256  # per layer: 16 x 16 (Kronecker-factored); dattri's default is 4096 = 64 x 64
# Damping relative to the mean eigenvalue of each layer's projected Fisher. 0.1 is kronfluence's default
# heuristic; dattri's own default (1e-5) leaves the 256- or 4096-dimensional Fisher of 1000 examples
# nearly singular (digits LDS 0.22 / 0.03 instead of 0.41; see BENCHMARKS.md).
LOGRA_DAMPING = 0.1


class PeerUnavailable(StrideError):
    """A peer method cannot run on this setting (the message says why)."""


def _timing(fit: float, query: float, **extra) -> dict:
    return {"fit_seconds": float(fit), "query_seconds": float(query), **extra}


def _require(package: str):
    import importlib

    try:
        return importlib.import_module(package)
    except ImportError as exc:  # the harness checks first; this covers direct calls
        raise PeerUnavailable(f"the {package!r} package is not importable ({exc}); install the `bench` extra") from exc


# ------------------------------------------------------------------------------------------- data


class _TensorDictDataset:
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


def _sum_windows(scores_qw: np.ndarray, owner: np.ndarray, n_docs: int) -> np.ndarray:
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


def _lm_linear_model(ctx: LMContext):
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


def _token_margin(logits, labels):
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


# ------------------------------------------------------------------------------------ kronfluence


def _kronfluence_task_digits():
    import torch
    import torch.nn.functional as F
    from kronfluence.task import Task

    class DigitsTask(Task):
        def compute_train_loss(self, batch, model, sample=False):
            x, y = batch
            logits = model(x)
            if sample:
                with torch.no_grad():
                    y = torch.multinomial(F.softmax(logits.detach(), dim=-1), 1)[:, 0]
            return F.cross_entropy(logits, y, reduction="sum")

        def compute_measurement(self, batch, model):
            x, y = batch
            return F.cross_entropy(model(x), y, reduction="sum")  # each query's own loss

    return DigitsTask()


def _kronfluence_task_lm(tracked: list[str]):
    import torch
    import torch.nn.functional as F
    from kronfluence.task import Task

    class LMTask(Task):
        def compute_train_loss(self, batch, model, sample=False):
            logits = model(input_ids=batch["input_ids"]).logits
            labels = batch["labels"]
            if sample:
                with torch.no_grad():
                    probs = F.softmax(logits.detach().reshape(-1, logits.size(-1)), dim=-1)
                    drawn = torch.multinomial(probs, 1)[:, 0].view(labels.shape)
                    labels = torch.where(labels == -100, labels, drawn)
            return F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100,
                                   reduction="sum")

        def compute_measurement(self, batch, model):
            logits = model(input_ids=batch["input_ids"]).logits
            labels = batch["labels"]
            nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100,
                                  reduction="none").view(labels.shape)
            n = (labels != -100).sum(1).clamp(min=1)
            return (nll.sum(1) / n).sum()  # each query's mean continuation NLL (the ground-truth output)

        def get_influence_tracked_modules(self):
            return tracked

        def get_attention_mask(self, batch):
            return batch["mask"]

    return LMTask()


def kronfluence_scores(ctx, batch_size: int = 64, seed: int = 0):
    """EK-FAC influence with kronfluence on the base model (see the module docstring). The true
    Fisher samples labels from the model; `seed` fixes them (torch's global RNG is restored after)."""
    _require("kronfluence")
    import torch
    import torch.nn as nn
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments, ScoreArguments

    cpu = not str(ctx.device).startswith("cuda")
    if isinstance(ctx, DigitsContext):
        model = copy.deepcopy(ctx.model).eval()
        task = _kronfluence_task_digits()
        train = _TensorDictDataset((torch.as_tensor(ctx.X_train), torch.as_tensor(ctx.y_train)))
        query = _TensorDictDataset((torch.as_tensor(ctx.X_query), torch.as_tensor(ctx.y_query)))
        owner = None
    elif isinstance(ctx, LMContext):
        model = _lm_linear_model(ctx)
        tracked = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        task = _kronfluence_task_lm(tracked)
        tw, owner = lm_train_windows(ctx)
        train, query = _TensorDictDataset(tw), _TensorDictDataset(lm_query_batch(ctx))
    else:
        raise PeerUnavailable(f"no kronfluence adapter for context type {type(ctx).__name__}")

    model = prepare_model(model, task)
    cuda = [] if cpu else [torch.device(ctx.device).index or 0]
    # kronfluence sets the *root* logger to its log_level when given one (default INFO); pass None and
    # quieten only its own loggers for the duration of the call
    kf_logger = logging.getLogger("kronfluence")
    kf_level = kf_logger.level
    kf_logger.setLevel(logging.WARNING)
    try:
        with torch.random.fork_rng(devices=cuda), tempfile.TemporaryDirectory(prefix="stride-kronfluence-") as tmp:
            torch.manual_seed(seed)
            s, t0, t1, t2 = _kronfluence_run(Analyzer, FactorArguments, ScoreArguments, model, task, cpu, tmp, train,
                                             query, batch_size)
    finally:
        kf_logger.setLevel(kf_level)
    if owner is not None:
        s = _sum_windows(s, owner, ctx.n_train)
    return s, _timing(t1 - t0, t2 - t1, strategy="ekfac", n_train_examples=len(train))


def _kronfluence_run(Analyzer, FactorArguments, ScoreArguments, model, task, cpu, tmp, train, query, batch_size):
    analyzer = Analyzer(analysis_name="stride_bench", model=model, task=task, cpu=cpu, disable_tqdm=True,
                        log_level=None, output_dir=tmp, disable_model_save=True)
    t0 = time.perf_counter()
    analyzer.fit_all_factors(factors_name="ekfac", dataset=train, per_device_batch_size=batch_size,
                             factor_args=FactorArguments(strategy="ekfac"), overwrite_output_dir=True)
    t1 = time.perf_counter()
    analyzer.compute_pairwise_scores(scores_name="pairwise", factors_name="ekfac", query_dataset=query,
                                     train_dataset=train, per_device_query_batch_size=len(query),
                                     per_device_train_batch_size=batch_size, score_args=ScoreArguments(),
                                     overwrite_output_dir=True)
    s = analyzer.load_pairwise_scores(scores_name="pairwise")["all_modules"].double().cpu().numpy()
    return s, t0, t1, time.perf_counter()


# ------------------------------------------------------------------------------------ dattri TRAK


def dattri_trak_scores(ctx, proj_dim: int = TRAK_PROJ_DIM, batch_size: int = 64):
    """TRAK with dattri on the base model (one checkpoint; see the module docstring)."""
    _require("dattri")
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
            return _token_margin(logits, y[None])[0].sum()

        def correct_prob(params, data):
            x, y = data
            logits = functional_call(model, params, (x[None],))
            return _token_margin(logits, y[None])[1].sum().exp()

        train = _TensorDictDataset((torch.as_tensor(ctx.X_train), torch.as_tensor(ctx.y_train)))
        query = _TensorDictDataset((torch.as_tensor(ctx.X_query), torch.as_tensor(ctx.y_query)))
        train_margin = query_margin = margin
        owner = None
    elif isinstance(ctx, LMContext):
        from ..store.models import load_model_and_tokenizer

        model, _ = load_model_and_tokenizer(ctx.model_dir, device=ctx.device)
        model.eval()

        def _margins(params, ids, labels):
            logits = functional_call(model, params, (), {"input_ids": ids[None]}).logits
            return _token_margin(logits, labels[None])

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
        train = _TensorDictDataset((tw["input_ids"], tw["labels"]))
        query = _TensorDictDataset((qb["input_ids"], qb["labels"]))
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
        s = _sum_windows(s, owner, ctx.n_train)
    return s, _timing(t1 - t0, t2 - t1, proj_dim=proj_dim, checkpoints=1, n_train_examples=len(train))


# ----------------------------------------------------------------------------------- dattri LoGra


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
    _require("dattri")
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

        train = _TensorDictDataset({"x": torch.as_tensor(ctx.X_train), "labels": torch.as_tensor(ctx.y_train)})
        query = _TensorDictDataset({"x": torch.as_tensor(ctx.X_query), "labels": torch.as_tensor(ctx.y_query)})
        owner = None
    elif isinstance(ctx, LMContext):
        model = _lm_linear_model(ctx)

        def train_loss(model, batch, device):
            logits = model(input_ids=batch["input_ids"].to(device)).logits
            return F.cross_entropy(logits.reshape(-1, logits.size(-1)), batch["labels"].to(device).reshape(-1),
                                   ignore_index=-100, reduction="sum")

        tw, owner = lm_train_windows(ctx)
        train = _TensorDictDataset({"input_ids": tw["input_ids"], "labels": tw["labels"]})
        # LoGra scores queries through the model's own loss, which shifts `labels` by one: give it the
        # whole `[eos] + prompt + continuation` with labels = the continuation tokens in place
        seqs = [[ctx.eos_id, *p, *c] for p, c in zip(ctx.query_prompt_ids, ctx.query_cont_ids)]
        L = max(len(x) for x in seqs)
        qin = torch.full((len(seqs), L), ctx.eos_id, dtype=torch.long)
        qlab = torch.full((len(seqs), L), -100, dtype=torch.long)
        for i, (x, p) in enumerate(zip(seqs, ctx.query_prompt_ids)):
            qin[i, :len(x)] = torch.tensor(x)
            qlab[i, 1 + len(p):len(x)] = torch.tensor(x[1 + len(p):])
        query = _TensorDictDataset({"input_ids": qin, "labels": qlab})
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
        s = _sum_windows(s, owner, ctx.n_train)
    return s, _timing(t1 - t0, t2 - t1, proj_dim=proj_dim, damping=damping, n_train_examples=len(train))


PEER_METHODS = {
    "kronfluence": kronfluence_scores,
    "dattri-trak": dattri_trak_scores,
    "dattri-logra": dattri_logra_scores,
}


def register_all(registry: dict) -> None:
    """Add the peer adapters to a METHODS registry (the libraries are imported only when run)."""
    registry.update(PEER_METHODS)
