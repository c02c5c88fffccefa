"""Linear datamodeling score (LDS).

For query q and ground-truth model m trained on subset S_m, an attribution `scores[q]` (N,) predicts
`pred[m, q] = sum_{i in S_m} scores[q, i]`. Positive score = including document i *lowers* the
query's loss (helps), so the prediction is correlated with `-output` when higher output is worse.
LDS(q) = Spearman correlation over models between prediction and (signed) actual output.

A query whose predictions or outputs are constant over the models scores 0: it is never skipped
and never NaN (skipping would let very sparse attributions look far better than they are).
"""

from __future__ import annotations

import numpy as np

from ..errors import StrideError


def _rank_columns(a: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(a, axis=0)  # average ranks for ties


def _constant_columns(a: np.ndarray) -> np.ndarray:
    spread = a.max(axis=0) - a.min(axis=0)
    scale = np.maximum(np.abs(a).max(axis=0), 1.0)
    return spread <= 1e-12 * scale


def spearman_columns(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per-column Spearman correlation of two (M, Q) arrays; constant columns give 0."""
    pred, target = np.asarray(pred, dtype=np.float64), np.asarray(target, dtype=np.float64)
    if pred.shape != target.shape or pred.ndim != 2:
        raise StrideError(f"pred and target must both be (M, Q); got {pred.shape} and {target.shape}")
    const = _constant_columns(pred) | _constant_columns(target)
    rp, rt = _rank_columns(pred), _rank_columns(target)
    rp -= rp.mean(axis=0)
    rt -= rt.mean(axis=0)
    den = np.sqrt((rp ** 2).sum(axis=0) * (rt ** 2).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = (rp * rt).sum(axis=0) / den
    rho[const | ~np.isfinite(rho)] = 0.0
    return rho


def _check(scores, masks, outputs):
    scores, masks, outputs = np.asarray(scores), np.asarray(masks), np.asarray(outputs)
    if scores.ndim != 2 or masks.ndim != 2 or outputs.ndim != 2:
        raise StrideError("scores must be (Q, N), masks (M, N) and outputs (M, Q)")
    Q, N = scores.shape
    if masks.shape[1] != N:
        raise StrideError(f"scores cover {N} training documents but masks cover {masks.shape[1]}")
    if outputs.shape != (masks.shape[0], Q):
        raise StrideError(f"outputs must be (M, Q) = {(masks.shape[0], Q)}; got {outputs.shape}")
    if not np.all(np.isfinite(scores)):
        raise StrideError("scores contain NaN or inf")
    return scores.astype(np.float64), masks.astype(np.float64), outputs.astype(np.float64)


def predictions(scores: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """(M, Q) predicted effect of each ground-truth subset: masks @ scores.T."""
    return np.asarray(masks, dtype=np.float64) @ np.asarray(scores, dtype=np.float64).T


def lds(scores: np.ndarray, masks: np.ndarray, outputs: np.ndarray, higher_output_is_worse: bool = True) -> np.ndarray:
    """Per-query LDS (Q,). scores (Q, N), masks (M, N) bool, outputs (M, Q)."""
    scores, masks, outputs = _check(scores, masks, outputs)
    target = -outputs if higher_output_is_worse else outputs
    return spearman_columns(predictions(scores, masks), target)


def query_specific_lds(scores: np.ndarray, masks: np.ndarray, outputs: np.ndarray,
                       higher_output_is_worse: bool = True) -> np.ndarray:
    """LDS against outputs centred across queries for each model (outputs - outputs.mean(1)): removes
    subset-level effects shared by all queries (e.g. "this subset has more tokens"), so only
    query-specific attribution scores. Needs Q >= 2."""
    outputs = np.asarray(outputs, dtype=np.float64)
    if outputs.ndim != 2 or outputs.shape[1] < 2:
        raise StrideError("query-specific LDS needs outputs (M, Q) with Q >= 2")
    return lds(scores, masks, outputs - outputs.mean(axis=1, keepdims=True), higher_output_is_worse)


def lds_summary(per_query: np.ndarray, n_boot: int = 2000, seed: int = 0, ci: float = 0.95) -> dict:
    """Mean and bootstrap CI over queries (percentile; seeded): {mean, ci_low, ci_high, std, n}."""
    x = np.asarray(per_query, dtype=np.float64)
    if x.ndim != 1 or len(x) == 0:
        raise StrideError("lds_summary needs a non-empty 1-d array of per-query scores")
    x = np.where(np.isfinite(x), x, 0.0)
    rng = np.random.default_rng(seed)
    boots = x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(axis=1)
    a = (1 - ci) / 2
    return {"mean": float(x.mean()), "ci_low": float(np.quantile(boots, a)), "ci_high": float(np.quantile(boots, 1 - a)),
            "std": float(x.std(ddof=1)) if len(x) > 1 else 0.0, "n": int(len(x))}
