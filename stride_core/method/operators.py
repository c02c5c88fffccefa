"""Steering operators: a shared basis B_psi (D -> R, per token) and one R x C steering matrix a_k per
subset. Steered output of subset k, by where the operator acts (`OperatorArgs.space`):
- "hidden" (default): o~_k(x) = head(z_x + B_psi(h_x) . a_k), a_k in R^{R x D}, a shift of the final
  normed hidden state z (so the logit shift lies in the span of the head's W_U);
- "logits": o~_k(x) = o_x + B_psi(h_x) . a_k, a_k in R^{R x V}, the project page's equation (any
  context-dependent shift of the V logits).

Trained jointly (all subsets batched, no Python loop over K inside a step) with
- fidelity:  token NLL of the steered model on tokens of subset k's documents ("trained on A_k"),
- stability: KL(softmax(o_x) || softmax(o~_k(x))) on tokens outside A_k (no global shortcuts),
- linearity: y_x = Loss(o_x) - Loss(o~_k(x)) for all k must be explainable additively, with
  P = M~ (M~^T M~ + gamma I)^-1 M~^T for the JL-sketched design M~ = M R_JL (K x q): either the
  fraction of centred y_x left outside the span, ||(I - P) y_x||^2 / ||y_x||^2 ("normalised"), or the
  paper's unnormalised, uncentred ridge residual ||(I - P) y_x||^2 ("paper", OperatorArgs.linearity_form).
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .arguments import OPERATOR_SPACES as SPACES
from .arguments import OperatorArgs
from ..errors import RunError

logger = logging.getLogger(__name__)


class SteeringOperators(torch.nn.Module):
    def __init__(self, D: int, C: int, K: int, R: int, space: str = "hidden"):
        super().__init__()
        if space not in SPACES:
            raise ValueError(f"space must be one of {SPACES}, not {space!r}")
        self.D, self.C, self.K, self.R, self.space = D, C, K, R, space
        self.norm = torch.nn.LayerNorm(D, elementwise_affine=False)
        self.basis = torch.nn.Linear(D, R)  # B_psi
        self.A = torch.nn.Parameter(torch.zeros(K, R, C))  # a_k; zero = unsteered at init

    def features(self, h: torch.Tensor) -> torch.Tensor:  # (..., D) -> (..., R)
        return self.basis(self.norm(h))

    def delta(self, h: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Per-subset batch: h (Kb, P, D), k (Kb,) -> (Kb, P, C)."""
        return torch.bmm(self.features(h), self.A[k])

    def delta_all(self, h: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Every subset on the same tokens: h (T, D), k (Kc,) -> (Kc, T, C)."""
        return torch.einsum("tr,krc->ktc", self.features(h), self.A[k])

    def steered(self, head, z: torch.Tensor, delta: torch.Tensor, base_logits: torch.Tensor | None = None) -> torch.Tensor:
        """Steered logits from z (..., D) and a delta (..., C) of this operator's space."""
        if self.space == "hidden":
            return head(z + delta)
        return (head(z) if base_logits is None else base_logits) + delta

    def logit_directions(self, head, k: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
        """(Kc, R, V): the logit shift of each basis feature under subset k (`zero` = head(0), the bias)."""
        return self.A[k] if self.space == "logits" else head(self.A[k]) - zero

    def state(self) -> dict:
        return {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}


def projection_residual_matrix(design, q: int, gamma: float, seed: int, center: bool = True) -> torch.Tensor:
    """(I - P) for the JL-sketched design, (K, K)."""
    g = torch.Generator().manual_seed(seed + 7)
    R_jl = torch.randn(design.N, q, generator=g) / q ** 0.5
    Mt = torch.sparse.mm(design.sparse(), R_jl)  # (K, q)
    if center:  # y is centred, so centre the sketch too
        Mt = Mt - Mt.mean(dim=0, keepdim=True)
    P = Mt @ torch.linalg.solve(Mt.T @ Mt + gamma * torch.eye(q), Mt.T)
    return torch.eye(design.K) - P


class _TokenSampler:
    """Samples token rows: of a subset's member documents (fidelity) or of any document (stability)."""

    def __init__(self, cache, design, seed: int, by: str = "document", exclude_members: bool = False):
        self.offsets = torch.from_numpy(np.asarray(cache.offsets))
        self.lengths = self.offsets[1:] - self.offsets[:-1]
        indptr, docs = design.csr()
        self.indptr = torch.from_numpy(indptr)
        self.docs = torch.from_numpy(docs)
        self.sizes = self.indptr[1:] - self.indptr[:-1]
        self.N = design.N
        self.g = torch.Generator().manual_seed(seed)
        self.by = by
        if by == "token":  # cumulative token counts of each subset's member list, for token-proportional draws
            self.cum = torch.cumsum(self.lengths[self.docs], 0)
            self.cum0 = torch.cat([torch.zeros(1, dtype=self.cum.dtype), self.cum])
        self.members_of = torch.from_numpy(np.asarray(design.members)) if exclude_members else None  # (N, S)

    def _token_in(self, doc: torch.Tensor) -> torch.Tensor:
        r = torch.rand(doc.shape, generator=self.g)
        return self.offsets[doc] + (r * self.lengths[doc]).long()

    def members(self, k: torch.Tensor, P: int) -> torch.Tensor:  # (Kb,) -> (Kb, P) token rows
        r = torch.rand((len(k), P), generator=self.g)
        if self.by == "token":  # uniform over the subset's tokens: a document weighs by its length
            lo, hi = self.cum0[self.indptr[k]], self.cum0[self.indptr[k + 1]]  # (Kb,)
            u = lo[:, None] + (r * (hi - lo)[:, None].to(r.dtype)).long()  # (Kb, P) token number in the pool
            pos = torch.searchsorted(self.cum, u, right=True).clamp_max(len(self.docs) - 1)
            doc = self.docs[pos]
            return self.offsets[doc] + (u - self.cum0[pos]).clamp(min=0).minimum(self.lengths[doc] - 1)
        pos = self.indptr[k][:, None] + (r * self.sizes[k][:, None]).long()
        return self._token_in(self.docs[pos])

    def anywhere(self, shape, k: torch.Tensor | None = None) -> torch.Tensor:
        """Token rows of uniform documents; with `k` (shape[0] subsets) and exclude_members, documents
        of subset k[i] are redrawn (the complement R_k of the paper's stability loss)."""
        doc = torch.randint(0, self.N, shape, generator=self.g)
        if k is not None and self.members_of is not None and len(shape) == 2:
            for _ in range(20):  # a member is drawn with probability S/K: a few redraws clear them all
                bad = (self.members_of[doc] == k[:, None, None]).any(-1)
                if not bad.any():
                    break
                doc[bad] = torch.randint(0, self.N, (int(bad.sum()),), generator=self.g)
        return self._token_in(doc)


def _read_all(a: np.ndarray) -> np.ndarray:
    """A whole (memory-mapped) array into RAM in its storage dtype. A memmap is read with plain file
    reads, so its pages are not also mapped into this process (RSS holds one copy, not two)."""
    if isinstance(a, np.memmap) and a.filename is not None:
        return np.fromfile(a.filename, dtype=a.dtype, count=a.size, offset=a.offset).reshape(a.shape)
    return np.ascontiguousarray(a)


class _Rows:
    """Token rows of a FeatureCache as float32 tensors: held in RAM (or on the GPU) in the cache's
    storage dtype (fp16 by default) when that takes at most `max_ram_bytes`, converted per gathered
    batch (the same values as converting everything at once); else gathered from the memmap."""

    def __init__(self, cache, device, max_ram_bytes: float = 4e9):
        self.cache, self.device = cache, device
        nbytes = cache.n_tokens * (cache.h.shape[1] * cache.h.dtype.itemsize + cache.z.shape[1] * cache.z.dtype.itemsize)
        self.in_ram = nbytes <= max_ram_bytes
        if self.in_ram:
            self.h = torch.from_numpy(_read_all(cache.h)).to(device)
            self.z = torch.from_numpy(_read_all(cache.z)).to(device)
            self.t = torch.from_numpy(np.array(cache.target)).to(device)

    def get(self, idx: torch.Tensor):
        if self.in_ram:
            i = idx.to(self.device)
            return self.h[i].float(), self.z[i].float(), self.t[i]
        flat = idx.reshape(-1).numpy()
        r = self.cache.rows(flat, self.device)
        shp = tuple(idx.shape)
        return r["h"].view(*shp, -1), r["z"].view(*shp, -1), r["target"].view(shp)


def _kl(base_logits, steered_logits):
    lp = F.log_softmax(base_logits.float(), -1)
    lq = F.log_softmax(steered_logits.float(), -1)
    return (lp.exp() * (lp - lq)).sum(-1)


@contextmanager
def frozen_head(head):
    """The model behind `head` (a bound method of a Task with a `.model`) with requires_grad off while
    operators train: the losses need gradients through the head, never for its weights. Left on, every
    step's backward also computed dL/dW_U (V x C per token row, half the head's backward) and accumulated
    it into the model's .grad, which nothing cleared."""
    model = getattr(getattr(head, "__self__", None), "model", None)
    params = [p for p in model.parameters() if p.requires_grad] if isinstance(model, torch.nn.Module) else []
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def train_operators(cache, design, head, args: OperatorArgs, device: str = "cpu", progress: bool = True,
                    on_progress=None, part=None) -> tuple[SteeringOperators, list[dict]]:
    """Fit the basis and all K steering matrices. Returns the operators (eval mode) and a loss trace.

    `part` (optional) makes a step data-parallel across processes (stride_core.runs.process_group.DataParallel):
    every process draws the same global sample (same seeded generator), computes the loss terms of its
    share of it (`part.share(n) -> (lo, hi)`, summed and divided by the global sample size), and
    `part.reduce(ops, terms)` sums the gradients and the logged terms over processes, so the identical
    optimizer step everywhere equals the one-process step up to float summation order."""
    with frozen_head(head):
        return _train_operators(cache, design, head, args, device, progress, on_progress, part)


def _train_operators(cache, design, head, args: OperatorArgs, device: str, progress: bool, on_progress,
                     part) -> tuple[SteeringOperators, list[dict]]:
    torch.manual_seed(args.seed)
    dev = torch.device(device)
    D, C = cache.h.shape[1], cache.z.shape[1]
    if args.space == "logits":  # a_k in R^{R x V}
        with torch.no_grad():
            C = head(torch.zeros(1, C, device=dev)).shape[-1]
    ops = SteeringOperators(D, C, design.K, args.R, args.space).to(dev)
    if part is not None:
        part.broadcast(ops)
    # AdamW: decoupled decay (with Adam's L2 decay, a subset outside the batch gets a decay-only gradient that
    # Adam normalises to a full-size step towards 0: any decay > 0 zeroed the operators, LDS 0 on tiny-lm)
    opt = torch.optim.AdamW(ops.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    sampler = _TokenSampler(cache, design, args.seed, args.fidelity_sampling, args.stability_excludes_members)
    rows = _Rows(cache, dev)
    paper_linearity = args.linearity_form == "paper"
    IminusP = (projection_residual_matrix(design, args.jl_dim, args.ridge_gamma, args.seed, center=not paper_linearity).to(dev)
               if args.linearity_weight > 0 else None)
    Kb = min(args.subset_batch, design.K)
    perm = torch.randperm(design.K, generator=sampler.g)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else torch.autocast("cpu", enabled=False)
    trace: list[dict] = []
    bar = tqdm(range(args.steps), desc="train operators", disable=not progress, mininterval=1.0)
    t0 = time.time()

    def share(n: int) -> slice:  # this process's rows of a global sample of n
        return slice(0, n) if part is None else slice(*part.share(n))

    def reduce(per_item: torch.Tensor, n_total: int) -> torch.Tensor:
        # one process: the mean exactly as before; data-parallel: this share's part of the global mean
        return per_item.mean() if part is None else per_item.sum() / n_total

    for step in bar:
        s = (step * Kb) % design.K
        k = perm[s:s + Kb]
        if len(k) < Kb:
            k = torch.cat([k, perm[: Kb - len(k)]])
        k_dev = k.to(dev)
        mine = share(len(k))
        terms_t: dict[str, torch.Tensor] = {}
        loss = torch.zeros((), device=dev)
        with amp:
            if args.fidelity_weight > 0:
                idx = sampler.members(k, args.tokens_per_subset)  # (Kb, P), the same on every process
                if mine.stop > mine.start:
                    h, z, t = rows.get(idx[mine])  # (kb, P, D/C)
                    logits = ops.steered(head, z, ops.delta(h, k_dev[mine])) / args.temperature
                    flat, tt = logits.float().reshape(-1, logits.size(-1)), t.reshape(-1)
                    fid = F.cross_entropy(flat, tt) if part is None else F.cross_entropy(flat, tt, reduction="sum") / idx.numel()
                    loss = loss + args.fidelity_weight * fid
                    terms_t["fidelity"] = fid.detach()
                else:
                    terms_t["fidelity"] = torch.zeros((), device=dev)
            if args.stability_weight > 0 and args.stability_tokens > 0:
                idx = sampler.anywhere((len(k), args.stability_tokens), k)
                if mine.stop > mine.start:
                    h, z, _ = rows.get(idx[mine])
                    with torch.no_grad():
                        base_logits = head(z)
                    steered = ops.steered(head, z, ops.delta(h, k_dev[mine]), base_logits)
                    stab = reduce(_kl(base_logits / args.temperature, steered / args.temperature), idx.numel())
                    loss = loss + args.stability_weight * stab
                    terms_t["stability"] = stab.detach()
                else:
                    terms_t["stability"] = torch.zeros((), device=dev)
            if IminusP is not None:
                idx = sampler.anywhere((args.linearity_batch,))  # (B,)
                rows_b = share(len(idx))
                if rows_b.stop > rows_b.start:
                    h, z, t = rows.get(idx[rows_b])  # (b, D)
                    all_k = torch.arange(design.K, device=dev)
                    with torch.no_grad():
                        base_logits = head(z)
                        base_loss = F.cross_entropy(base_logits.float(), t, reduction="none")  # (b,)
                    steered = ops.steered(head, z[None], ops.delta_all(h, all_k), base_logits[None]).float()  # (K, b, V)
                    st_loss = F.cross_entropy(steered.reshape(-1, steered.size(-1)), t.repeat(design.K), reduction="none").view(design.K, -1)
                    y = (base_loss[None] - st_loss).T  # (b, K)
                    if paper_linearity:  # ||(I - P) y||^2, unnormalised and uncentred
                        res = (y @ IminusP.T).pow(2).sum(1)
                    else:
                        y = y - y.mean(dim=1, keepdim=True)
                        res = (y @ IminusP.T).pow(2).sum(1) / (y.pow(2).sum(1) + 1e-8)
                    lin = reduce(res, len(idx))
                    loss = loss + args.linearity_weight * lin
                    terms_t["linearity"] = lin.detach()
                else:
                    terms_t["linearity"] = torch.zeros((), device=dev)
        opt.zero_grad(set_to_none=True)
        if loss.requires_grad:
            loss.backward()
        terms_t["total"] = loss.detach()
        if part is not None:
            terms_t = part.reduce(ops, terms_t)  # gradients and terms summed over processes
        opt.step()
        terms = {n: v.item() for n, v in terms_t.items()}
        _check_finite_terms(terms, step, args)
        trace.append(terms)
        if step % 10 == 0 or step == args.steps - 1:
            bar.set_postfix({n: f"{v:.4f}" for n, v in terms.items()})
            if on_progress:
                on_progress((step + 1) / max(args.steps, 1), **terms)
    logger.info("trained %d steering operators (R=%d) in %.1fs: %s", design.K, args.R, time.time() - t0,
                {n: round(v, 4) for n, v in (trace[-1] if trace else {}).items()})
    bad = [n for n, p in ops.named_parameters() if not torch.isfinite(p).all()]
    if bad:  # the last update can overflow even when its loss was finite
        raise RunError(f"operator training diverged: parameters {', '.join(bad)} are not finite after step {args.steps}; "
                       f"{_divergence_hint(args)}")
    ops.eval()
    return ops, trace


def _divergence_hint(args: OperatorArgs) -> str:
    return (f"lower --lr (now {args.lr:g}) or the loss weights (fidelity {args.fidelity_weight:g}, stability "
            f"{args.stability_weight:g}, linearity {args.linearity_weight:g}) or raise --temperature (now {args.temperature:g}), "
            "then re-run the same command with the new value (no --overwrite needed: nothing was saved)")


def _check_finite_terms(terms: dict, step: int, args: OperatorArgs) -> None:
    """Stop at the first non-finite loss term: a nan loss would train nan operators that still save as an index."""
    bad = [n for n, v in terms.items() if n != "total" and not np.isfinite(v)] or [n for n, v in terms.items() if not np.isfinite(v)]
    if bad:
        what = f"the {bad[0]} loss is" if len(bad) == 1 else f"the {' and '.join(bad)} losses are"
        raise RunError(f"operator training diverged at step {step + 1} of {args.steps}: {what} {terms[bad[0]]} "
                       f"({', '.join(f'{n} {v:.4g}' for n, v in terms.items())}); {_divergence_hint(args)}")
