"""`stride audit contamination|select`: the two audits over an indexed run."""

from __future__ import annotations

from .options import ws_from_args


def _z(value: str):
    from ..method.arguments import parse_number_or_auto

    return parse_number_or_auto(value, "--z-threshold")


def cmd_contamination(args):
    from ..audits.contamination import ContaminationArgs, audit_contamination

    cargs = ContaminationArgs(ngram=args.ngram, overlap_threshold=args.overlap_threshold, z_threshold=_z(args.z_threshold),
                              use_influence=not args.no_influence, influence_only_z=args.influence_only_z,
                              text_field=args.text_field, device=args.device)
    pairs, items = audit_contamination(ws_from_args(args), args.run, args.benchmark, cargs, out=args.out, progress=not args.no_progress)
    leaked = items[items["leaked"]]
    print(f"{len(leaked)} of {len(items)} items flagged as leaked; {int(pairs['leaked'].sum())} flagged (item, document) pairs")
    for _, r in leaked.head(20).iterrows():
        print(f"  {r['item_id']}: {r['n_flagged']} document(s) flagged, {r['n_copies']} textual copies, "
              f"max overlap {r['max_overlap']:.2f}, max influence z {r['max_influence_z']:.1f}, top doc {r['top_doc_id']}")
    if args.out:
        print(f"wrote {args.out} and its _items sibling")


def cmd_select(args):
    from ..audits.selection import SelectionArgs, audit_select

    sargs = SelectionArgs(budget=args.budget, score=args.score, dedup_threshold=args.dedup_threshold,
                          text_field=args.text_field, lambda_rule=args.lambda_rule, device=args.device)
    df = audit_select(ws_from_args(args), args.run, args.target, sargs, out=args.out, progress=not args.no_progress)
    counts = df["decision"].value_counts().to_dict()
    print(f"keep {counts.get('keep', 0)} documents, drop {counts.get('drop', 0)} (net harmful on the target), "
          f"{counts.get('duplicate', 0)} near-duplicates skipped")
    if args.out:
        print(f"wrote {args.out}")


def register(subparsers, common_parent):
    pa = subparsers.add_parser("audit", help="contamination flags and data-selection suggestions over an indexed run",
                               parents=[common_parent])
    sa = pa.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    x = sa.add_parser("contamination", parents=[common_parent],
                      help="flag training documents that leak benchmark items (n-gram overlap + STRIDE influence)")
    x.add_argument("--run", required=True)
    x.add_argument("--benchmark", required=True,
                   help="JSONL with item_id and text, JSON (a list of such objects) or .txt (one item per line)")
    x.add_argument("--text-field", default=None,
                   help="field(s) holding an item's text, comma-separated, e.g. question,answer (default: text, else prompt)")
    x.add_argument("--out", default=None, help="flagged pairs as .parquet/.jsonl/.csv; per-item summary goes to <stem>_items<ext>")
    x.add_argument("--ngram", type=int, default=8, help="words per n-gram for the overlap score (default 8)")
    x.add_argument("--overlap-threshold", type=float, default=0.5, help="overlap that flags a pair alone (default 0.5)")
    x.add_argument("--z-threshold", default="auto", help="influence z that flags a pair alone (default auto: Bonferroni over N)")
    x.add_argument("--influence-only-z", type=float, default=float("inf"),
                   help="influence z that flags a document sharing no n-gram with the item (default: never)")
    x.add_argument("--no-influence", action="store_true", help="overlap only: do not load the model")
    x.add_argument("--device", default="auto", help="auto, cpu or cuda")
    x.set_defaults(func=cmd_contamination)
    x = sa.add_parser("select", parents=[common_parent],
                      help="keep-list of the documents most helpful to a target set, and a drop-list of harmful ones")
    x.add_argument("--run", required=True)
    x.add_argument("--target", required=True,
                   help="JSONL or JSON with text (or .txt, one example per line): the task to improve")
    x.add_argument("--text-field", default=None,
                   help="field(s) holding an example's text, comma-separated (default: text, else prompt)")
    x.add_argument("--budget", type=int, required=True, help="documents to keep")
    x.add_argument("--out", default=None, help=".parquet/.jsonl/.csv")
    x.add_argument("--score", choices=["lasso", "matched"], default="lasso",
                   help="ordering: sparse influence then matched score (lasso, default) or the dense matched score")
    x.add_argument("--dedup-threshold", type=float, default=0.8, help="near-duplicate Jaccard threshold (default 0.8)")
    x.add_argument("--lambda-rule", choices=["1se", "min"], default="1se",
                   help="Lasso lambda per target: one standard error (1se, default) or lowest held-out error (min)")
    x.add_argument("--device", default="auto", help="auto, cpu or cuda")
    x.set_defaults(func=cmd_select)
