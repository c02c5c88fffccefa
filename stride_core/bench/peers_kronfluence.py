"""kronfluence's EK-FAC influence (library defaults) on the digits MLP and the tiny LM.
"""

from __future__ import annotations

import copy
import logging
import tempfile
import time


from .settings import DigitsContext, LMContext
from .peer_inputs import PeerUnavailable, TensorDictDataset, lm_linear_model, lm_query_batch, lm_train_windows, require, sum_windows, timing

logger = logging.getLogger(__name__)


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
    require("kronfluence")
    import torch
    import torch.nn as nn
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments, ScoreArguments

    cpu = not str(ctx.device).startswith("cuda")
    if isinstance(ctx, DigitsContext):
        model = copy.deepcopy(ctx.model).eval()
        task = _kronfluence_task_digits()
        train = TensorDictDataset((torch.as_tensor(ctx.X_train), torch.as_tensor(ctx.y_train)))
        query = TensorDictDataset((torch.as_tensor(ctx.X_query), torch.as_tensor(ctx.y_query)))
        owner = None
    elif isinstance(ctx, LMContext):
        model = lm_linear_model(ctx)
        tracked = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        task = _kronfluence_task_lm(tracked)
        tw, owner = lm_train_windows(ctx)
        train, query = TensorDictDataset(tw), TensorDictDataset(lm_query_batch(ctx))
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
        s = sum_windows(s, owner, ctx.n_train)
    return s, timing(t1 - t0, t2 - t1, strategy="ekfac", n_train_examples=len(train))


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
