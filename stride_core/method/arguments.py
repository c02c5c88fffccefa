"""One argument dataclass per stage, validated in __post_init__, JSON round-trip via to_dict/from_dict."""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, fields

from ..errors import StrideError


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

def check_int(value, name: str, lo: int, hi: int | None = None) -> None:
    """`value` is an integer (not a bool, not 2.5) in lo..hi; the message names the option."""
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= lo and (hi is None or value <= hi)
    if not ok:
        rng = f">= {lo}" if hi is None else f"in {lo}..{hi}"
        raise StrideError(f"{name} must be an integer {rng}, got {value!r}")


def check_float(value, name: str, lo: float = 0.0, hi: float | None = None, lo_open: bool = False) -> None:
    """`value` is a finite number >= lo (> lo when lo_open) and <= hi: inf and nan are refused, since
    they train to nan losses that would otherwise be saved as a finished index."""
    ok = (isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
          and (value > lo if lo_open else value >= lo) and (hi is None or value <= hi))
    if not ok:
        rng = (f"> {lo:g}" if lo_open else f">= {lo:g}") + ("" if hi is None else f" and <= {hi:g}")
        raise StrideError(f"{name} must be a finite number {rng}, got {value!r}")


@dataclass
class CacheArgs(_Args):
    """Activation cache: which layer, how many tokens per document, forward batch size, storage dtype."""

    layer: str | None = None  # module name; None = the middle decoder block
    max_tokens: int = 256
    batch_size: int = 16
    dtype: str = "float16"

    def __post_init__(self):
        check_int(self.max_tokens, "max_tokens", 2, 1_000_000)
        check_int(self.batch_size, "batch_size", 1, 1_000_000)
        _check(self.layer is None or (isinstance(self.layer, str) and self.layer.strip() != ""), "layer must be a module name")
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
        check_int(self.K, "K", 2, 10_000_000)
        check_int(self.S, "S", 1)
        _check(self.S <= self.K, f"S must be in 1..K (K={self.K}), got {self.S}")
        check_int(self.seed, "seed", 0, 2 ** 32 - 1)
        check_int(self.designs, "designs", 1, 16)

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["designs"] == 1:  # runs indexed before `designs` existed keep matching their args.json
            d.pop("designs")
        return d


