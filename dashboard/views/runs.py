"""Runs: live progress of running jobs (cancel), the run history, and the details of one run."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from dashboard import common
from stride_core.runs import jobs

REFRESH_S = 2.0

ws = common.workspace()
st.title("Runs")


def _metric_cols(metrics: dict) -> None:
    items = list(metrics.items())[:8]
    if not items:
        return
    cols = st.columns(len(items))
    for col, (k, v) in zip(cols, items):
        col.metric(k, f"{v:.4g}" if isinstance(v, (int, float)) else str(v))


def _live_card(r: dict) -> None:
    with st.container(border=True):
        head, btn = st.columns([5, 1])
        head.markdown(f"**{r['run']}** {common.state_badge(r['state'])} · corpus `{r.get('corpus') or '?'}` · "
                      f"preset `{r.get('preset') or '?'}` · {r.get('n_prompts') or '?'} prompt(s)")
        if btn.button("Cancel", key=f"cancel_{r['run']}", help="Stop the job (kills its process group)."):
            with common.guard("cancelling the job"):
                jobs.cancel_job(ws, r["run"])
                st.toast(f"Cancelled {r['run']}")
                st.rerun()
        pct = float(r.get("progress") or 0.0)
        stage = r.get("stage") or "starting"
        st.progress(min(max(pct, 0.0), 1.0), text=f"stage **{stage}** — {pct:.0%}" + (f" · {r['message']}" if r.get("message") else ""))
        c1, c2, c3 = st.columns(3)
        c1.metric("Elapsed", common.fmt_duration(r.get("total_s", r.get("elapsed_s"))))
        c2.metric("In this stage", common.fmt_duration(r.get("stage_elapsed_s")))
        c3.metric("Stage ETA", common.fmt_duration(r.get("eta_s")),
                  help="Extrapolated from the current stage's progress; later stages are not included.")
        _metric_cols(r.get("metrics") or {})


def live_section(names: list[str]) -> None:
    current = []
    for name in names:
        try:
            current.append(jobs.run_info(ws, name))
        except Exception:  # noqa: BLE001 - the folder vanished
            continue
    still = [r for r in current if r["state"] in jobs.ACTIVE_STATES]
    if len(still) < len(names):
        st.rerun()  # a job finished: refresh the whole page (history, sidebar)
    st.subheader("Running now")
    for r in still:
        _live_card(r)
    st.caption(f"Refreshes every {REFRESH_S:.0f} s.")


with common.guard("the Runs page"):
    runs = jobs.list_runs(ws)
    if not runs:
        st.info("No runs yet. Start one on the **Setup** page (or launch the dashboard with `stride app`, which "
                "starts a demo run on the sample prompts in a fresh workspace).")
        st.page_link(common.PAGE_SETUP, label="Go to Setup", icon=":material/tune:")
        st.stop()

    active = [r["run"] for r in runs if r["state"] in jobs.ACTIVE_STATES]
    if active:
        st.fragment(live_section, run_every=REFRESH_S)(active)

    st.subheader("History")
    # Nine columns that fit a laptop-wide page (the live card above has the stage and progress bar, the
    # details below the device and provenance); results right after the state, so they are never cut off.
    table = pd.DataFrame([{
        "run": r["run"],
        "state": common.state_label(r["state"]) + (f" · {r['stage']}" if r.get("stage") and r["state"] != "done" else ""),
        "results": ", ".join(k for k, v in r["results"].items() if v) or "–",
        "corpus": r.get("corpus"),
        "model": Path(str(r["model"])).name if r.get("model") else None,
        "preset": r.get("preset"),
        "prompts": r.get("n_prompts"),
        "duration": common.fmt_duration(r.get("total_s", r.get("elapsed_s"))),
        "started": common.fmt_time(r.get("started_at"), short=True),
    } for r in runs])
    st.dataframe(table, hide_index=True, key="history", width="stretch",
                 column_config={"results": st.column_config.TextColumn("results", width="medium",
                                                                       help="Result files the run has written."),
                                "duration": st.column_config.TextColumn("duration", width="small",
                                                                        help="Total working time: index + attribute, "
                                                                             "also when run by separate commands."),
                                "prompts": st.column_config.NumberColumn("prompts", width="small"),
                                "preset": st.column_config.TextColumn("preset", width="small")})

    st.subheader("Details")
    r = common.pick_run(runs, key="runs_pick")
    if r["state"] == "failed":
        st.error(f"Run **{r['run']}** failed" + (f" in stage `{r['stage']}`" if r.get("stage") else "") + ":")
        st.code(r.get("error") or "no error message was recorded", language="text")
    elif r["state"] == "cancelled":
        st.warning(f"Run **{r['run']}** was cancelled" + (f" during stage `{r['stage']}`." if r.get("stage") else "."))
    elif r["state"] == "done":
        phases = r.get("phases") or {}
        parts = ", ".join(f"{p} {common.fmt_duration(phases[p])}" for p in ("prepare", "index", "attribute") if p in phases)
        st.success(f"Run **{r['run']}** finished in {common.fmt_duration(r.get('total_s', r.get('elapsed_s')))}"
                   + (f" ({parts})" if len(phases) > 1 else "") + ".")
        if r["results"].get("attributions") and st.button("Open in the Influence explorer", key="open_influence"):
            st.session_state["selected_run"] = r["run"]
            st.switch_page(common.PAGE_INFLUENCE)
    elif r["state"] in jobs.ACTIVE_STATES:
        st.info(f"Run **{r['run']}** is {r['state']} (stage {r.get('stage') or '–'}, {float(r.get('progress') or 0):.0%}).")
    else:
        st.info(f"Run **{r['run']}** has no status file; it may have been started by another tool.")

    for w in r.get("pairing_warnings") or []:
        st.warning(f"Model and corpus do not match: {w}.", icon=":material/link_off:")

    c1, c2 = st.columns(2)
    with c1.expander("Arguments", expanded=False):
        st.json(r.get("args") or {k: v for k, v in (r.get("job") or {}).items() if k != "command"} or {})
    with c2.expander("Provenance", expanded=False):
        if r.get("provenance"):
            st.json(r["provenance"])
        else:
            st.caption("No provenance.json yet (the engine writes it when the run starts).")
    with st.expander("Job log (last lines)", expanded=r["state"] == "failed" and "job.log" not in (r.get("error") or "")):
        tail = jobs.log_tail(Path(r["run_dir"]), n_lines=60)
        st.code(tail or "(no job.log: the run was not started from the dashboard)", language="text")
    st.caption(f"Run folder: `{r['run_dir']}`")
