"""Argument builders and helpers shared by `stride` (cli.commands), the audits' and benchmarks' commands and the
multi-process entry point (cli.torchrun): what an index / attribute command takes and how its options become an
IndexConfig and AttributeArgs."""

from __future__ import annotations


def ws_from_args(args):
    from ..store.workspace import workspace_at

    return workspace_at(args.workspace)


def print_table(rows: list[dict], cols: list[str]):
    if not rows:
        print("(none)")
        return
    widths = {c: max(len(c), *(len(fmt_cell(r.get(c))) for r in rows)) for c in cols}
    print("  ".join(c.ljust(widths[c]) for c in cols))
    for r in rows:
        print("  ".join(fmt_cell(r.get(c)).ljust(widths[c]) for c in cols))


def fmt_cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    s = str(v)
    return s if len(s) <= 60 else s[:57] + "..."


def config_from_args(args):
    from ..runs.config import count_documents, make_config

    overrides = {}
    for stage, names in (("cache", ("layer", "max_tokens")), ("subsets", ("K", "S", "seed", "designs")),
                         ("operators", ("R", "steps", "lr", "fidelity_weight", "stability_weight", "linearity_weight", "temperature",
                                        "space", "linearity_form", "fidelity_sampling", "stability_excludes_members"))):
        for n in names:
            v = getattr(args, n, None)
            if v is not None:
                overrides[f"{stage}.{n}"] = v
    from ..method.arguments import parse_int_list

    shards = parse_int_list(args.shards, "--shards") if getattr(args, "shards", None) is not None else None
    n_docs = count_documents(ws_from_args(args), args.corpus, shards) if "subsets.K" not in overrides else None
    return make_config(args.corpus, args.model, args.preset, shards=shards, n_docs=n_docs, **overrides)


def attribute_args_from(args):
    from ..method.arguments import AttributeArgs, parse_number_or_auto

    alpha = parse_number_or_auto(args.alpha, "--alpha")
    return AttributeArgs(top_k=args.top_k, max_new_tokens=args.max_new_tokens, alpha=alpha, positive=args.positive, device=args.device,
                         lambda_rule=args.lambda_rule, ranking=args.ranking, repetition_penalty=args.repetition_penalty,
                         no_repeat_ngram_size=args.no_repeat_ngram_size, contrast=args.contrast, loss_on=args.loss_on,
                         penalise_prompt=getattr(args, "penalise_prompt", False), method=getattr(args, "method", "stride"))


def prompts_from_args(args):
    """--prompts FILE, or one --prompt TEXT (with an optional --completion TEXT to attribute)."""
    from ..errors import InputError

    if (args.prompts is None) == (args.prompt is None):
        raise InputError("give either --prompts FILE or --prompt TEXT")
    if args.completion is not None and args.prompt is None:
        raise InputError("--completion goes with --prompt TEXT; in a prompts file use a 'completion' field (JSONL)")
    if args.prompt is not None:
        if not args.prompt.strip():
            raise InputError("--prompt is empty")
        if args.completion is not None and not args.completion.strip():
            raise InputError("--completion is empty: leave it out to attribute the model's own continuation")
        return [{"query_id": "q000", "prompt": args.prompt, **({"completion": args.completion} if args.completion is not None else {})}]
    return args.prompts


def print_top(df, n=5):
    from ..runs.attribution import summary_lines

    print("\n".join(summary_lines(df, n)))


