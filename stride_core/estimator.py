"""STRIDE on token-level features, independent of where they came from (an LM cache on disk, an
MLP's activations in RAM): subset design -> steering operators -> reference -> measure -> recover."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch

from .arguments import OperatorArgs, SubsetArgs
from .measurement import measure
from .operators import SteeringOperators, train_operators
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
    positive: bool = False
    device: str = "cpu"
    progress: bool = False

    def fit(self, train, doc_ids=None, design: SubsetDesign | None = None, on_progress=None) -> "StrideEstimator":
        doc_ids = np.asarray(train.doc_ids if doc_ids is None else doc_ids)
        self.design_ = design or SubsetDesign.random(doc_ids, self.subsets.K, self.subsets.S, self.subsets.seed)
        self.ops_, self.trace_ = train_operators(train, self.design_, self.head, self.operators, self.device,
                                                 self.progress, on_progress)
        self.reference_ = self.reference_y(train)
        return self

    def reference_y(self, train) -> np.ndarray:
        """(K,) mean y over a seeded sample of training documents: the subset-level generic effect."""
        n = min(self.operators.n_reference, train.n_docs)
        idx = np.sort(np.random.default_rng(self.operators.seed + 1).choice(train.n_docs, n, replace=False))
        from .activations import FeatureCache

        # At most `reference_tokens` sampled positions per document keep this pass cheap (K x V per token).
        g = np.random.default_rng(self.operators.seed + 2)
        per_doc = []
        for i in idx:
            pos = np.arange(train.offsets[i], train.offsets[i + 1])
            if len(pos) > self.operators.reference_tokens:
                pos = np.sort(g.choice(pos, self.operators.reference_tokens, replace=False))
            per_doc.append(pos)
        rows = np.concatenate(per_doc)
        lens = np.array([len(p) for p in per_doc])
        sub = FeatureCache(root=train.root, doc_ids=np.asarray(train.doc_ids)[idx], offsets=np.concatenate([[0], np.cumsum(lens)]),
                           h=np.asarray(train.h[rows]), z=np.asarray(train.z[rows]), target=np.asarray(train.target[rows]),
                           weight=np.ones(len(rows), dtype=np.float32))
        y, _ = measure(sub, self.ops_, self.head, self.device)  # (n, K)
        # A reference document's own subsets see its self-effect, not the generic one: leave it out there.
        own = np.zeros_like(y, dtype=bool)
        own[np.repeat(np.arange(n), self.design_.S), self.design_.members[idx].reshape(-1)] = True
        keep = ~own
        return (y * keep).sum(axis=0) / np.maximum(keep.sum(axis=0), 1)

    def measure(self, queries) -> tuple[np.ndarray, np.ndarray]:
        """y (Q, K) (reference-centred when center=True) and base losses (Q,)."""
        y, base = measure(queries, self.ops_, self.head, self.device)
        if self.center:
            y = y - self.reference_[None]
        return y, base

    def recover(self, y: np.ndarray) -> LassoRecovery:
        return LassoRecovery(alpha=self.alpha, alpha_ratio=self.alpha_ratio, positive=self.positive,
                             device=self.device).fit(self.design_, y)

    def scores(self, queries) -> np.ndarray:
        y, _ = self.measure(queries)
        return self.recover(y).influence_

    # -- persistence (safetensors) ------------------------------------------------------------
    def save(self, path):
        from safetensors.torch import save_file

        st = self.ops_.state()
        st["reference"] = torch.from_numpy(np.asarray(self.reference_, dtype=np.float32))
        st["shape"] = torch.tensor([self.ops_.D, self.ops_.C, self.ops_.K, self.ops_.R])
        save_file(st, str(path))

    def load(self, path, design: SubsetDesign) -> "StrideEstimator":
        from safetensors.torch import load_file

        st = load_file(str(path))
        D, C, K, R = st.pop("shape").tolist()
        self.reference_ = st.pop("reference").numpy()
        ops = SteeringOperators(D, C, K, R)
        ops.load_state_dict(st)
        self.ops_ = ops.to(self.device).eval()
        self.design_ = design
        return self
