"""Shared page helpers: the workspace, error guard, formatting, run pickers."""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
from pathlib import Path

import streamlit as st

from stride_core.errors import InputError, StrideError
from stride_core.store.items import PASTE_MODES, parse_pasted
from stride_core.store.workspace import Workspace, default_workspace

logger = logging.getLogger("dashboard")

PAGE_SETUP = "views/setup.py"
PAGE_RUNS = "views/runs.py"
PAGE_INFLUENCE = "views/influence.py"
PAGE_CONTAMINATION = "views/contamination.py"
PAGE_SELECTION = "views/selection.py"


def workspace() -> Workspace:
    """The workspace the app serves: $STRIDE_WORKSPACE (set by `stride app`), else ./workspace."""
    return Workspace(default_workspace())


def ws_root() -> str:
    return str(workspace().root)


@contextlib.contextmanager
def guard(what: str = "this page"):
    """Turn errors into messages: a StrideError's text as st.error, anything else one line + server log."""
    try:
        yield
    except StrideError as exc:
        st.error(str(exc))
    except Exception as exc:  # noqa: BLE001 - the dashboard never shows a traceback
        logger.exception("unexpected error in %s", what)
        st.error(f"Unexpected error in {what}: {type(exc).__name__}: {exc}. The full traceback is in the "
                 "terminal running `stride app`.")


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    m, s = divmod(seconds, 60)
    if m < 60:
        return f"{m}m {s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h {m:02d}m"


def fmt_time(ts: float | None, short: bool = False) -> str:
    if not ts:
        return "–"
    return _dt.datetime.fromtimestamp(ts).strftime("%m-%d %H:%M" if short else "%Y-%m-%d %H:%M:%S")


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "–"
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


STATE_BADGES = {"queued": ("gray", "schedule"), "running": ("blue", "autorenew"), "done": ("green", "check_circle"),
                "failed": ("red", "error"), "cancelled": ("orange", "cancel"), "unknown": ("gray", "help")}


def state_label(state: str) -> str:
    """Plain-text state (tables, select boxes)."""
    return state


def state_badge(state: str) -> str:
    """Markdown badge of a run state (colour + Material icon; no emoji fonts needed)."""
    color, icon = STATE_BADGES.get(state, ("gray", "help"))
    return f":{color}-badge[:material/{icon}: {state}]"


def pick_run(runs: list[dict], key: str, label: str = "Run", require: str | None = None,
             prefer: str | None = None) -> dict | None:
    """Selectbox over runs (newest first); `require` keeps only runs having that result file, `prefer`
    pre-selects the newest run having it. Remembers the last choice across pages in
    session_state['selected_run']."""
    if require:
        runs = [r for r in runs if r["results"].get(require)]
    if not runs:
        return None
    names = [r["run"] for r in runs]
    wanted = st.session_state.get("selected_run")
    if wanted in names:
        index = names.index(wanted)
    else:
        index = next((i for i, r in enumerate(runs) if prefer and r["results"].get(prefer)), 0)
    by_name = {r["run"]: r for r in runs}
    if st.session_state.get(key) not in names:
        st.session_state.pop(key, None)  # the remembered run vanished or is filtered out here

    def remember():
        st.session_state["selected_run"] = st.session_state[key]

    choice = st.selectbox(label, names, index=index, key=key, on_change=remember,
                          format_func=lambda n: f"{n} — started {fmt_time(by_name[n]['started_at'])}")
    return by_name[choice]


def sidebar(active: list[dict]) -> None:
    ws = workspace()
    with st.sidebar:
        st.caption(f"Workspace: `{ws.root}`")
        for r in active:
            pct = int(round(100 * (r.get("progress") or 0)))
            st.caption(f"{state_badge(r['state'])} **{r['run']}** — {r.get('stage') or 'starting'} {pct}%")
        if active:
            st.page_link(PAGE_RUNS, label="Watch running jobs", icon=":material/monitoring:")


def html_block(html: str, max_height: int = 420) -> None:
    """Render already-escaped HTML in a scrollable box."""
    st.markdown(
        f"<div style='max-height:{max_height}px;overflow-y:auto;white-space:pre-wrap;font-family:monospace;"
        f"font-size:0.85rem;border:1px solid rgba(128,128,128,0.35);border-radius:0.4rem;padding:0.6rem'>{html}</div>",
        unsafe_allow_html=True,
    )