def add_index_args(x):
    from ..method.arguments import FIDELITY_SAMPLING, LINEARITY_FORMS, OPERATOR_SPACES

    x.add_argument("--corpus", required=True, help="corpus name in the workspace")
    x.add_argument("--model", required=True, help="local Hugging Face causal-LM folder (safetensors)")
    x.add_argument("--run", required=True, help="run name (folder under workspace/runs)")
    x.add_argument("--preset", choices=["ci", "default"], default="default", help="argument preset; options below override it")
    x.add_argument("--device", default="auto", help="auto, cpu or cuda")
    x.add_argument("--shards", default=None, help="comma-separated shard numbers (default: all)")
    x.add_argument("--overwrite", action="store_true", help="replace a run of the same name with different arguments")
    x.add_argument("--layer", default=None, help="module name of the steered layer (default: the middle decoder block)")
    x.add_argument("--max-tokens", dest="max_tokens", type=int, default=None, help="tokens kept per document")
    x.add_argument("--K", type=int, default=None, help="number of subsets")
    x.add_argument("--S", type=int, default=None, help="subsets per document")
    x.add_argument("--seed", type=int, default=None)
    x.add_argument("--designs", type=int, default=None,
                   help="independent subset designs whose scores are averaged (default 1; cost x designs)")
    x.add_argument("--R", type=int, default=None, help="rank of the shared basis")
    x.add_argument("--steps", type=int, default=None, help="operator training steps")
    x.add_argument("--lr", type=float, default=None)
    x.add_argument("--fidelity-weight", dest="fidelity_weight", type=float, default=None)
    x.add_argument("--stability-weight", dest="stability_weight", type=float, default=None)
    x.add_argument("--linearity-weight", dest="linearity_weight", type=float, default=None)
    x.add_argument("--temperature", type=float, default=None)
    x.add_argument("--operator-space", dest="space", choices=list(OPERATOR_SPACES), default=None,
                   help="where a_k acts: the final normed hidden state (hidden, default; a_k is R x D) or the logits "
                        "(the paper's equation; a_k is R x V, so V/D times the operator memory)")
    x.add_argument("--linearity-form", dest="linearity_form", choices=list(LINEARITY_FORMS), default=None,
                   help="with --linearity-weight > 0: the centred, normalised residual or the paper's unnormalised one")
    x.add_argument("--fidelity-sampling", dest="fidelity_sampling", choices=list(FIDELITY_SAMPLING), default=None,
                   help="fidelity tokens: uniform over the subset's tokens (token, default) or a uniform document then a token")
    x.add_argument("--stability-excludes-members", dest="stability_excludes_members", action="store_const", const=True,
                   default=None, help="draw stability tokens only from documents outside the subset")


def add_attribute_args(x, with_device=True):
    from ..method.arguments import LOSS_ON, METHODS, AttributeArgs

    x.add_argument("--prompts", default=None, help=".txt (one prompt per line), .jsonl (field 'prompt' or 'text', optional "
                                                 "'completion') or .json (a list of objects)")
    x.add_argument("--prompt", default=None, help="one prompt given on the command line (instead of --prompts)")
    x.add_argument("--completion", default=None, help="with --prompt: the text to attribute (teacher forcing: why did the model "
                                                      "say this?) instead of the model's own greedy continuation")
    x.add_argument("--ranking", choices=["specific", "raw"], default="specific",
                   help="rank by what is specific to each prompt (default: the generic component, measured on reference "
                        "queries, is removed and reported apart in generic.parquet), or by the raw measurements")
    x.add_argument("--loss-on", dest="loss_on", choices=list(LOSS_ON), default="all",
                   help="whose loss the operators are measured on: the prompt and its continuation (all, default: the "
                        "whole text, so a prompt copied from a document traces to it) or only the continuation")
    x.add_argument("--method", choices=list(METHODS), default="stride",
                   help="stride (default): documents ranked by STRIDE's recovered influence; stride+lexical: a hybrid, helpful "
                        "documents ranked by z(STRIDE) + z(TF-IDF cosine with the text), STRIDE's own score kept beside it")
    x.add_argument("--repetition-penalty", dest="repetition_penalty", type=float, default=1.3,
                   help="greedy decoding's repetition penalty on the continuation's own tokens (1 = off)")
    x.add_argument("--penalise-prompt", dest="penalise_prompt", action="store_true",
                   help="apply the repetition penalty to the prompt's tokens too (transformers' rule; it steers the "
                        "continuation away from the prompt's topic words)")
    x.add_argument("--no-repeat-ngram", dest="no_repeat_ngram_size", type=int, default=3,
                   help="greedy decoding never repeats an n-gram of this length (0 = off)")
    x.add_argument("--contrast", type=float, default=AttributeArgs.contrast,
                   help="context-aware decoding: next tokens scored by (1 + c) log p(t | prompt, so far) - c log p(t | so far), "
                        "so the continuation follows the prompt rather than what the model says after any prompt (0 = plain greedy)")
    x.add_argument("--top-k", dest="top_k", type=int, default=50)
    x.add_argument("--max-new-tokens", dest="max_new_tokens", type=int, default=32, help="greedy continuation length")
    x.add_argument("--alpha", default="auto", help="Lasso lambda, or 'auto' (held-out subset validation)")
    x.add_argument("--lambda-rule", dest="lambda_rule", choices=["1se", "min"], default="1se",
                   help="with --alpha auto: the sparsest lambda within one standard error of the best held-out error "
                        "(1se, default) or the best one (min)")
    x.add_argument("--positive", action="store_true", help="non-negative Lasso (helpful documents only)")
    x.add_argument("--out", default=None, help="output file (.parquet, .jsonl or .csv)")
    if with_device:
        x.add_argument("--device", default="auto")
