"""Contamination audit: which evaluation items look leaked into the training corpus (text overlap and
influence together). Reads runs/<run>/contamination.parquet when the audit has written it."""

from __future__ import annotations

import html

import streamlit as st

from dashboard import common, figures, queries
from stride_core.runs import jobs

ws = common.workspace()
root = str(ws.root)
st.title("Contamination audit")
st.caption("Were evaluation items (benchmark questions, test prompts) present in the training data? For each item "
           "the audit pairs it with training documents that **share long n-grams** with it (`overlap_score`) and/or "
           "**influence** the model on it more than their lexical similarity explains (`influence_z`, from STRIDE). "
           "`combined_score` = overlap / overlap threshold + z / z threshold; a pair at 1 or above that shares "
           "some n-grams with the item is flagged.")

EXPLAIN = """The contamination audit has not been run for **{run}** yet. When it has, this page shows:

- one row per (evaluation item, training document) pair with `overlap_score` (n-gram overlap with the item),
  `influence_score` (STRIDE score of the document for the item, loss units), their `combined_score`, the
  matching text as `evidence`, and a `leaked` flag;
- a scatter plot of overlap against influence, the flagged items, and a CSV export.

Start it above (upload a benchmark file) or from a terminal:
`stride audit contamination --run {run} --benchmark items.jsonl`. This page picks the results up as soon as
they exist."""

with common.guard("the Contamination page"):
    runs = jobs.list_runs(ws)
    if not runs:
        st.info("No runs yet. Start a run on the Setup page; the contamination audit works on a finished run.")
        st.stop()
    having = [r["run"] for r in runs if r["results"].get("contamination")]
    r = common.pick_run(runs, key="contamination_run", prefer="contamination")
    p = queries.result_path(root, r["run"], "contamination")
    common.audit_launcher(ws, r, "contamination", expanded=not p.exists())
    if not p.exists():
        st.info(EXPLAIN.format(run=r["run"]))
        if having:
            st.caption("Runs with a contamination report: " + ", ".join(having))
        st.stop()

    df = queries.result_table(str(p), queries.file_version(p))
    if df.empty:
        st.success("The contamination audit found no candidate pairs for this run.")
        st.stop()
    leaked = df[df["leaked"].fillna(False).astype(bool)] if "leaked" in df.columns else df.iloc[0:0]
    items_path = p.with_name("contamination_items.parquet")
    if items_path.exists():
        items = queries.result_table(str(items_path), queries.file_version(items_path))
        st.subheader("Items")
        st.caption("One row per benchmark item: `leaked` when at least one document is flagged for it; `n_copies` counts "
                   "documents holding the item's text (overlap above the threshold); `item_loss` is the model's loss on "
                   "the item (memorised items have a low loss).")
        st.dataframe(items, hide_index=True, key="contamination_items")
        st.subheader("Flagged and candidate pairs")
    c1, c2, c3 = st.columns(3)
    c1.metric("Items checked", int(df["item_id"].nunique()) if "item_id" in df.columns else len(df))
    c2.metric("Candidate pairs", len(df))
    c3.metric("Items flagged as leaked", int(leaked["item_id"].nunique()) if "item_id" in leaked.columns else len(leaked))

    only = st.toggle("Only flagged pairs", value=False, key="contam_only_leaked")
    view = leaked if only else df
    sort_col = next((c for c in ("combined_score", "influence_score", "overlap_score") if c in view.columns), None)
    if sort_col:
        view = view.sort_values(sort_col, ascending=False)
    st.dataframe(view, hide_index=True, key="contamination_table",
                 column_config={"evidence": st.column_config.TextColumn(width="large")})
    if {"overlap_score", "influence_score"} <= set(df.columns):
        st.plotly_chart(figures.contamination_scatter(df), key="contamination_scatter")
    if "evidence" in view.columns and len(view):
        # The options are the pair labels themselves (not row positions): a position kept across a run switch or
        # a new report would show the old pair's label over another pair's text.
        head = view.head(200)
        labels = {}
        for pos in range(len(head)):
            name = " · ".join(f"{c} {head.iloc[pos][c]}" for c in ("item_id", "doc_id") if c in head.columns) or f"row {pos + 1}"
            labels.setdefault(name if name not in labels else f"{name} ({pos + 1})", pos)
        pair = st.selectbox("Evidence of pair", list(labels), key=f"contam_pair_{r['run']}")
        common.html_block(html.escape(str(head.iloc[labels[pair]]["evidence"])), max_height=240)
    c1, c2 = st.columns(2)
    c1.download_button("Download all pairs (CSV)", queries.to_csv_bytes(df), file_name=f"{r['run']}_contamination.csv",
                       mime="text/csv", key="dl_contamination")
    c2.download_button("Download flagged pairs (CSV)", queries.to_csv_bytes(leaked),
                       file_name=f"{r['run']}_contamination_flagged.csv", mime="text/csv", key="dl_contamination_flagged",
                       disabled=leaked.empty)
