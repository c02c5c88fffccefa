"""Index configuration: the arguments of every stage of a run (IndexConfig, make_config with its presets and
small-corpus rules), the document-count checks and the provenance a run records.
"""

from __future__ import annotations

import logging
import platform
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


from .. import __version__
from ..method.arguments import CacheArgs, OperatorArgs, SubsetArgs, preset
from ..errors import RunError, StrideError

logger = logging.getLogger(__name__)


@dataclass
class IndexConfig:
    corpus: str
    model: str
    shards: list[int] | None
    cache: CacheArgs
    subsets: SubsetArgs
    operators: OperatorArgs

    def to_dict(self) -> dict:
        return {"corpus": self.corpus, "model": self.model, "shards": self.shards, "cache": self.cache.to_dict(),
                "subsets": self.subsets.to_dict(), "operators": self.operators.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> "IndexConfig":
        return cls(d["corpus"], d["model"], d.get("shards"), CacheArgs.from_dict(d["cache"]),
                   SubsetArgs.from_dict(d["subsets"]), OperatorArgs.from_dict(d["operators"]))


def _git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def provenance(device: str) -> dict:
    import torch

    return {"stride_version": __version__, "git_sha": _git_sha(), "device": device,
            "gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") else None,
            "torch": torch.__version__, "python": platform.python_version(), "host": platform.node(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


# A preset's K is scaled down on corpora too small for it: K = 0.6 N subsets (S unchanged, at most K) is
# where both LDS benchmarks were measured (tiny-lm K=600 and digits K=800 for N=1000).
SMALL_CORPUS_K_FRACTION = 0.6


# Reference queries (generic component): each reference document's prompt is its first 24 tokens at most.
REFERENCE_PROMPT_TOKENS = 24


def steps_for_K(operators: OperatorArgs, K_preset: int, K: int) -> int:
    """Operator steps at a lowered K that give each subset as many batches as the preset gives it at its own K:
    a step trains min(subset_batch, K) of the K subsets, so a subset is in steps * min(subset_batch, K) / K
    batches (the default preset: 400 * 250 / 1000 = 100). Without this a 1,000-document corpus (K = 600) trained
    each subset in 167 batches, for 0.009 more LDS than 100 (0.373 against 0.364, tiny-lm; BENCHMARKS.md "Cost")
    at 1.6x the operator time."""
    import math

    batches = operators.steps * min(operators.subset_batch, K_preset) / K_preset
    return max(1, min(operators.steps, math.ceil(batches * K / min(operators.subset_batch, K) - 1e-9)))


def make_config(corpus: str, model: str, preset_name: str = "default", shards=None, n_docs: int | None = None,
                **overrides) -> IndexConfig:
    """Arguments from a preset, with dotted overrides like {"subsets.K": 400, "operators.R": 8}.

    With `n_docs` (the documents the run will index) and no explicit "subsets.K", a preset K larger
    than 0.6 * n_docs is lowered to that, and, without an explicit "operators.steps", the steps with it
    (`steps_for_K`); deterministic, so a re-run builds the same config."""
    p = preset(preset_name)
    if n_docs is not None and "subsets.K" not in overrides:
        K = max(2, int(SMALL_CORPUS_K_FRACTION * n_docs))
        if p["subsets"].K > K:
            logger.info("corpus has %d documents: preset %r K=%d lowered to K=%d", n_docs, preset_name, p["subsets"].K, K)
            if "operators.steps" not in overrides:
                steps = steps_for_K(p["operators"], p["subsets"].K, K)
                if steps != p["operators"].steps:
                    logger.info("and its %d operator steps to %d (each subset in as many batches as at K=%d)",
                                p["operators"].steps, steps, p["subsets"].K)
                    p["operators"] = type(p["operators"]).from_dict({**p["operators"].to_dict(), "steps": steps})
            p["subsets"] = type(p["subsets"]).from_dict({**p["subsets"].to_dict(), "K": K, "S": min(p["subsets"].S, K)})
    for key, val in overrides.items():
        stage, _, name = key.partition(".")
        if stage not in p or not hasattr(p[stage], name):
            raise StrideError(f"unknown argument {key!r}")
        d = p[stage].to_dict()
        d[name] = val
        p[stage] = type(p[stage]).from_dict(d)
    return IndexConfig(corpus, str(Path(model).expanduser().resolve()), sorted(shards) if shards else None, p["cache"], p["subsets"], p["operators"])


def count_documents(ws, corpus: str, shards=None) -> int:
    """Documents of a corpus (or of some of its shards) that a run would index."""
    from ..store.corpus import corpus_info, load_documents

    if shards is None:
        return int(corpus_info(ws, corpus)["n_docs"])
    return len(load_documents(ws, corpus, ["doc_id"], shards=list(shards)))


def check_documents(config: IndexConfig, n_docs: int):
    """The corpus selection must hold documents, and at least K of them."""
    if n_docs == 0:
        raise RunError(f"corpus {config.corpus!r} has no documents in shards {config.shards}")
    if config.subsets.K > n_docs:
        raise StrideError(f"K={config.subsets.K} subsets is larger than the {n_docs} documents: lower K (e.g. --K {max(2, n_docs // 4)})")
