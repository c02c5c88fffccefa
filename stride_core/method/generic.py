"""The query-independent ("generic") component of the measurements, and query-specific rankings.

Some subsets' operators lower the loss of almost every query (a subset that happens to hold more
text, boilerplate or frequent tokens). Such a common component c in y (Q, K) is recovered by the
Lasso as the same few documents for every prompt: the "hubs" that filled every top-10 before.

We estimate c once per run from *reference queries*: a seeded sample of corpus documents, each cut to
a short prompt and continued by the model exactly as a user's prompt is (same generation settings),
so their tokens come from the same distribution as the queries'. A reference document's own subsets
see its self-effect (memorisation), not the generic one, so those entries are left out of the mean:
  c_k = mean over reference queries r with k not among r's subsets of y[r, k]       (K,)
A prompt is then ranked by Lasso(y - beta c), beta = max(0, <y, c> / <c, c>) fitted per prompt
(`remove_generic`): what is specific to it. A prompt carries the generic component in its own amount
(beta over a man-page run's 30 prompts: 0.16 / 1.15 / 1.56 at the 10th / 50th / 90th percentile), so
subtracting c whole over-corrects the prompts with little of it and makes the documents of subsets with a
low c look helpful to all of them (tracing hub share 0.13 with y - c, 0.10 with the fit; BENCHMARKS.md).
Lasso(c) itself is the "helps every prompt" view. The cost is fixed (n reference queries, once per run and generation setting), never
grows with the number of user prompts, and a prompt's ranking never depends on the other prompts.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

GENERIC_FILE = "generic.safetensors"
GENERIC_TABLE = "generic.parquet"


@dataclass
class GenericComponent:
    """c (K_total,), the reference documents' cache rows and the key (settings) it was computed for."""

    y_mean: np.ndarray  # (K_total,)
    ref_rows: np.ndarray  # (n,) indices into the run's documents (cache order)
    key: dict

    def save(self, path: Path):
        from safetensors.numpy import save_file

        save_file({"y_mean": self.y_mean.astype(np.float32), "ref_rows": self.ref_rows.astype(np.int64)}, str(path),
                  metadata={"key": json.dumps(self.key, sort_keys=True)})

    @classmethod
    def load(cls, path: Path, key: dict) -> "GenericComponent | None":
        """The saved component when it was computed for `key` (else None: recompute)."""
        from safetensors import safe_open

        if not path.exists():
            return None
        with safe_open(str(path), "np") as f:
            saved = json.loads((f.metadata() or {}).get("key", "{}"))
            if saved != json.loads(json.dumps(key, sort_keys=True)):
                return None
            return cls(f.get_tensor("y_mean"), f.get_tensor("ref_rows"), saved)


def reference_prompts(token_store, n: int, seed: int, prompt_tokens: int) -> tuple[np.ndarray, list[list[int]]]:
    """A seeded sample of n documents (rows of the token store) and each one's prompt: its first
    min(prompt_tokens, 40% of its length) tokens, at least 1."""
    N = token_store.n_docs
    rows = np.sort(np.random.default_rng(seed).choice(N, min(n, N), replace=False))
    prompts = []
    for i in rows:
        ids = token_store.tokens(int(i))
        prompts.append(ids[: max(1, min(prompt_tokens, int(0.4 * len(ids))))])
    return rows, prompts


def remove_generic(y: np.ndarray, c: np.ndarray) -> np.ndarray:
    """y (Q, K) minus each row's least-squares multiple of c (K,), the multiple floored at 0: a prompt
    whose measurements do not contain the generic component keeps them as they are. Row by row, so a
    prompt's result never depends on the other prompts."""
    y = np.asarray(y)
    c64 = np.asarray(c, dtype=np.float64)
    cc = float(c64 @ c64)
    if cc <= 0:
        return y
    beta = np.maximum(0.0, y.astype(np.float64) @ c64 / cc)  # (Q,)
    return (y - beta[:, None] * c64[None]).astype(y.dtype)  # y's dtype: the recovery sees what it saw before


def masked_mean(y: np.ndarray, members: np.ndarray) -> np.ndarray:
    """Mean over rows of y (n, K) leaving out each row's own subsets (members (n, S)); (K,)."""
    n = y.shape[0]
    own = np.zeros(y.shape, dtype=bool)
    own[np.repeat(np.arange(n), members.shape[1]), members.reshape(-1)] = True
    keep = ~own
    return (np.where(keep, y, 0.0)).sum(axis=0) / np.maximum(keep.sum(axis=0), 1)
