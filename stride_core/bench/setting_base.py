"""The frame every LDS setting shares: `Setting` (a frozen description whose fields key the caches) and
`BenchContext` (what attribution methods read), cache hashing and a torch-threads guard.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from ..errors import StrideError

logger = logging.getLogger(__name__)

# Bump when the meaning of a cached model or ground-truth output changes (invalidates caches).

# Bump when the meaning of a cached model or ground-truth output changes (invalidates caches).
BENCH_VERSION = 1


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


@contextmanager
def torch_threads(n: int | None):
    """Temporarily set torch's intra-op thread count (None or 0: leave it). Tiny models train far
    faster on one thread (and bit-for-bit reproducibly), especially on a busy machine."""
    import torch

    if not n:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


@dataclass(frozen=True)
class Setting:
    """Common fields. `n_query` and `n_models` are *how much* to evaluate and do not key caches:
    queries and ground-truth models are prefix-stable (a run with fewer reuses a larger cache)."""

    name: str = ""
    n_train: int = 1000
    n_query: int = 100
    n_models: int = 100  # default number of ground-truth models
    mask_fraction: float = 0.5  # each ground-truth model sees a random mask with this fraction
    mask_seed: int = 0  # masks come from SeedSequence([mask_seed, m]): one stream per model
    same_init: bool = False  # True: every ground-truth model uses base_seed (data-only variation)
    base_seed: int = 0
    train_threads: int = 1  # torch threads while training a model (not a cache key; 0 = leave as is)

    def __post_init__(self):
        if self.n_train < 2 or self.n_query < 1 or self.n_models < 1:
            raise StrideError("n_train must be >= 2, n_query and n_models >= 1")
        if not (0.0 < self.mask_fraction < 1.0):
            raise StrideError("mask_fraction must be in (0, 1)")

    # -- keys ---------------------------------------------------------------------------------
    def base_fields(self) -> dict:
        """Fields that determine the data selection and the base model."""
        skip = {"n_query", "n_models", "mask_fraction", "mask_seed", "same_init", "train_threads"}
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}

    def gt_fields(self) -> dict:
        """Fields that determine the ground truth (everything but how much of it to use)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("n_query", "n_models", "train_threads")}

    def base_key(self) -> str:
        return _hash({"v": BENCH_VERSION, **self.base_fields(), "py": sys.version_info[:2]})

    def gt_key(self, fingerprint: str) -> str:
        return _hash({"v": BENCH_VERSION, **self.gt_fields(), "data": fingerprint})

    def base_dir(self, cache_dir: Path) -> Path:
        return Path(cache_dir) / self.name / "base" / self.base_key()

    # -- per ground-truth model -------------------------------------------------------------------
    def mask(self, m: int) -> np.ndarray:
        """(N,) bool: ground-truth model m's training mask, from its own RNG stream."""
        rng = np.random.default_rng(np.random.SeedSequence([self.mask_seed, 7919, m]))
        return rng.random(self.n_train) < self.mask_fraction

    def model_seed(self, m: int) -> int:
        return self.base_seed if self.same_init else self.base_seed + 1 + m

    def to_dict(self) -> dict:
        return asdict(self)

    # -- implemented by subclasses ------------------------------------------------------------------
    def build_context(self, cache_dir, device: str = "cpu", progress: bool = True):
        raise NotImplementedError

    def train_subset(self, ctx, mask: np.ndarray, seed: int, device: str = "cpu"):
        raise NotImplementedError

    def query_outputs(self, ctx, model, device: str = "cpu") -> dict[str, np.ndarray]:
        """{"loss": (Q,), ...}: `loss` is the ground-truth output (higher = worse)."""
        raise NotImplementedError


@dataclass
class BenchContext:
    """What every attribution method gets. `train_ids` are stable document ids (length N)."""

    setting: Setting
    cache_dir: Path
    device: str
    train_ids: np.ndarray  # (N,)
    fingerprint: str
    base_metrics: dict = field(default_factory=dict)

    @property
    def n_train(self) -> int:
        return len(self.train_ids)

    @property
    def n_query(self) -> int:
        raise NotImplementedError
