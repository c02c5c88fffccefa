"""`stride` command line. Every subcommand takes --workspace (or STRIDE_WORKSPACE; default ./workspace).

Errors a user can cause print one line `error: ...` and exit with status 2; nothing is half-written.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from .. import __version__
from ..errors import StrideError
from .options import (add_attribute_args, add_index_args, attribute_args_from, config_from_args, print_table,
                      print_top, prompts_from_args, ws_from_args)

logger = logging.getLogger("stride_core.cli")


# ---------------------------------------------------------------------------------------- corpus


def cmd_corpus_import(args):
    from ..store.corpus import ImportOptions, import_corpus

    info = import_corpus(ws_from_args(args), args.path, args.name,
                         ImportOptions(text_field=args.text_field, shard_size=args.shard_size, replace=args.replace,
                                       encoding=args.encoding))
    print(f"imported corpus {info['name']!r}: {info['n_docs']} documents in {info['n_shards']} shard(s), "
          f"{info['n_chars']} characters, {info['n_duplicates']} exact duplicates recorded, "
          f"metadata columns {info['metadata_columns']}")
    for field, col in info.get("renamed_columns", []):
        print(f"renamed field {field!r} -> column {col!r}")


def cmd_corpus_build_default(args):
    from ..store.pydocs import build_default_corpus

    from tqdm.auto import tqdm

    with tqdm(total=100, desc="build corpus", unit="%", disable=args.no_progress, mininterval=0.5) as bar:
        def show(fraction, message=None):
            bar.update(max(0, round(100 * fraction) - bar.n))
            if message:
                bar.set_postfix_str(message, refresh=False)

        info = build_default_corpus(ws_from_args(args), name=args.name, replace=args.replace, on_progress=show)
        show(1.0)
    print(f"corpus {info['name']!r}: {info['n_docs']} documents, {info['n_chars']} characters, "
          f"{info['n_shards']} shard(s) in {ws_from_args(args).db_path}")


def cmd_corpus_list(args):
    from ..store.corpus import list_corpora

    ws = ws_from_args(args)
    print_table(list_corpora(ws), ["name", "format", "n_docs", "n_chars", "n_shards", "n_duplicates", "source_path"])
    stale = ws.stale_staging()
    if stale:
        print(f"note: {len(stale)} staged import folder(s) ({sum(n for _, n in stale) / 1e6:.1f} MB) left by an interrupted "
              f"`stride corpus import`: {', '.join(d.name for d, _ in stale)}; the next `stride corpus import` removes them")


def cmd_corpus_show(args):
    from ..store.corpus import corpus_info, load_documents

    ws = ws_from_args(args)
    info = corpus_info(ws, args.name)
    print(json.dumps({k: (str(v) if k == "created_at" else v) for k, v in info.items()}, indent=1))
    df = load_documents(ws, args.name, limit=args.limit)
    rows = df.to_dict("records")
    for r in rows:
        r["text"] = " ".join(str(r["text"]).split())
    print_table(rows, ["doc_id", "shard", "n_chars", *info["metadata_columns"][:3], "text"])


# ----------------------------------------------------------------------------------------- model


def cmd_model_train_tiny(args):
    from ..store.models import resolve_device
    from ..store.tiny_model import TinyModelArgs, train_tiny

    targs = TinyModelArgs.preset(args.preset)
    if args.max_docs is not None:
        targs = TinyModelArgs(**{**targs.__dict__, "max_docs": None if args.max_docs == 0 else args.max_docs})
    m = train_tiny(ws_from_args(args), args.corpus, args.out, targs, progress=not args.no_progress, device=resolve_device(args.device))
    print(f"saved model to {args.out}: {targs.family}, {m['n_params']} parameters, {m['train_tokens']} training tokens, "
          f"{m['seconds']:.0f}s")
    used = (f"all {m['n_used_docs']} documents" if m["n_used_docs"] == m["n_corpus_docs"] else
            f"the first {m['n_used_docs']} of {m['n_corpus_docs']} documents (preset {args.preset!r} caps it for speed; "
            f"--max-docs 0 or --preset default uses all)")
    print(f"trained on {used} of corpus {args.corpus!r}: {m['n_train_docs']} for training, {m['n_val_docs']} held out")
    print(f"validation loss {m['val_loss']:.3f} nats/token vs unigram baseline {m['unigram_val_loss']:.3f}")


def cmd_model_check(args):
    from ..store.models import check_model_dir, ignored_model_files, load_model_and_tokenizer

    cfg = check_model_dir(args.path)
    model, tok = load_model_and_tokenizer(args.path)
    n = sum(p.numel() for p in model.parameters())
    print(f"ok: {cfg.get('model_type')} with {n} parameters, vocab {len(tok)} (embedding {model.get_input_embeddings().weight.shape[0]} rows), "
          f"{model.config.num_hidden_layers} layers, context {getattr(model.config, 'max_position_embeddings', None) or getattr(model.config, 'n_positions', None)}")
    for line in ignored_model_files(args.path):
        print(f"ignored: {line}")


# ------------------------------------------------------------------------------- index / attribute


def _note_run(args, prompts=None):
    """Record the preset and the prompt count in the run's status (stride_core.runs.progress.set_process_info):
    a run started from a terminal has no job.json, and the Runs page shows them from there."""
    from ..runs.progress import set_process_info

    n = None
    if prompts is not None:
        from ..runs.prompts import read_prompts

        n = len(prompts) if isinstance(prompts, list) else len(read_prompts(prompts))
    set_process_info(preset=getattr(args, "preset", None), n_prompts=n)


def cmd_index(args):
    from ..runs.indexing import index

    _note_run(args)
    rdir = index(ws_from_args(args), args.run, config_from_args(args), device=args.device, overwrite=args.overwrite, progress=not args.no_progress)
    print(f"indexed run {args.run!r} in {rdir}")


def cmd_attribute(args):
    from ..runs.attribution import attribute

    attr_args = attribute_args_from(args)  # option errors first: they name the option, before the prompts file is read
    prompts = prompts_from_args(args)
    _note_run(args, prompts)
    df = attribute(ws_from_args(args), args.run, prompts, attr_args, out=args.out, progress=not args.no_progress)
    print_top(df)
    unranked = df.attrs.get("unranked", [])
    print(f"\n{df.attrs.get('n_prompts', df['query_id'].nunique())} prompts, {len(df)} ranked rows"
          + (f" written to {args.out}" if args.out else "")
          + (f"; {len(unranked)} prompt(s) with no helpful document (the Lasso kept none with a positive effect): {', '.join(unranked[:10])}" if unranked else ""))


def cmd_run(args):
    from ..runs.attribution import run_all

    config, attr_args = config_from_args(args), attribute_args_from(args)  # option errors first, as without the note below
    prompts = prompts_from_args(args)
    _note_run(args, prompts)
    df = run_all(ws_from_args(args), args.run, config, prompts, attr_args, device=args.device,
                 overwrite=args.overwrite, progress=not args.no_progress, out=args.out)
    print_top(df, 3)


# ------------------------------------------------------------------------------------------ demo


def cmd_demo(args):
    from ..runs.demo import run_demo

    run_demo(ws_from_args(args), preset=args.preset, device=args.device, progress=not args.no_progress)


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
    x = sm.add_parser("train-tiny", help="train a BPE tokenizer + small causal LM (default: Llama, ci: GPT-2) on a corpus (HF format)", parents=[common])
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
    add_index_args(x)
    x.set_defaults(func=cmd_index)
    x = sub.add_parser("attribute", help="attribute prompts with an indexed run: ranked documents per prompt", parents=[common])
    x.add_argument("--run", required=True)
    add_attribute_args(x)
    x.set_defaults(func=cmd_attribute)
    x = sub.add_parser("run", help="index + attribute in one job (what the dashboard starts)", parents=[common])
    add_index_args(x)
    add_attribute_args(x, with_device=False)
    x.set_defaults(func=cmd_run)

    from . import app, audit
    from .registry import register_commands

    app.register(sub, common)  # `stride app`: the dashboard
    audit.register(sub, common)  # `stride audit contamination|select`
    register_commands(sub, common)  # entry points, e.g. `stride bench ...`
    return p


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
    from ..runs.progress import clear_process_info

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