def app_dir() -> Path:
    return Path(__file__).resolve().parent


def audit_launcher(ws, run: dict, kind: str, expanded: bool) -> None:
    """Form that starts `stride audit contamination|select` on a finished run as a background job, and the
    live status of the latest audit job of that run (refreshed every 2 s while it runs)."""
    from stride_core.runs import jobs

    what = "benchmark items" if kind == "contamination" else "target examples"
    title = "Run a contamination audit" if kind == "contamination" else "Run a data-selection audit"
    with st.expander(title, expanded=expanded):
        if run.get("state") != "done" and not run["results"].get("attributions"):
            st.info("This run has not finished indexing yet; audits start on a finished run.")
            return
        up = st.file_uploader(f"File of {what}: .jsonl (fields item_id, text), .json (a list of such objects) "
                              f"or .txt (one per line)", type=["jsonl", "json", "txt"], key=f"{kind}_upload")
        field = st.text_input("Text field(s) of a .jsonl/.json file or pasted JSONL, comma-separated (empty: text, "
                              "else prompt)", key=f"{kind}_field", placeholder="e.g. question,answer")
        mode = st.radio("Pasted text is", list(PASTE_MODES), horizontal=True, key=f"{kind}_paste_mode",
                        format_func=lambda m: {"auto": "Auto-detect", "blank": "Separated by a blank line",
                                               "jsonl": "JSONL", "lines": "One per line"}[m],
                        help="Copied documents keep their single line breaks, so items are separated by a blank "
                             "line; JSONL (every line a JSON object with `text`) is recognised automatically.")
        pasted = st.text_area(f"…or paste {what}, separated by a blank line (or JSONL)", key=f"{kind}_paste", height=120)
        parsed = None
        if up is None and pasted.strip():
            # parsed here, before starting, so the count and the mode are visible (a paste of two documents is 2 items)
            try:
                used, items, parsed = parse_pasted(pasted, mode, "benchmark" if kind == "contamination" else "target",
                                                   field.strip() or None)
                how = PASTE_MODES[used] + (" (auto-detected)" if mode == "auto" else "")
                st.caption(f"**{len(items)} item(s)** parsed, {how}.")
            except StrideError as exc:
                st.error(f"Cannot read the pasted {what}: {exc}")
        elif up is not None and pasted.strip():
            st.caption("The uploaded file is used; the pasted text is ignored.")
        budget = st.number_input("Documents to keep (budget)", min_value=1, value=100, step=10, key=f"{kind}_budget") \
            if kind == "select" else None
        if st.button("Start the audit", key=f"{kind}_start", type="primary"):
            try:
                if up is not None:
                    text, name, fields = up.getvalue().decode("utf-8"), up.name, field.strip() or None
                elif parsed is not None:
                    text, name, fields = parsed, "items.jsonl", (field.strip() or None) if used == "jsonl" else None
                else:
                    raise InputError(f"upload a file of {what} or paste them first")
                jobs.start_audit_job(ws, run["run"], kind, text, budget=budget, filename=name, text_field=fields)
                st.success("Audit started; its progress shows below and the results appear on this page.")
            except UnicodeDecodeError:
                st.error("The uploaded file is not UTF-8 text.")
            except StrideError as exc:
                st.error(str(exc))

        def status_panel():
            info = jobs.audit_info(ws, run["run"])
            if not info or info.get("kind") not in (None, kind):
                return
            st.markdown(f"Latest audit: {state_badge(info['state'])} — {info.get('stage', '')} {info.get('message', '')}",
                        unsafe_allow_html=True)
            flag = f"{kind}_{run['run']}_was_running"
            if info["state"] in ("queued", "running"):
                st.session_state[flag] = True
                st.progress(float(info.get("progress") or 0.0))
            elif st.session_state.pop(flag, False):
                st.rerun(scope="app")  # the audit just ended: reload the page to show its results
            elif info["state"] == "failed":
                st.error(info.get("error") or "the audit failed")
                if info.get("log_tail"):
                    st.code(info["log_tail"][-1500:])

        info = jobs.audit_info(ws, run["run"])
        if info and info["state"] in ("queued", "running"):
            st.fragment(status_panel, run_every=2.0)()
        else:
            status_panel()
