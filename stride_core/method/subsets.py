"""Subset design: each of N documents joins S of K subsets at random (left-S-regular bipartite
graph, an expander with high probability), M in {0,1}^{K x N} stored sparse with its document ids."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import RunError, StrideError


@dataclass
class SubsetDesign:
    members: np.ndarray  # (N, S) int64: the S subsets of each document
    K: int
    doc_ids: np.ndarray  # (N,)

    @property
    def N(self) -> int:
        return self.members.shape[0]

    @property
    def S(self) -> int:
        return self.members.shape[1]

    @classmethod
    def random(cls, doc_ids, K: int, S: int, seed: int = 0) -> "SubsetDesign":
        N = len(doc_ids)
        if K < 2:
            raise StrideError(f"K (number of subsets) must be at least 2, got {K}")
        if not 1 <= S <= K:
            raise StrideError(f"S (subsets per document) must be in 1..K={K}, got {S}")
        if K > N:
            raise StrideError(f"K={K} subsets is larger than N={N} documents: choose K <= N")
        rng = np.random.default_rng(seed)
        members = np.empty((N, S), dtype=np.int64)
        chunk = max(1, 2_000_000 // K)  # bound the (chunk, K) random matrix
        for a in range(0, N, chunk):
            b = min(N, a + chunk)
            members[a:b] = np.argpartition(rng.random((b - a, K)), S - 1, axis=1)[:, :S]
        members.sort(axis=1)
        return cls(members=members, K=K, doc_ids=np.asarray(doc_ids, dtype=np.int64))

    @classmethod
    def stacked(cls, doc_ids, K: int, S: int, seed: int = 0, designs: int = 1) -> "SubsetDesign":
        """`designs` independent random designs (seeds seed, seed+1, ...) side by side: K_total = designs*K
        subsets, design e owning subsets [e*K, (e+1)*K) and columns [e*S, (e+1)*S) of `members`."""
        parts = [cls.random(doc_ids, K, S, seed + e) for e in range(designs)]
        if designs == 1:
            return parts[0]
        members = np.concatenate([p.members + e * K for e, p in enumerate(parts)], axis=1)
        return cls(members=members, K=designs * K, doc_ids=parts[0].doc_ids)

    def split(self, designs: int) -> list["SubsetDesign"]:
        """The independent designs of a stacked design (inverse of `stacked`)."""
        if designs == 1:
            return [self]
        if self.K % designs or self.S % designs:
            raise RunError(f"a design of K={self.K}, S={self.S} cannot be split into {designs} designs")
        K, S = self.K // designs, self.S // designs
        return [SubsetDesign(members=self.members[:, e * S:(e + 1) * S] - e * K, K=K, doc_ids=self.doc_ids) for e in range(designs)]

    def csr(self) -> tuple[np.ndarray, np.ndarray]:
        """Subset -> documents: (indptr (K+1,), doc indices) sorted by subset."""
        sub = self.members.reshape(-1)
        doc = np.repeat(np.arange(self.N), self.S)
        order = np.argsort(sub, kind="stable")
        indptr = np.concatenate([[0], np.cumsum(np.bincount(sub, minlength=self.K))])
        return indptr, doc[order]

    def sizes(self) -> np.ndarray:
        return np.bincount(self.members.reshape(-1), minlength=self.K)

    def dense(self) -> np.ndarray:
        M = np.zeros((self.K, self.N), dtype=np.float32)
        M[self.members.reshape(-1), np.repeat(np.arange(self.N), self.S)] = 1.0
        return M

    def sparse(self, device="cpu", dtype=torch.float32) -> torch.Tensor:
        """M as a torch sparse COO tensor (K, N)."""
        idx = torch.from_numpy(np.stack([self.members.reshape(-1), np.repeat(np.arange(self.N), self.S)]))
        return torch.sparse_coo_tensor(idx, torch.ones(idx.shape[1], dtype=dtype), (self.K, self.N), check_invariants=False).coalesce().to(device)

    def save(self, path: Path):
        from safetensors.numpy import save_file

        save_file({"members": self.members, "doc_ids": self.doc_ids, "K": np.array([self.K])}, str(path))

    @classmethod
    def load(cls, path: Path, doc_ids=None) -> "SubsetDesign":
        from safetensors.numpy import load_file

        if not Path(path).exists():
            raise RunError(f"no subset design at {path}")
        d = load_file(str(path))
        design = cls(members=d["members"], K=int(d["K"][0]), doc_ids=d["doc_ids"])
        if doc_ids is not None and not np.array_equal(design.doc_ids, np.asarray(doc_ids)):
            raise RunError(f"the subset design {path} was made for other documents")
        return design
