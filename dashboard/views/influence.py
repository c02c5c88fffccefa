"""Influence explorer: for one prompt of a run, the training documents that helped or hurt the model's
continuation most, their text with shared n-grams highlighted, and documents recurring across prompts."""

from __future__ import annotations

import html

import streamlit as st

from dashboard import common, figures, queries
from dashboard.highlight import highlight_html
from stride_core.runs import jobs

ws = common.workspace()
root = str(ws.root)
st.title("Influence explorer")

SIGN_NOTE = ("**Scores are in loss units** (nats, like the model's cross-entropy on the prompt and its continuation, "
             "or the continuation alone with `--loss-on continuation`): the estimated change in that loss due to the document being in the training data. **Positive = "
             "helpful**: the document lowers the loss, i.e. pushed the model towards writing this continuation. "
             "**Negative = harmful**: it pushed the model away from it. Scores come from STRIDE's sparse (Lasso) "
             "recovery; only the top documents in each direction are stored.")

with common.guard("the Influence explorer"):
    runs = jobs.list_runs(ws)
    r = common.pick_run(runs, key="influence_run", require="attributions")
    if r is None:
        active = [x["run"] for x in runs if x["state"] in jobs.ACTIVE_STATES]
        if active:
            st.info(f"No run has finished its attribution yet; {', '.join(active)} "
                    f"{'is' if len(active) == 1 else 'are'} still running (see the Runs page).")
        elif runs:
            st.info("None of the runs in this workspace produced rankings (attributions.parquet). Start a run on "
                    "the Setup page; failed runs show their error on the Runs page.")
        else:
            st.info("No runs yet. Start one on the Setup page: this page then shows, for every prompt, the training "
                    "documents that most helped or hurt the model's continuation.")
        st.stop()

    path = str(queries.result_path(root, r["run"], "attributions"))
    version = queries.file_version(queries.result_path(root, r["run"], "attributions"))
    qdf = queries.run_queries(path, version)
    if qdf.empty:
        st.warning(f"The attributions file of run {r['run']} has no rows.")
        st.stop()
    meta = queries.attribution_meta_columns(path, version)

    qids = [str(q) for q in qdf["query_id"]]
    by_q = qdf.assign(query_id=qids).set_index("query_id")
    qid = st.selectbox("Prompt", qids, key="influence_query",
                       format_func=lambda q: f"{q} — {str(by_q.loc[q, 'prompt'])[:90]}")
    prompt = str(by_q.loc[qid, "prompt"])
    cont = by_q.loc[qid, "continuation"]
    cont = "" if cont is None or (isinstance(cont, float) and cont != cont) else str(cont)
    used = by_q.loc[qid, "prompt_used"] if "prompt_used" in by_q.columns else None
    cut = bool(by_q.loc[qid, "truncated"]) if "truncated" in by_q.columns else False
    if cut and isinstance(used, str) and used.strip() and prompt.endswith(used.strip()[-20:]):
        # the run scored only the end of a long prompt: grey out the part the model never saw
        tail = len(used.strip())
        shown = (f"<span style='color:#9e9e9e;text-decoration:line-through'>{html.escape(prompt[:-tail])}</span>"
                 f"<b>{html.escape(prompt[-tail:])}</b>")
    else:
        shown = f"<b>{html.escape(prompt)}</b>"
    common.html_block(f"{shown}<span style='color:#1565c0'>{html.escape(cont)}</span>", max_height=160)
    qloss = by_q.loc[qid, "query_loss"] if "query_loss" in by_q.columns else None
    given = bool(by_q.loc[qid, "continuation_given"]) if "continuation_given" in by_q.columns else False
    st.caption("Bold: the prompt. Blue: " + ("the completion you gave, scored as written (teacher forcing)"
                                              if given else "the model's own continuation") +
               " — the text whose loss STRIDE attributes."
               + (f" The model's loss on it: {float(qloss):.3f} nats." if qloss is not None and qloss == qloss else ""))
    if cut:
        st.warning("This prompt was longer than the run's `max_tokens` (an index setting, `stride index --max-tokens`), "
                   "so only its end (bold) was used; the struck-out part was not seen by the model.",
                   icon=":material/content_cut:")
    st.info(SIGN_NOTE, icon=":material/info:")

    rk = queries.rankings(path, qid, version)
    k_max = int(rk.groupby("direction").size().max()) if len(rk) else 1
    top = st.slider("Documents per direction", 1, max(2, k_max), min(10, k_max), key="influence_top") if k_max > 1 else 1
    helpful = rk[rk["direction"] == "helpful"].sort_values("rank").head(top)
    harmful = rk[rk["direction"] == "harmful"].sort_values("rank").head(top)
    hybrid = "hybrid_z" in rk.columns
    show_cols = ["rank", "doc_id", "score", *meta, *(["snippet"] if "snippet" in rk.columns else [])]
    col_cfg = {"score": st.column_config.NumberColumn("score", format="%+.4g", help="STRIDE's Δ loss; > 0 helpful, < 0 harmful"),
               "snippet": st.column_config.TextColumn("snippet", width="medium"),
               "lexical": st.column_config.NumberColumn("lexical", format="%.3f", help="TF-IDF cosine of the text and the document"),
               "hybrid_z": st.column_config.NumberColumn("STRIDE+lexical z", format="%+.2f",
                                                         help="z(STRIDE score) + z(lexical), over all documents: the helpful ranking")}

    c_help, c_harm = st.columns(2)
    with c_help:
        st.markdown("#### :green[:material/thumb_up:] Helpful")
        if hybrid:
            st.caption("Method stride+lexical (a hybrid): ranked by z(STRIDE score) + z(TF-IDF cosine); "
                       "`score` is STRIDE's own Δ loss (0 = the Lasso kept no effect), shown beside the hybrid.")
            helpful_cols = ["rank", "doc_id", "hybrid_z", "score", "lexical", *show_cols[3:]]
        else:
            st.caption("Including the document lowers this text's loss (score > 0).")
            helpful_cols = show_cols
        if helpful.empty:
            st.info("No helpful documents were recovered for this prompt (all recovered scores are ≤ 0).")
        else:
            st.dataframe(helpful[helpful_cols], hide_index=True, key="helpful_table", column_config=col_cfg)
    with c_harm:
        st.markdown("#### :red[:material/thumb_down:] Harmful")
        st.caption("Including the document raises this text's loss (score < 0).")
        if harmful.empty:
            st.info("No harmful documents were recovered for this prompt.")
        else:
            st.dataframe(harmful[show_cols], hide_index=True, key="harmful_table", column_config=col_cfg)

    # One view at a time: st.tabs builds every chart and table on each rerun and the browser draws them all (four
    # charts, two more tables); with all of them, the page's tables stayed grey for up to 52 s on a loaded machine.
    VIEWS = ["Chart", "Score distribution", "Across prompts", "Helps every prompt"]
    view = st.segmented_control("View", VIEWS, default=VIEWS[0], key="influence_view") or VIEWS[0]
    if view == "Chart":
        st.plotly_chart(figures.ranking_bars(rk, meta, top=top), key="ranking_chart")
    elif view == "Score distribution":
        st.plotly_chart(figures.score_histogram(rk, f"Scores of the stored documents for {qid}"), key="query_hist")
        scores = queries.all_scores(path, version)
        st.plotly_chart(figures.score_histogram(scores, f"All prompts of run {r['run']}"), key="run_hist")
    elif view == "Across prompts":
        st.caption("Documents that rank for many different prompts. A document that helps (or hurts) unrelated prompts "
                   "alike points at a generic effect (length, boilerplate, formatting) rather than prompt-specific "
                   "knowledge.")
        c1, c2 = st.columns(2)
        direction = c1.radio("Direction", ["helpful", "harmful"], horizontal=True, key="cross_direction")
        n_q = len(qids)
        min_q = c2.slider("Ranked for at least … prompts", 1, max(2, n_q), min(2, n_q), key="cross_min") if n_q > 1 else 1
        rec = queries.recurring_documents(path, direction, int(min_q), version)
        if rec.empty:
            st.info(f"No document is ranked {direction} for {min_q} or more prompts.")
        else:
            st.dataframe(rec, hide_index=True, key="recurring_table",
                         column_config={"mean_score": st.column_config.NumberColumn(format="%.4g"),
                                        "min_score": st.column_config.NumberColumn(format="%.4g"),
                                        "max_score": st.column_config.NumberColumn(format="%.4g"),
                                        "snippet": st.column_config.TextColumn(width="large")})
            scores = queries.all_scores(path, version)
            st.plotly_chart(figures.recurrence_heatmap(scores[scores["direction"] == direction],
                                                       [int(d) for d in rec["doc_id"].head(30)], qids),
                            key="recurrence_heatmap")
    else:  # Helps every prompt
        gpath = queries.result_path(root, r["run"], "generic")
        if not gpath.exists():
            st.info("This run was attributed with `--ranking raw` (or before generic components existed): its rankings "
                    "include the documents that help every prompt alike.")
        else:
            st.caption("The generic component: documents whose subsets lower the loss of almost any prompt (measured on "
                       "reference queries, seeded corpus documents continued like your prompts). Rankings above are what "
                       "is specific to each prompt, with this component removed; `stride attribute --ranking raw` keeps it in.")
            gdf = queries.generic_documents(str(gpath), queries.file_version(gpath))
            g_cols = [c for c in ["direction", "rank", "doc_id", "score", *meta, "snippet"] if c in gdf.columns]
            st.dataframe(gdf[g_cols], hide_index=True, key="generic_table", column_config=col_cfg)

    # ---------------------------------------------------------------------------- document viewer
    st.subheader("Document")
    shown = rk[rk.index.isin(helpful.index) | rk.index.isin(harmful.index)]
    if shown.empty:
        st.info("No document to show for this prompt.")
        st.stop()
    labels = {f"{row.direction}:{int(row.doc_id)}": row for row in shown.itertuples(index=False)}
    pick = st.selectbox(
        "Inspect", list(labels), key="influence_doc",
        format_func=lambda k: (f"{labels[k].direction} #{int(labels[k].rank)} · doc {int(labels[k].doc_id)}"
                               + "".join(f" · {getattr(labels[k], c)}" for c in meta[:2] if c.isidentifier())
                               + f" · score {float(labels[k].score):+.4g}"))
    row = labels[pick]
    n = st.select_slider("Highlight shared word n-grams of length", [1, 2, 3, 4, 5], value=3, key="influence_ngram",
                         help="Marks runs of n words that the document shares with the prompt + continuation "
                              "(n-grams made only of stopwords are ignored).")
    docs, why = queries.safe_documents(root, r.get("corpus"), [int(row.doc_id)])
    if docs is not None and len(docs):
        doc = docs.iloc[0].to_dict()
        text = str(doc.pop("text"))
    else:
        doc = {"doc_id": int(row.doc_id), **{c: getattr(row, c) for c in meta if c.isidentifier()}}
        text = str(getattr(row, "snippet", "") or "")
        st.warning(f"Showing the stored snippet only: {why or 'the document is not in the corpus'}.")
    marked, n_shared = highlight_html(text, prompt + " " + cont, n=int(n))
    c1, c2 = st.columns([1, 3])
    with c1:
        st.metric("Score", f"{float(row.score):+.4g}", help="Δ loss; > 0 helpful, < 0 harmful")
        st.metric("Shared n-grams", n_shared)
        for k, v in doc.items():
            if v is not None and str(v) not in ("nan", "None", "<NA>"):
                shown_v = str(v)[:80].replace("`", "'")
                st.caption(f"**{k}**: `{shown_v}`")
    with c2:
        common.html_block(marked, max_height=480)
    st.download_button("Download this prompt's rankings (CSV)", queries.to_csv_bytes(rk),
                       file_name=f"{r['run']}_{qid}_rankings.csv", mime="text/csv", key="dl_rankings")
