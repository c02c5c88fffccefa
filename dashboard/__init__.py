"""STRIDE audit dashboard (Streamlit). Start it with `stride app`; `app.py` is the router."""
