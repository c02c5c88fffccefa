"""One argument dataclass per stage, validated in __post_init__, JSON round-trip via to_dict/from_dict."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from .errors import StrideError


class _Args:
    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict):
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise StrideError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
        return cls(**d)

    @classmethod
    def help(cls) -> dict:
        return {f.name: f.metadata.get("help", "") for f in fields(cls)}


def _check(cond: bool, msg: str):
    if not cond:
        raise StrideError(msg)


def parse_int_list(text: str, option: str, minimum: int = 0) -> list[int]:
    """A comma-separated option value such as `--shards 0,2` -> [0, 2]; a clear error otherwise."""
    try:
        values = [int(s) for s in str(text).split(",") if s.strip()]
    except ValueError:
        values = None
    if not values or min(values) < minimum:
        raise StrideError(f"{option} takes comma-separated whole numbers >= {minimum}, such as {minimum},{minimum + 2}; got {text!r}")
    return values


def parse_number_or_auto(text: str, option: str, minimum: float = 0.0) -> float | str:
    """`auto` or a finite number >= minimum (e.g. --alpha, --z-threshold); a clear error otherwise."""
    import math

    if text == "auto":
        return text
    try:
        value = float(text)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value) or value < minimum:
        raise StrideError(f"{option} takes 'auto' or a number >= {minimum:g}; got {text!r}")
    return value


@dataclass
class CacheArgs(_Args):
    """Activation cache: which layer, how many tokens per document, forward batch size, storage dtype."""

    layer: str | None = None  # module name; None = the middle decoder block
    max_tokens: int = 256
    batch_size: int = 16
    dtype: str = "float16"

    def __post_init__(self):
        _check(self.max_tokens >= 2, "max_tokens must be >= 2")
        _check(self.batch_size >= 1, "batch_size must be >= 1")
        _check(self.dtype in ("float16", "float32"), "dtype must be float16 or float32")


@dataclass
class SubsetArgs(_Args):
    """K subsets, S subsets per document, seed; `designs` independent designs, each with its own
    operators, whose recovered scores are averaged (variance reduction at `designs` x the operator cost)."""

    K: int = 1000
    S: int = 10
    seed: int = 0
    designs: int = 1

    def __post_init__(self):
        _check(self.K >= 2, "K must be >= 2")
        _check(1 <= self.S <= self.K, "S must be in 1..K")
        _check(1 <= self.designs <= 16, "designs must be in 1..16")

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["designs"] == 1:  # runs indexed before `designs` existed keep matching their args.json
            d.pop("designs")
        return d


@dataclass
class OperatorArgs(_Args):
    """Steering operators: rank R, training schedule and the three loss weights (0 switches one off)."""

    R: int = 64  # tiny-lm LDS 0.072 / 0.177 / 0.218 / 0.242 / 0.234 at R 4 / 16 / 32 / 64 / 128 (BENCHMARKS.md)
    steps: int = 300
    lr: float = 3e-3
    weight_decay: float = 0.0  # decoupled (AdamW) decay of the basis and the steering matrices
    fidelity_weight: float = 1.0
    stability_weight: float = 1.0
    linearity_weight: float = 0.0
    temperature: float = 1.0  # fidelity/stability logits are divided by it: > 1 keeps gradients alive on well-fit documents
    tokens_per_subset: int = 16  # fidelity sample per subset per step
    stability_tokens: int = 16  # complement sample per subset per step
    subset_batch: int = 1000  # subsets per step (all of them when >= K)
    jl_dim: int = 64  # q: columns of the JL sketch of M for the linearity loss
    ridge_gamma: float = 1.0
    linearity_batch: int = 32  # token rows x whose full y_x (all K) enters the linearity loss
    n_reference: int = 32  # corpus documents whose mean y centres the measurements
    reference_tokens: int = 16  # sampled token positions per reference document
    seed: int = 0
    device: str = "auto"

    def __post_init__(self):
        _check(self.R >= 1, "R must be >= 1")
        _check(self.steps >= 0, "steps must be >= 0")
        _check(self.lr > 0, "lr must be > 0")
        _check(self.temperature > 0, "temperature must be > 0")
        for n in ("fidelity_weight", "stability_weight", "linearity_weight"):
            _check(getattr(self, n) >= 0, f"{n} must be >= 0")
        _check(self.fidelity_weight + self.stability_weight + self.linearity_weight > 0, "at least one loss weight must be > 0")
        _check(self.tokens_per_subset >= 1 and self.stability_tokens >= 0 and self.subset_batch >= 1, "sample sizes must be positive")
        _check(self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"), "device must be auto, cpu or cuda")


@dataclass
class AttributeArgs(_Args):
    """Attribution of prompts: continuation length, recovery (lambda rule) and output size."""

    top_k: int = 50
    max_new_tokens: int = 32
    alpha: float | str = "auto"
    alpha_ratio: float | None = None
    lambda_rule: str = "1se"  # how alpha="auto" picks lambda from validation: "1se" (sparsest within one SE) or "min"
    positive: bool = False
    center: bool = False  # subtract the reference documents' mean y; measured to lower LDS on both benchmarks
    # "specific": rank by y minus the generic component measured on reference queries (stride_core.generic);
    # "raw": by y as measured (documents that help every prompt alike then top every prompt)
    ranking: str = "specific"
    n_reference_queries: int = 64  # corpus documents used as reference queries for the generic component
    # greedy decoding of the continuation; a tiny model's plain greedy output loops ("the default, and the" x5),
    # and attributing a loop teaches nothing
    repetition_penalty: float = 1.3
    no_repeat_ngram_size: int = 3
    device: str = "auto"

    def __post_init__(self):
        _check(self.top_k >= 1, "top_k must be >= 1")
        _check(0 <= self.max_new_tokens <= 512, "max_new_tokens must be in 0..512")
        _check(self.lambda_rule in ("1se", "min"), "lambda_rule must be '1se' or 'min'")
        _check(self.ranking in ("specific", "raw"), "ranking must be 'specific' or 'raw'")
        _check(2 <= self.n_reference_queries <= 4096, "n_reference_queries must be in 2..4096")
        _check(1.0 <= self.repetition_penalty <= 10.0, "repetition_penalty must be in 1..10 (1 = off)")
        _check(0 <= self.no_repeat_ngram_size <= 32, "no_repeat_ngram_size must be in 0..32 (0 = off)")
        _check(self.alpha == "auto" or (isinstance(self.alpha, (int, float)) and self.alpha >= 0), "alpha must be 'auto' or >= 0")


PRESETS = {
    # ci: seconds on a CPU, for tests and the browser test.
    "ci": dict(cache=CacheArgs(max_tokens=64, batch_size=32), subsets=SubsetArgs(K=64, S=4),
               operators=OperatorArgs(R=8, steps=40, tokens_per_subset=8, stability_tokens=8, n_reference=16)),
    # default: S=5 measured at least as good as S=10 on tiny-lm at every R (BENCHMARKS.md); --designs 3 is the
    # accuracy option (x3 operator cost).
    "default": dict(cache=CacheArgs(), subsets=SubsetArgs(K=1000, S=5), operators=OperatorArgs(steps=400, subset_batch=250)),
}


def preset(name: str) -> dict:
    if name not in PRESETS:
        raise StrideError(f"unknown preset {name!r}: use one of {sorted(PRESETS)}")
    p = PRESETS[name]
    return {k: type(v).from_dict(v.to_dict()) for k, v in p.items()}
