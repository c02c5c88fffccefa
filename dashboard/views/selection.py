"""Data selection: which training documents to keep or drop, from their influence on a set of target
prompts. Reads runs/<run>/selection.parquet when the selection audit has written it."""

from __future__ import annotations

import streamlit as st

from dashboard import common, figures, queries
from stride_core.runs import jobs

ws = common.workspace()
root = str(ws.root)
st.title("Data selection")
st.caption("Suggestions for curating the training corpus: the documents that help the target examples most are "
           "kept (up to the budget, near-duplicates skipped); documents whose net influence on the targets is "
           "negative are candidates to drop, each with the number of targets it hurts. The decision is a suggestion "
           "to review, not an automatic filter.")


def _why(row, n_targets) -> str:
    """A row's decision in words, from its measured counts (never 'consistently' when it is 1 of 3)."""
    of = f" of {n_targets}" if n_targets else ""
    helped, hurt = int(row.get("n_targets_helped") or 0), int(row.get("n_targets_hurt") or 0)
    if row.get("decision") == "duplicate":
        return f"near-duplicate of doc {row.get('duplicate_of')}"
    if row.get("decision") == "drop":
        return f"hurts {hurt}{of} target(s)" + (f", helps {helped}" if helped else "")
    if not row.get("score"):
        return "score 0: kept by matched_score"
    return f"helps {helped}{of} target(s)" + (f", hurts {hurt}" if hurt else "")

EXPLAIN = """The data-selection audit has not been run for **{run}** yet. When it has, this page shows every scored
document with its `score` and a `decision` (`keep` / `drop`), a histogram of scores by decision, and exports of
the keep and drop lists (doc_id CSV) for your training pipeline. Start it above (upload target examples and
a budget) or from a terminal: `stride audit select --run {run} --target target.jsonl --budget 500`. This
page picks the results up as soon as they exist."""

with common.guard("the Data selection page"):
    runs = jobs.list_runs(ws)
    if not runs:
        st.info("No runs yet. Start a run on the Setup page; data selection works on a finished run.")
        st.stop()
    r = common.pick_run(runs, key="selection_run", prefer="selection")
    p = queries.result_path(root, r["run"], "selection")
    common.audit_launcher(ws, r, "select", expanded=not p.exists())
    if p.exists():
        df = queries.result_table(str(p), queries.file_version(p))
        if df.empty:
            st.info("The selection file of this run has no rows.")
            st.stop()
        counts = df["decision"].value_counts() if "decision" in df.columns else {}
        args_path = p.with_name("selection_args.json")
        sargs = queries.read_json_file(str(args_path), queries.file_version(args_path))
        n_targets = sargs.get("n_targets")
        c1, c2, c3 = st.columns(3)
        c1.metric("Documents listed", len(df), help="Kept, dropped and near-duplicate documents; the others are neither.")
        c2.metric("Keep", int(counts.get("keep", 0)))
        c3.metric("Drop", int(counts.get("drop", 0)))
        if "score" in df.columns and "decision" in df.columns:
            keep = df[df["decision"] == "keep"]
            zero_kept = int((keep["score"] == 0).sum())
            if sargs.get("n_nonzero") is not None:
                lead = (f"**{int(sargs['n_nonzero']):,} of {int(sargs['n_docs']):,}** documents have a non-zero influence "
                        f"score on the {n_targets} target(s) ({int(sargs.get('n_positive', 0)):,} positive, "
                        f"{int(sargs.get('n_negative', 0)):,} negative): the sparse (Lasso) recovery leaves the rest at 0.")
            else:  # a report written before the audit recorded its counts
                lead = f"{int((df['score'] != 0).sum()):,} of the listed documents have a non-zero influence score."
            st.markdown(lead + " The keep-list is ordered by that score, then by `matched_score` (the dense "
                        "matched-filter statistic: how much the targets' loss drops in the subsets holding the document), "
                        "which orders the documents at score 0."
                        + (f" **{zero_kept} of the {len(keep)} kept documents have score 0** and were kept by "
                           f"`matched_score` alone." if zero_kept else ""))
        if {"n_targets_hurt", "decision"} <= set(df.columns):
            df = df.assign(why=[_why(r, n_targets) for r in df.to_dict("records")])
            drop = df[df["decision"] == "drop"]
            if len(drop) and n_targets:
                by_hurt = drop["n_targets_hurt"].value_counts().sort_index(ascending=False)
                st.markdown("Drop-list: " + ", ".join(f"{int(v)} document(s) hurt {int(k)} of {n_targets} target(s)"
                                                      for k, v in by_hurt.items()) + ".")
        if "score" in df.columns:
            st.plotly_chart(figures.selection_histogram(df), key="selection_hist")
        decisions = sorted(df["decision"].dropna().unique()) if "decision" in df.columns else []
        pick = st.multiselect("Show decisions", decisions, default=decisions, key="selection_filter") if decisions else []
        view = df[df["decision"].isin(pick)] if decisions else df
        if "score" in view.columns:
            view = view.sort_values("score")
        if "why" in view.columns:  # the words beside the decision, not off to the right of the metadata
            view = view[["doc_id", "decision", "why", *[c for c in view.columns if c not in ("doc_id", "decision", "why")]]]
        st.dataframe(view, hide_index=True, key="selection_table",
                     column_config={"why": st.column_config.TextColumn("why", width="medium",
                                                                       help="From the measured counts: of how many "
                                                                            "targets the document helps or hurts.")})
        c1, c2, c3 = st.columns(3)
        c1.download_button("Download all (CSV)", queries.to_csv_bytes(df), file_name=f"{r['run']}_selection.csv",
                           mime="text/csv", key="dl_selection")
        for col, decision in ((c2, "keep"), (c3, "drop")):
            ids = df[df.get("decision") == decision][["doc_id"]] if "decision" in df.columns else df.iloc[0:0]
            col.download_button(f"Download {decision} list (doc_id CSV)", queries.to_csv_bytes(ids),
                                file_name=f"{r['run']}_{decision}.csv", mime="text/csv", key=f"dl_{decision}",
                                disabled=ids.empty)
        st.stop()

    st.info(EXPLAIN.format(run=r["run"]))
    a = queries.result_path(root, r["run"], "attributions")
    if not a.exists():
        st.stop()
    st.subheader("Preview from this run's rankings")
    st.caption("Until the selection audit runs: each document's influence scores summed over all prompts of the run "
               "(only documents that made a top-k list count). Strongly negative totals are the first candidates "
               "the audit will examine.")
    v = queries.file_version(a)
    net = queries.net_influence(str(a), v)
    meta = queries.attribution_meta_columns(str(a), v)
    st.plotly_chart(figures.net_influence_bars(net, meta), key="net_bars")
    st.dataframe(net.head(200), hide_index=True, key="net_table",
                 column_config={"total_score": st.column_config.NumberColumn(format="%.4g")})
    st.download_button("Download the preview (CSV)", queries.to_csv_bytes(net), file_name=f"{r['run']}_net_influence.csv",
                       mime="text/csv", key="dl_net")
