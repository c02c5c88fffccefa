"""Sparse recovery: w(x) = argmin_w 1/2 ||y_x - b - M w||^2 + lam ||w||_1 for many queries at once.

`LassoRecovery` follows the scikit-learn estimator contract (`fit(M, y)` sets `influence_`,
`intercept_`, `alpha_`). The solver is FISTA in torch, batched over queries (CPU or GPU), with M
sparse; the intercept is handled by implicit column centring (M_c w = M w - mean_k(M w)), so M
never becomes dense. When M is given as a SubsetDesign, M w and M^T r are computed from the design's
member lists (each document sits in exactly S subsets): a scatter-add and a gather of N*S entries per
query, much faster than sparse-matrix kernels (about 200x on CPU at N = 100k).

lam rule (alpha="auto"): lam = f * lam_max(x) with lam_max(x) = max_i |M_c^T y_x| (the smallest lam
giving w = 0). f is chosen from a log grid by validation: a seeded 15% of subsets is held out, every
f is fitted on the rest, and each held-out subset's squared error is summed over all queries. The
default `rule="1se"` keeps the sparsest f whose mean held-out error is within one standard error of
the lowest (the one-standard-error rule: the prediction-optimal lam over-selects documents);
`rule="min"` keeps the f with the lowest error. The final fit uses all subsets. Pass alpha=<float>
to fix lam, or alpha_ratio=<float> to fix f. Measured with this grid (BENCHMARKS.md): on tiny-lm
"min" picks f=0.2 (LDS 0.259, ~450 non-zero documents per query) and "1se" f=0.3-0.5 (LDS 0.284,
~170); on digits both give 0.434.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import StrideError

logger = logging.getLogger(__name__)


class _LinearOperator:
    """Shared by the implicit operators below: the Lipschitz constant of the Lasso's gradient, by power
    iteration, computed once per operator (a fit's validation path and final solve reuse it)."""

    def lipschitz(self, iters: int = 50) -> float:
        if getattr(self, "_L", None) is None:
            self._L = _power_lipschitz(self, iters)
        return self._L


class _DesignOperator(_LinearOperator):
    """Centred M (K, N) of a subset design, applied through its member lists `members` (N, S): M w adds
    each document's weight to its S subsets (scatter-add), M^T r sums the entries of its S subsets
    (gather). `rows` keeps only those subsets (in that order); the others go to a dummy slot K that is
    dropped (M w) or reads zero (M^T r). Queries are batched: w (Q, N), y (Q, K)."""

    def __init__(self, members: torch.Tensor, K: int, rows: torch.Tensor | None = None):
        if rows is not None:
            remap = torch.full((K,), len(rows), dtype=torch.long, device=members.device)
            remap[rows] = torch.arange(len(rows), device=members.device)
            members, K = remap[members], len(rows)
        self.members = members  # (N, S), rows already remapped
        self.cols = [members[:, s].contiguous() for s in range(members.shape[1])]  # S x (N,)
        self.K, self.N = K, members.shape[0]
        self.device = members.device

    def restrict(self, docs: torch.Tensor) -> "_DesignOperator":
        """The same operator on the columns `docs` only (a working set): M[:, docs]."""
        return _DesignOperator(self.members[docs], self.K)

    def apply(self, w):  # uncentred M w: (Q, N) -> (Q, K)
        out = torch.zeros(w.shape[0], self.K + 1, device=w.device, dtype=w.dtype)
        for c in self.cols:
            out.index_add_(1, c, w)
        return out[:, :self.K]

    def mv(self, w):  # (Q, N) -> (Q, K), centred
        y = self.apply(w)
        return y - y.mean(dim=1, keepdim=True)

    def rmv(self, r):  # (Q, K) -> (Q, N), r assumed centred
        r = r - r.mean(dim=1, keepdim=True)
        r = torch.cat([r, torch.zeros(r.shape[0], 1, device=r.device, dtype=r.dtype)], dim=1)
        out = r[:, self.cols[0]]
        for c in self.cols[1:]:
            out += r[:, c]
        return out



def _power_lipschitz(op, iters: int) -> float:
    g = torch.Generator(device="cpu").manual_seed(0)
    v = torch.randn(1, op.N, generator=g).to(op.device)
    for _ in range(iters):
        v = op.rmv(op.mv(v))
        v = v / (v.norm() + 1e-12)
    return float((op.mv(v).norm() ** 2) / (v.norm() ** 2 + 1e-12)) * 1.01 + 1e-6


def _operator(M, device, rows: torch.Tensor | None = None):
    """The fastest implicit operator for M: member lists for a SubsetDesign, else dense / sparse."""
    if hasattr(M, "members") and hasattr(M, "K"):  # SubsetDesign
        return _DesignOperator(torch.from_numpy(np.asarray(M.members, dtype=np.int64)).to(device), int(M.K), rows)
    return _Operator(_as_sparse(M, device), rows)


def _as_sparse(M, device) -> torch.Tensor:
    if isinstance(M, torch.Tensor):
        return (M if M.is_sparse else M.to_sparse()).coalesce().to(device).float()
    if hasattr(M, "sparse"):  # SubsetDesign
        return M.sparse(device)
    return torch.from_numpy(np.asarray(M, dtype=np.float32)).to_sparse().coalesce().to(device)


class _Operator(_LinearOperator):
    """Centred M (K, N) applied implicitly. Queries are batched: w (Q, N), y (Q, K)."""

    DENSE_LIMIT = 2 ** 25  # K*N below which a dense M is faster than sparse kernels

    def __init__(self, M: torch.Tensor, rows: torch.Tensor | None = None):
        if rows is not None:
            M = torch.index_select(M, 0, rows).coalesce()
        self.M = M
        self.K, self.N = M.shape
        self.dense = M.to_dense() if self.K * self.N <= self.DENSE_LIMIT else None
        self.Mt = None if self.dense is not None else M.t().coalesce()
        self.device = M.device

    def apply(self, w):  # uncentred M w: (Q, N) -> (Q, K)
        return torch.sparse.mm(self.M, w.t()).t()

    def mv(self, w):  # (Q, N) -> (Q, K)
        y = w @ self.dense.T if self.dense is not None else torch.sparse.mm(self.M, w.t()).t()
        return y - y.mean(dim=1, keepdim=True)

    def rmv(self, r):  # (Q, K) -> (Q, N), r assumed centred
        r = r - r.mean(dim=1, keepdim=True)
        return r @ self.dense if self.dense is not None else torch.sparse.mm(self.Mt, r.t()).t()



def fista(op: _Operator, y: torch.Tensor, lam: torch.Tensor, max_iter: int = 500, tol: float = 1e-6,
          positive: bool = False, L: float | None = None, w0: torch.Tensor | None = None) -> torch.Tensor:
    """Batched FISTA. y (Q, K) centred; lam (Q,) -> w (Q, N).

    Convergence is judged per query (every 10 iterations: the largest change of w_x at most tol times
    the largest |w_x|) and a converged query is frozen and leaves the batch, so a query's solution does
    not depend on which other queries share the call (sharding queries across processes or batches
    gives the same answers)."""
    L = L or op.lipschitz()
    Q = y.shape[0]
    w = torch.zeros(Q, op.N, device=y.device, dtype=y.dtype) if w0 is None else w0.clone()
    idx = torch.arange(Q, device=y.device)  # queries still iterating
    wa, va, ya = w, w.clone(), y
    thr = (lam / L).unsqueeze(1)
    t = 1.0
    for it in range(max_iter):
        grad = op.rmv(op.mv(va) - ya)
        u = va - grad / L
        w_new = torch.clamp(u - thr, min=0) if positive else torch.sign(u) * torch.clamp(u.abs() - thr, min=0)
        t_new = (1 + (1 + 4 * t * t) ** 0.5) / 2
        va = w_new + ((t - 1) / t_new) * (w_new - wa)
        delta = (w_new - wa).abs().amax(dim=1) if it % 10 == 0 else None
        wa, t = w_new, t_new
        if delta is not None:
            done = delta <= tol * (wa.abs().amax(dim=1) + 1e-12)
            if bool(done.any()):
                w[idx[done]] = wa[done]
                keep = ~done
                if not bool(keep.any()):
                    return w
                idx, wa, va, ya, thr = idx[keep], wa[keep], va[keep], ya[keep], thr[keep]
    w[idx] = wa
    return w


def fista_working_set(op, y: torch.Tensor, lam: torch.Tensor, max_iter: int = 500, tol: float = 1e-6,
                      positive: bool = False, L: float | None = None, w0: torch.Tensor | None = None,
                      max_rounds: int = 20) -> torch.Tensor:
    """`fista` on a working set of documents, grown until the full problem's optimality conditions hold.

    Each round solves the Lasso over the working set W only (FISTA costs O(|W| S) per iteration instead
    of O(N S)), then checks every other document once: w_j = 0 is optimal iff |M_j^T r| <= lam
    (M_j^T r <= lam when positive). Violators join W and the round repeats, warm-started. The working
    set starts as the current support plus the 2K documents most correlated with the residual (a Lasso
    over K measurements keeps at most ~K documents). Queries are solved one by one, so an answer does
    not depend on the other queries of the call. Plain (batched) `fista` runs instead when N < 8K, when W
    would cover half the corpus, or for operators without `restrict`."""
    Q, N = y.shape[0], op.N
    if not hasattr(op, "restrict") or N < 8 * op.K:  # little to gain (1.3-1.6x at N = 10K): batched plain FISTA
        return fista(op, y, lam, max_iter, tol, positive, L, w0)
    if Q > 1:  # one query at a time: a query's working set, hence its answer, never depends on the others
        return torch.cat([fista_working_set(op, y[q:q + 1], lam[q:q + 1], max_iter, tol, positive, L,
                                            None if w0 is None else w0[q:q + 1], max_rounds) for q in range(Q)])
    w = torch.zeros(Q, N, device=y.device, dtype=y.dtype) if w0 is None else w0.clone()
    slack = (1 + 1e-3) * lam.unsqueeze(1)  # FISTA stops short of the exact optimum: do not chase rounding
    corr = op.rmv(y - op.mv(w))  # (Q, N)
    score = corr if positive else corr.abs()
    m = min(N, 2 * op.K)
    active = (w != 0).any(dim=0)
    active[torch.topk(score, m, dim=1).indices.reshape(-1)] = True
    for _ in range(max_rounds):
        if int(active.sum()) > N // 2:
            return fista(op, y, lam, max_iter, tol, positive, L, w)
        docs = torch.nonzero(active).squeeze(1)
        # the full operator's step 1/L (computed once per operator): while the working set holds every
        # document plain FISTA would touch, the iterates are plain FISTA's, whatever the set's size
        w_ws = fista(op.restrict(docs), y, lam, max_iter, tol, positive, L or op.lipschitz(), w[:, docs])
        w = torch.zeros_like(w)
        w[:, docs] = w_ws
        corr = op.rmv(y - op.mv(w))
        score = corr if positive else corr.abs()
        viol = (score > slack) & ~active[None]  # (Q, N)
        if not bool(viol.any()):
            return w
        # the worst violators of each query join (at most m per query per round)
        worst = torch.topk(torch.where(viol, score, torch.zeros_like(score)), min(m, N), dim=1)
        active[worst.indices[worst.values > 0]] = True
    logger.debug("working-set Lasso: %d rounds without meeting the optimality check; finishing on all documents", max_rounds)
    return fista(op, y, lam, max_iter, tol, positive, L, w)


@dataclass
class LassoRecovery:
    """scikit-learn-style estimator: fit(M, y) with M (K, N) {0,1} (dense, torch sparse, or a
    SubsetDesign) and y (Q, K) -> influence_ (Q, N), intercept_ (Q,), alpha_ (Q,)."""

    alpha: float | str = "auto"
    alpha_ratio: float | None = None
    ratios: tuple = (0.7, 0.5, 0.3, 0.2, 0.1, 0.05, 0.02)
    rule: str = "1se"
    holdout: float = 0.15
    positive: bool = False
    max_iter: int = 300
    tol: float = 1e-4
    device: str = "cpu"
    seed: int = 0
    working_set: bool = True  # fista_working_set where it pays (N >= 8K); False: plain FISTA over all N

    def __post_init__(self):
        if not (self.alpha == "auto" or (isinstance(self.alpha, (int, float)) and self.alpha >= 0)):
            raise StrideError(f"alpha must be 'auto' or a non-negative number, got {self.alpha!r}")
        if self.alpha_ratio is not None and not 0 < self.alpha_ratio <= 1:
            raise StrideError("alpha_ratio must be in (0, 1]")
        if not 0 < self.holdout < 0.5:
            raise StrideError("holdout must be in (0, 0.5)")
        if self.rule not in ("1se", "min"):
            raise StrideError(f"rule must be '1se' or 'min', got {self.rule!r}")

    def _lam_max(self, op, yc):
        return op.rmv(yc).abs().max(dim=1).values.clamp_min(1e-12)

    def fit(self, M, y) -> "LassoRecovery":
        dev = torch.device(self.device)
        y = self._measurements(M, y)
        op = _operator(M, dev)
        ymean = y.mean(dim=1, keepdim=True)
        yc = y - ymean
        if self.alpha != "auto":
            lam = torch.full((y.shape[0],), float(self.alpha), device=dev)
            ratio = None
        else:
            ratio = self.alpha_ratio or self._select_ratio(M, y)
            lam = ratio * self._lam_max(op, yc)
        w = self._solve(op, yc, lam)
        self.influence_ = w.cpu().numpy()
        Mw = op.apply(w)
        self.intercept_ = (y - Mw).mean(dim=1).cpu().numpy()
        self.alpha_ = lam.cpu().numpy()
        self.alpha_ratio_ = ratio
        return self

    def _solve(self, op, y, lam, w0=None):  # the Lipschitz constant is computed only where a solver needs it
        solver = fista_working_set if self.working_set else fista
        return solver(op, y, lam, self.max_iter, self.tol, self.positive, None, w0)

    def validation_errors(self, M, y) -> dict[float, np.ndarray]:
        """Per ratio in `ratios`: the squared error of each held-out subset (n_val,), summed over the
        queries of y (Q, K).

        Sums over disjoint query shards add up to the errors of all queries, so shards (processes or
        batches) can agree on one ratio (`best_ratio` of the summed errors) and fit with alpha_ratio."""
        return self._validation_errors(M, self._measurements(M, y))

    def _measurements(self, M, y) -> torch.Tensor:
        """y as a (Q, K) float tensor on the device, checked against M's K rows and for NaN/inf."""
        y = torch.as_tensor(np.asarray(y, dtype=np.float32) if not isinstance(y, torch.Tensor) else y,
                            device=torch.device(self.device)).float()
        y = y[None] if y.dim() == 1 else y
        K = int(M.K) if hasattr(M, "members") else int(M.shape[0])
        if y.shape[1] != K:
            raise StrideError(f"y has {y.shape[1]} columns but M has K={K} rows")
        if not torch.isfinite(y).all():
            raise StrideError("measurements y contain NaN or inf")
        return y

    @staticmethod
    def best_ratio(errs: dict[float, np.ndarray], rule: str = "1se") -> float:
        """"min": the ratio with the lowest mean held-out error (ties: the largest, i.e. the sparsest fit);
        "1se": the largest ratio whose mean error is within one standard error of that minimum."""
        mean = {r: float(np.mean(e)) for r, e in errs.items()}
        best = min(sorted(mean, reverse=True), key=lambda r: mean[r])
        if rule == "min":
            return best
        e = np.asarray(errs[best], dtype=np.float64).reshape(-1)
        se = float(e.std(ddof=1) / np.sqrt(len(e))) if len(e) > 1 else 0.0
        return max(r for r in mean if mean[r] <= mean[best] + se)

    def _select_ratio(self, M, y) -> float:
        errs = self._validation_errors(M, y)
        best = self.best_ratio(errs, self.rule)
        logger.debug("lambda ratio validation errors: %s -> %s", {r: float(e.sum()) for r, e in errs.items()}, best)
        self.validation_errors_ = errs
        return best

    def _validation_errors(self, M, y) -> dict[float, np.ndarray]:
        K = y.shape[1]
        g = np.random.default_rng(self.seed)
        perm = g.permutation(K)
        n_val = max(2, int(round(K * self.holdout)))
        val, tr = np.sort(perm[:n_val]), np.sort(perm[n_val:])
        tr_t, val_t = torch.from_numpy(tr).to(y.device), torch.from_numpy(val).to(y.device)
        op = _operator(M, y.device, tr_t)
        op_val = _operator(M, y.device, val_t)
        ytr = y[:, tr_t]
        ytr_mean = ytr.mean(dim=1, keepdim=True)
        ytc = ytr - ytr_mean
        lam_max = self._lam_max(op, ytc)
        w = None
        errs = {}
        for r in sorted(self.ratios, reverse=True):  # warm start from sparse to dense
            w = self._solve(op, ytc, r * lam_max, w0=w)
            # intercept of the training fit: mean residual over the training subsets
            b = ytr_mean.squeeze(1) - op.apply(w).mean(dim=1)
            pred = op_val.apply(w) + b[:, None]
            errs[r] = ((pred - y[:, val_t]) ** 2).sum(dim=0).cpu().numpy().astype(np.float64)  # (n_val,)
        return errs

    def predict(self, M) -> np.ndarray:
        Ms = _as_sparse(M, torch.device("cpu"))
        w = torch.from_numpy(self.influence_)
        return (torch.sparse.mm(Ms, w.t()).t() + torch.from_numpy(self.intercept_)[:, None]).numpy()
