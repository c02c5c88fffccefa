"""STRIDE on token-level features, independent of where they came from (an LM cache on disk, an
MLP's activations in RAM): subset design -> steering operators -> reference -> measure -> recover."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from .arguments import OperatorArgs, SubsetArgs
from ..errors import RunError
from .measurement import measure
from .operators import SPACES, SteeringOperators, train_operators
from .recovery import LassoRecovery
from .subsets import SubsetDesign

logger = logging.getLogger(__name__)


@dataclass
class StrideEstimator:
    """fit(train_features) learns the operators; scores(query_features) -> (Q, N) influence in loss
    units (positive: including the document lowers the query's loss)."""

    head: object  # z (..., C) -> logits (..., V)
    subsets: SubsetArgs = field(default_factory=SubsetArgs)
    operators: OperatorArgs = field(default_factory=OperatorArgs)
    center: bool = False
    alpha: float | str = "auto"
    alpha_ratio: float | None = None
    lambda_rule: str = "1se"  # LassoRecovery.rule: "1se" (default) or "min"
    positive: bool = False
    device: str = "cpu"
    progress: bool = False

    def fit(self, train, doc_ids=None, design: SubsetDesign | None = None, on_progress=None) -> "StrideEstimator":
        """Learn the operators of every design (`subsets.designs` independent ones, seeds seed+e); `design`
        is the stacked design to use (SubsetDesign.stacked), drawn here when None."""
        doc_ids = np.asarray(train.doc_ids if doc_ids is None else doc_ids)
        E = self.subsets.designs
        self.design_ = design or SubsetDesign.stacked(doc_ids, self.subsets.K, self.subsets.S, self.subsets.seed, E)
        self.members_, self.trace_ = [], []
        for e, d in enumerate(self.design_.split(E)):
            args = self._args(e)
            prog = None if on_progress is None else (lambda f, _e=e, **m: on_progress((_e + f) / E, **m))
            ops, trace = train_operators(train, d, self.head, args, self.device, self.progress, prog)
            self.members_.append(_Member(d, ops))
            self.trace_ += [{**t, "design": e} for t in trace] if E > 1 else trace
            self.members_[-1].reference = self._reference_y(train, d, ops, args)
        self.ops_ = self.members_[0].ops
        self.reference_ = np.concatenate([m.reference for m in self.members_])
        return self

    def reference_y(self, train) -> np.ndarray:
        """(K_total,) mean y over a seeded sample of training documents: the subset-level generic effect."""
        return np.concatenate([self._reference_y(train, m.design, m.ops, self._args(e)) for e, m in enumerate(self._members())])

    def _args(self, e: int) -> OperatorArgs:
        return self.operators if e == 0 else replace(self.operators, seed=self.operators.seed + e)

    def _members(self) -> list:
        """The designs with their operators; an estimator assembled by hand (design_, ops_, reference_ set
        directly, as the data-parallel trainer does) counts as one design."""
        if getattr(self, "members_", None):
            return self.members_
        ref = getattr(self, "reference_", None)
        return [_Member(self.design_, self.ops_, None if ref is None else np.asarray(ref))]

    def _reference_y(self, train, design, ops, args) -> np.ndarray:
        n = min(args.n_reference, train.n_docs)
        idx = np.sort(np.random.default_rng(args.seed + 1).choice(train.n_docs, n, replace=False))
        from .activations import FeatureCache

        # At most `reference_tokens` sampled positions per document keep this pass cheap (K x V per token).
        g = np.random.default_rng(args.seed + 2)
        per_doc = []
        for i in idx:
            pos = np.arange(train.offsets[i], train.offsets[i + 1])
            if len(pos) > args.reference_tokens:
                pos = np.sort(g.choice(pos, args.reference_tokens, replace=False))
            per_doc.append(pos)
        rows = np.concatenate(per_doc)
        lens = np.array([len(p) for p in per_doc])
        sub = FeatureCache(root=train.root, doc_ids=np.asarray(train.doc_ids)[idx], offsets=np.concatenate([[0], np.cumsum(lens)]),
                           h=np.asarray(train.h[rows]), z=np.asarray(train.z[rows]), target=np.asarray(train.target[rows]),
                           weight=np.ones(len(rows), dtype=np.float32))
        y, _ = measure(sub, ops, self.head, self.device)  # (n, K)
        # A reference document's own subsets see its self-effect, not the generic one: leave it out there.
        own = np.zeros_like(y, dtype=bool)
        own[np.repeat(np.arange(n), design.S), design.members[idx].reshape(-1)] = True
        keep = ~own
        return (y * keep).sum(axis=0) / np.maximum(keep.sum(axis=0), 1)

    def measure(self, queries) -> tuple[np.ndarray, np.ndarray]:
        """y (Q, K_total) (the designs side by side; reference-centred when center=True) and base losses (Q,)."""
        ys = []
        for m in self._members():
            y, base = measure(queries, m.ops, self.head, self.device)
            ys.append(y)
        y = ys[0] if len(ys) == 1 else np.concatenate(ys, axis=1)
        if self.center:
            y = y - self.reference_[None]
        return y, base

    def recover(self, y: np.ndarray):
        """Lasso per design on its block of y; with several designs, influence_ is their mean."""
        fits = []
        for e, m in enumerate(self._members()):
            K = m.design.K
            fits.append(LassoRecovery(alpha=self.alpha, alpha_ratio=self.alpha_ratio, rule=self.lambda_rule, positive=self.positive,
                                      device=self.device).fit(m.design, y[:, e * K:(e + 1) * K]))
        return fits[0] if len(fits) == 1 else _EnsembleRecovery(fits)

    def scores(self, queries) -> np.ndarray:
        y, _ = self.measure(queries)
        return self.recover(y).influence_

    # -- persistence (safetensors) ------------------------------------------------------------
    def save(self, path):
        """One file; design e > 0 stores its tensors under the prefix "d{e}." (one design: the plain layout)."""
        from safetensors.torch import save_file

        st = {}
        for e, m in enumerate(self._members()):
            pre = "" if e == 0 else f"d{e}."
            st.update({pre + k: v for k, v in m.ops.state().items()})
            ref = m.reference if m.reference is not None else self.reference_
            st[pre + "reference"] = torch.from_numpy(np.asarray(ref, dtype=np.float32))
            st[pre + "shape"] = torch.tensor([m.ops.D, m.ops.C, m.ops.K, m.ops.R])
            st[pre + "space"] = torch.tensor(SPACES.index(m.ops.space))  # absent in older indexes: "hidden"
        save_file(st, str(path))

    def load(self, path, design: SubsetDesign) -> "StrideEstimator":
        """`design` is the stacked design of all `subsets.designs` designs (subsets.safetensors)."""
        from safetensors.torch import load_file

        st = load_file(str(path))
        self.design_, self.members_ = design, []
        for e, d in enumerate(design.split(self.subsets.designs)):
            pre = "" if e == 0 else f"d{e}."
            if pre + "shape" not in st:
                raise RunError(f"{path} holds fewer than {self.subsets.designs} designs: re-index with --overwrite")
            part = ({k: v for k, v in st.items() if not _design_prefixed(k)} if e == 0 else
                    {k[len(pre):]: v for k, v in st.items() if k.startswith(pre)})
            D, C, K, R = part.pop("shape").tolist()
            ref = part.pop("reference").numpy()
            space = SPACES[int(part.pop("space", torch.tensor(0)))]
            ops = SteeringOperators(D, C, K, R, space)
            ops.load_state_dict(part)
            self.members_.append(_Member(d, ops.to(self.device).eval(), ref))
        self.ops_ = self.members_[0].ops
        self.reference_ = np.concatenate([m.reference for m in self.members_])
        return self


def _design_prefixed(key: str) -> bool:
    head = key.split(".", 1)[0]
    return len(head) > 1 and head[0] == "d" and head[1:].isdigit()


@dataclass
class _Member:
    """One design and its operators (and reference y) of an estimator."""

    design: SubsetDesign
    ops: SteeringOperators
    reference: np.ndarray | None = None


class _EnsembleRecovery:
    """Recoveries of several designs; influence_ (Q, N) is their mean."""

    def __init__(self, fits: list):
        self.fits_ = fits
        self.influence_ = np.mean([f.influence_ for f in fits], axis=0)
        self.alpha_ratio_ = [getattr(f, "alpha_ratio_", None) for f in fits]
