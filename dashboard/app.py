"""STRIDE audit dashboard: the router. Start with `stride app` (which sets STRIDE_WORKSPACE).

Pages live in views/*.py; SQL in queries.py; plotly figures in figures.py. The dashboard only reads
the workspace: runs are background jobs (stride_core.runs.jobs) that write their own run folders.

The page folder is deliberately not called `pages/`: Streamlit treats a `pages/` folder next to the
main script as a v1 multipage app and then runs a page file directly (without this router, its layout
and sidebar) when a browser opens its URL first, e.g. http://host:8501/influence.
"""

from __future__ import annotations

import logging
from pathlib import Path

import streamlit as st

from dashboard import common
from stride_core.runs import jobs

logging.getLogger("dashboard").setLevel(logging.INFO)
HERE = Path(__file__).resolve().parent

st.set_page_config(page_title="STRIDE audit", page_icon=":material/manage_search:", layout="wide")

pages = {
    "Attribute": [
        st.Page(HERE / common.PAGE_SETUP, title="Setup", icon=":material/tune:", default=True),
        st.Page(HERE / common.PAGE_RUNS, title="Runs", icon=":material/monitoring:"),
    ],
    "Audit": [
        st.Page(HERE / common.PAGE_INFLUENCE, title="Influence explorer", icon=":material/manage_search:"),
        st.Page(HERE / common.PAGE_CONTAMINATION, title="Contamination", icon=":material/warning:"),
        st.Page(HERE / common.PAGE_SELECTION, title="Data selection", icon=":material/filter_alt:"),
    ],
}
nav = st.navigation(pages)

with common.guard("the sidebar"):
    active = [r for r in jobs.list_runs(common.workspace()) if r["state"] in jobs.ACTIVE_STATES]
    common.sidebar(active)

nav.run()
