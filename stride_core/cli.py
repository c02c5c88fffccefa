"""`stride` command line. Every subcommand takes --workspace (or STRIDE_WORKSPACE; default ./workspace).

Errors a user can cause print one line `error: ...` and exit with status 2; nothing is half-written.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from . import __version__
from .errors import StrideError

logger = logging.getLogger("stride_core.cli")


def _ws(args):
    from .workspace import Workspace, default_workspace

    return Workspace(args.workspace or default_workspace())


def _print_table(rows: list[dict], cols: list[str]):
    if not rows:
        print("(none)")
        return
    widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in cols}
    print("  ".join(c.ljust(widths[c]) for c in cols))
    for r in rows:
        print("  ".join(_fmt(r.get(c)).ljust(widths[c]) for c in cols))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    s = str(v)
    return s if len(s) <= 60 else s[:57] + "..."


# ---------------------------------------------------------------------------------------- corpus


def cmd_corpus_import(args):
    from .corpus import ImportOptions, import_corpus

    info = import_corpus(_ws(args), args.path, args.name,
                         ImportOptions(text_field=args.text_field, shard_size=args.shard_size, replace=args.replace,
                                       encoding=args.encoding))
    print(f"imported corpus {info['name']!r}: {info['n_docs']} documents in {info['n_shards']} shard(s), "
          f"{info['n_chars']} characters, {info['n_duplicates']} exact duplicates recorded, "
          f"metadata columns {info['metadata_columns']}")
    for field, col in info.get("renamed_columns", []):
        print(f"renamed field {field!r} -> column {col!r}")


def cmd_corpus_build_default(args):
    from .pydocs import build_default_corpus

    from tqdm.auto import tqdm

    with tqdm(total=100, desc="build corpus", unit="%", disable=args.no_progress, mininterval=0.5) as bar:
        def show(fraction, message=None):
            bar.update(max(0, round(100 * fraction) - bar.n))
            if message:
                bar.set_postfix_str(message, refresh=False)

        info = build_default_corpus(_ws(args), name=args.name, replace=args.replace, on_progress=show)
        show(1.0)
    print(f"corpus {info['name']!r}: {info['n_docs']} documents, {info['n_chars']} characters, "
          f"{info['n_shards']} shard(s) in {_ws(args).db_path}")


def cmd_corpus_list(args):
    from .corpus import list_corpora

    ws = _ws(args)
    _print_table(list_corpora(ws), ["name", "format", "n_docs", "n_chars", "n_shards", "n_duplicates", "source_path"])
    stale = ws.stale_staging()
    if stale:
        print(f"note: {len(stale)} staged import folder(s) ({sum(n for _, n in stale) / 1e6:.1f} MB) left by an interrupted "
              f"`stride corpus import`: {', '.join(d.name for d, _ in stale)}; the next `stride corpus import` removes them")


def cmd_corpus_show(args):
    from .corpus import corpus_info, load_documents

    ws = _ws(args)
    info = corpus_info(ws, args.name)
    print(json.dumps({k: (str(v) if k == "created_at" else v) for k, v in info.items()}, indent=1))
    df = load_documents(ws, args.name, limit=args.limit)
    rows = df.to_dict("records")
    for r in rows:
        r["text"] = " ".join(str(r["text"]).split())
    _print_table(rows, ["doc_id", "shard", "n_chars", *info["metadata_columns"][:3], "text"])


# ----------------------------------------------------------------------------------------- model


def cmd_model_train_tiny(args):
    from .models import resolve_device
    from .tiny_model import TinyModelArgs, train_tiny

    targs = TinyModelArgs.preset(args.preset)
    if args.max_docs is not None:
        targs = TinyModelArgs(**{**targs.__dict__, "max_docs": None if args.max_docs == 0 else args.max_docs})
    m = train_tiny(_ws(args), args.corpus, args.out, targs, progress=not args.no_progress, device=resolve_device(args.device))
    print(f"saved model to {args.out}: {m['n_params']} parameters, {m['train_tokens']} training tokens, "
          f"{m['seconds']:.0f}s")
    used = (f"all {m['n_used_docs']} documents" if m["n_used_docs"] == m["n_corpus_docs"] else
            f"the first {m['n_used_docs']} of {m['n_corpus_docs']} documents (preset {args.preset!r} caps it for speed; "
            f"--max-docs 0 or --preset default uses all)")
    print(f"trained on {used} of corpus {args.corpus!r}: {m['n_train_docs']} for training, {m['n_val_docs']} held out")
    print(f"validation loss {m['val_loss']:.3f} nats/token vs unigram baseline {m['unigram_val_loss']:.3f}")


def cmd_model_check(args):
    from .models import check_model_dir, ignored_model_files, load_model_and_tokenizer

    cfg = check_model_dir(args.path)
    model, tok = load_model_and_tokenizer(args.path)
    n = sum(p.numel() for p in model.parameters())
    print(f"ok: {cfg.get('model_type')} with {n} parameters, vocab {len(tok)} (embedding {model.get_input_embeddings().weight.shape[0]} rows), "
          f"{model.config.num_hidden_layers} layers, context {getattr(model.config, 'max_position_embeddings', None) or getattr(model.config, 'n_positions', None)}")
    for line in ignored_model_files(args.path):
        print(f"ignored: {line}")


# ------------------------------------------------------------------------------- index / attribute


def _config_from_args(args):
    from .pipeline import count_documents, make_config

    overrides = {}
    for stage, names in (("cache", ("layer", "max_tokens")), ("subsets", ("K", "S", "seed", "designs")),
                         ("operators", ("R", "steps", "lr", "fidelity_weight", "stability_weight", "linearity_weight", "temperature",
                                        "space", "linearity_form", "fidelity_sampling", "stability_excludes_members"))):
        for n in names:
            v = getattr(args, n, None)
            if v is not None:
                overrides[f"{stage}.{n}"] = v
    from .arguments import parse_int_list

    shards = parse_int_list(args.shards, "--shards") if getattr(args, "shards", None) is not None else None
    n_docs = count_documents(_ws(args), args.corpus, shards) if "subsets.K" not in overrides else None
    return make_config(args.corpus, args.model, args.preset, shards=shards, n_docs=n_docs, **overrides)


def _attr_args(args):
    from .arguments import AttributeArgs, parse_number_or_auto

    alpha = parse_number_or_auto(args.alpha, "--alpha")
    return AttributeArgs(top_k=args.top_k, max_new_tokens=args.max_new_tokens, alpha=alpha, positive=args.positive, device=args.device,
                         lambda_rule=args.lambda_rule, ranking=args.ranking, repetition_penalty=args.repetition_penalty,
                         no_repeat_ngram_size=args.no_repeat_ngram_size, loss_on=args.loss_on,
                         method=getattr(args, "method", "stride"))


def _prompts_from_args(args):
    """--prompts FILE, or one --prompt TEXT (with an optional --completion TEXT to attribute)."""
    from .errors import InputError

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


def _note_run(args, prompts=None):
    """Record the preset and the prompt count in the run's status (stride_core.progress.set_process_info):
    a run started from a terminal has no job.json, and the Runs page shows them from there."""
    from .progress import set_process_info

    n = None
    if prompts is not None:
        from .pipeline import read_prompts

        n = len(prompts) if isinstance(prompts, list) else len(read_prompts(prompts))
    set_process_info(preset=getattr(args, "preset", None), n_prompts=n)


def cmd_index(args):
    from .pipeline import index

    _note_run(args)
    rdir = index(_ws(args), args.run, _config_from_args(args), device=args.device, overwrite=args.overwrite, progress=not args.no_progress)
    print(f"indexed run {args.run!r} in {rdir}")


def _print_top(df, n=5):
    for qid, g in df[df["direction"] == "helpful"].groupby("query_id", sort=False):
        first = g.iloc[0]
        print(f"\n[{qid}] {first['prompt']!r} -> {first['continuation']!r}")
        for _, r in g.head(n).iterrows():
            src = r.get("source", "")
            print(f"  {int(r['rank']):>2}. doc {int(r['doc_id']):>6}  {r['score']:+.2e}  {src}  {r['snippet'][:70]!r}")


def cmd_attribute(args):
    from .pipeline import attribute

    attr_args = _attr_args(args)  # option errors first: they name the option, before the prompts file is read
    prompts = _prompts_from_args(args)
    _note_run(args, prompts)
    df = attribute(_ws(args), args.run, prompts, attr_args, out=args.out, progress=not args.no_progress)
    _print_top(df)
    unranked = df.attrs.get("unranked", [])
    print(f"\n{df.attrs.get('n_prompts', df['query_id'].nunique())} prompts, {len(df)} ranked rows"
          + (f" written to {args.out}" if args.out else "")
          + (f"; {len(unranked)} prompt(s) with no document of non-zero effect: {', '.join(unranked[:10])}" if unranked else ""))


def cmd_run(args):
    from .pipeline import run_all

    config, attr_args = _config_from_args(args), _attr_args(args)  # option errors first, as without the note below
    prompts = _prompts_from_args(args)
    _note_run(args, prompts)
    df = run_all(_ws(args), args.run, config, prompts, attr_args, device=args.device,
                 overwrite=args.overwrite, progress=not args.no_progress, out=args.out)
    _print_top(df, 3)


def _add_index_args(x):
    from .arguments import FIDELITY_SAMPLING, LINEARITY_FORMS, OPERATOR_SPACES

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
                   help="fidelity tokens: a uniform document then a token (document, default) or uniform over the subset's tokens")
    x.add_argument("--stability-excludes-members", dest="stability_excludes_members", action="store_const", const=True,
                   default=None, help="draw stability tokens only from documents outside the subset")


def _add_attr_args(x, with_device=True):
    from .arguments import LOSS_ON, METHODS

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
                   help="greedy decoding's repetition penalty (1 = off)")
    x.add_argument("--no-repeat-ngram", dest="no_repeat_ngram_size", type=int, default=3,
                   help="greedy decoding never repeats an n-gram of this length (0 = off)")
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


# ------------------------------------------------------------------------------------------ demo


def cmd_demo(args):
    from .demo import run_demo

    run_demo(_ws(args), preset=args.preset, device=args.device, progress=not args.no_progress)


# ------------------------------------------------------------------------------------------ main


class _Parser(argparse.ArgumentParser):
    """Usage errors (a missing option, `--K abc`) are one `error:` line with exit 2, like every other error."""

    def error(self, message):
        self.exit(2, f"error: {self.prog}: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument("--workspace", default=argparse.SUPPRESS, help="workspace folder (default: $STRIDE_WORKSPACE or ./workspace)")
    common.add_argument("--no-progress", action="store_true", default=argparse.SUPPRESS, help="hide progress bars")
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging and tracebacks")

    p = _Parser(prog="stride", description="STRIDE training-data attribution: corpora, models, runs, audits and the dashboard.")
    p.add_argument("--version", action="version", version=f"stride {__version__}")
    p.add_argument("--workspace", default=None, help="workspace folder (default: $STRIDE_WORKSPACE or ./workspace)")
    p.add_argument("--no-progress", action="store_true", default=False, help="hide progress bars")
    p.add_argument("-v", "--verbose", action="store_true", default=False, help="debug logging and tracebacks")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    # corpus
    pc = sub.add_parser("corpus", help="import, build, list and show corpora", parents=[common])
    sc = pc.add_subparsers(dest="corpus_command", metavar="ACTION", required=True)
    x = sc.add_parser("import", help="import JSONL / Parquet / CSV / a folder of .txt/.md files", parents=[common])
    x.add_argument("path")
    x.add_argument("--name", required=True)
    x.add_argument("--text-field", default="text", help="column holding the document text (default: text)")
    x.add_argument("--encoding", default="utf-8", help="text encoding of JSONL, CSV and text files (default: utf-8)")
    x.add_argument("--shard-size", type=int, default=1000, help="documents per shard (default: 1000)")
    x.add_argument("--replace", action="store_true", help="replace an existing corpus of the same name")
    x.set_defaults(func=cmd_corpus_import)
    x = sc.add_parser("build-default", help='build the embedded "pydocs" corpus from the stdlib docs', parents=[common])
    x.add_argument("--name", default="pydocs")
    x.add_argument("--replace", action="store_true")
    x.set_defaults(func=cmd_corpus_build_default)
    x = sc.add_parser("list", help="list corpora in the workspace", parents=[common])
    x.set_defaults(func=cmd_corpus_list)
    x = sc.add_parser("show", help="show a corpus summary and its first documents", parents=[common])
    x.add_argument("name")
    x.add_argument("--limit", type=int, default=10)
    x.set_defaults(func=cmd_corpus_show)

    # model
    pm = sub.add_parser("model", help="train the built-in tiny model, check a model folder", parents=[common])
    sm = pm.add_subparsers(dest="model_command", metavar="ACTION", required=True)
    x = sm.add_parser("train-tiny", help="train a BPE tokenizer + small GPT-2 on a corpus (HF format)", parents=[common])
    x.add_argument("--corpus", required=True)
    x.add_argument("--out", required=True)
    x.add_argument("--preset", choices=["ci", "default"], default="default")
    x.add_argument("--max-docs", dest="max_docs", type=int, default=None,
                   help="train on the first N documents only (0 = all; preset ci: 400, default: all)")
    x.add_argument("--device", default="auto", help="auto, cpu or cuda")
    x.set_defaults(func=cmd_model_train_tiny)
    x = sm.add_parser("check", help="validate and load a local Hugging Face causal-LM folder", parents=[common])
    x.add_argument("path")
    x.set_defaults(func=cmd_model_check)

    # demo
    x = sub.add_parser("demo", help="build the default corpus + model (and run STRIDE on the sample prompts)", parents=[common])
    x.add_argument("--preset", choices=["ci", "default"], default="default")
    x.add_argument("--device", default="auto")
    x.set_defaults(func=cmd_demo)

    x = sub.add_parser("index", help="cache activations and fit the steering operators for a run", parents=[common])
    _add_index_args(x)
    x.set_defaults(func=cmd_index)
    x = sub.add_parser("attribute", help="attribute prompts with an indexed run: ranked documents per prompt", parents=[common])
    x.add_argument("--run", required=True)
    _add_attr_args(x)
    x.set_defaults(func=cmd_attribute)
    x = sub.add_parser("run", help="index + attribute in one job (what the dashboard starts)", parents=[common])
    _add_index_args(x)
    _add_attr_args(x, with_device=False)
    x.set_defaults(func=cmd_run)

    for register in _extra_registrations():
        register(sub, common)
    return p


def _extra_registrations():
    """Subcommands that live in their own modules (pipeline, bench, audits, app)."""
    from . import cli_ext

    return cli_ext.REGISTRATIONS


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name, default in (("workspace", None), ("no_progress", False), ("verbose", False)):
        if not hasattr(args, name):
            setattr(args, name, default)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("httpx", "urllib3", "filelock", "transformers", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from .progress import clear_process_info

    try:
        args.func(args)
    except StrideError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # unexpected: one line unless --verbose
        if args.verbose:
            raise
        print(f"error: unexpected {type(exc).__name__}: {exc} (re-run with -v for a traceback)", file=sys.stderr)
        return 1
    finally:
        clear_process_info()  # main() called in-process (tests, scripts) must not tag later runs
    return 0


if __name__ == "__main__":
    sys.exit(main())