OPERATOR_SPACES = ("hidden", "logits")  # OperatorArgs.space: where a_k acts
LINEARITY_FORMS = ("normalised", "paper")  # OperatorArgs.linearity_form
FIDELITY_SAMPLING = ("document", "token")  # OperatorArgs.fidelity_sampling


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
    # Paper-fidelity options (PAPER.md D2/D3/D5/D8; measured in BENCHMARKS.md, "Paper variants"):
    space: str = "hidden"  # where a_k acts: "hidden" (final normed hidden state, R x D) or "logits" (R x V, the page's equation)
    linearity_form: str = "normalised"  # "normalised" (centred, / ||y||^2) or "paper" (unnormalised, uncentred ridge residual)
    # "token": uniform over the subset's tokens (the paper's sum over an example's tokens; tiny-lm LDS 0.373 against
    # 0.307 for the product's preset, BENCHMARKS.md "Cost"); "document": a uniform document, then a token of it
    fidelity_sampling: str = "token"
    stability_excludes_members: bool = False  # stability tokens come from the complement of A_k only
    seed: int = 0
    device: str = "auto"

    def __post_init__(self):
        check_int(self.R, "R", 1, 100_000)
        _check(self.space in OPERATOR_SPACES, "space must be 'hidden' or 'logits'")
        _check(self.linearity_form in LINEARITY_FORMS, "linearity_form must be 'normalised' or 'paper'")
        _check(self.fidelity_sampling in FIDELITY_SAMPLING, "fidelity_sampling must be 'document' or 'token'")
        _check(isinstance(self.stability_excludes_members, bool), "stability_excludes_members must be true or false")
        check_int(self.steps, "steps", 1, 10_000_000)  # 0 steps would save untrained (all-zero) operators as an index
        check_float(self.lr, "lr", 0.0, lo_open=True)
        check_float(self.weight_decay, "weight_decay")
        check_float(self.temperature, "temperature", 0.0, lo_open=True)
        for n in ("fidelity_weight", "stability_weight", "linearity_weight"):
            check_float(getattr(self, n), n)
        _check(self.fidelity_weight + self.stability_weight + self.linearity_weight > 0, "at least one loss weight must be > 0")
        check_int(self.tokens_per_subset, "tokens_per_subset", 1)
        check_int(self.stability_tokens, "stability_tokens", 0)
        check_int(self.subset_batch, "subset_batch", 1)
        check_int(self.jl_dim, "jl_dim", 1)
        check_float(self.ridge_gamma, "ridge_gamma", 0.0, lo_open=True)
        check_int(self.linearity_batch, "linearity_batch", 1)
        check_int(self.n_reference, "n_reference", 1)
        check_int(self.reference_tokens, "reference_tokens", 1)
        check_int(self.seed, "seed", 0, 2 ** 32 - 1)
        _check(self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"), "device must be auto, cpu or cuda")


LOSS_ON = ("all", "continuation")  # AttributeArgs.loss_on: which tokens of a query are scored
METHODS = ("stride", "stride+lexical")  # AttributeArgs.method: how the helpful documents are ranked


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
    # "specific": rank by y minus the generic component measured on reference queries (stride_core.method.generic);
    # "raw": by y as measured (documents that help every prompt alike then top every prompt)
    ranking: str = "specific"
    n_reference_queries: int = 64  # corpus documents used as reference queries for the generic component
    # which tokens' loss is measured: "all" = the prompt and its continuation (the whole text, as a test
    # example's loss is), "continuation" = only what the model said. Measured (BENCHMARKS.md, tracing): scoring
    # only the continuation traced 0% of copied prompts to their source document, scoring all tokens 93-97%
    loss_on: str = "all"
    # greedy decoding of the continuation; a tiny model's plain greedy output loops ("the default, and the" x5),
    # and attributing a loop teaches nothing
    repetition_penalty: float = 1.3
    no_repeat_ngram_size: int = 3
    # transformers' repetition penalty also divides the prompt's tokens, so the topic words a prompt names ("JSON",
    # "csv") are the ones the continuation avoids; by default only the continuation's own tokens are penalised
    # (measured: TF-IDF specificity of the demo's continuations -0.002 with the prompt penalised, 0.075 without;
    # BENCHMARKS.md, "Continuations"). True = transformers' rule, as before 2026-12-06
    penalise_prompt: bool = False
    # context-aware decoding: (1 + contrast) log p(t | prompt, so far) - contrast log p(t | so far); 0 = plain
    # greedy. Favours what the prompt makes likelier over what the model says after any prompt
    contrast: float = 0.0
    # "stride": helpful and harmful documents by STRIDE's recovered influence; "stride+lexical" (a hybrid,
    # labelled as such): helpful documents by z(STRIDE) + z(TF-IDF cosine of the query text), per query over
    # the documents; harmful ones stay STRIDE's, and STRIDE's own score is kept in `score`
    method: str = "stride"
    device: str = "auto"

    def __post_init__(self):
        check_int(self.top_k, "top_k", 1, 1_000_000)
        _check(self.method in METHODS, f"method must be one of {', '.join(METHODS)}")
        check_int(self.max_new_tokens, "max_new_tokens", 0, 512)
        _check(self.lambda_rule in ("1se", "min"), "lambda_rule must be '1se' or 'min'")
        _check(self.ranking in ("specific", "raw"), "ranking must be 'specific' or 'raw'")
        _check(self.loss_on in LOSS_ON, "loss_on must be 'all' (prompt + continuation) or 'continuation'")
        check_int(self.n_reference_queries, "n_reference_queries", 2, 4096)
        check_float(self.repetition_penalty, "repetition_penalty (1 = off)", 1.0, 10.0)
        check_int(self.no_repeat_ngram_size, "no_repeat_ngram_size (0 = off)", 0, 32)
        _check(isinstance(self.penalise_prompt, bool), "penalise_prompt must be true or false")
        check_float(self.contrast, "contrast (0 = off)", 0.0, 10.0)
        if self.alpha != "auto":
            check_float(self.alpha, "alpha ('auto' or a number)")
        if self.alpha_ratio is not None:
            check_float(self.alpha_ratio, "alpha_ratio", 0.0, 1.0, lo_open=True)
        _check(self.device in ("auto", "cpu", "cuda") or str(self.device).startswith("cuda:"), "device must be auto, cpu or cuda")


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
