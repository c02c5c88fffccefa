"""Plotly figures of the dashboard. Functions take DataFrames and return go.Figure; no Streamlit here."""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

HELPFUL = "#2e7d32"
HARMFUL = "#c62828"
DIRECTION_COLORS = {"helpful": HELPFUL, "harmful": HARMFUL}
_LAYOUT = dict(margin=dict(l=10, r=10, t=40, b=10), height=360)


def _label(row, meta: list[str]) -> str:
    extra = " · ".join(str(row[c]) for c in meta if c in row and pd.notna(row[c]) and str(row[c]))
    return f"#{int(row['doc_id'])}" + (f" {extra}" if extra else "")


def ranking_bars(df: pd.DataFrame, meta: list[str], top: int = 10) -> go.Figure:
    """Diverging horizontal bars: the top helpful (positive) and harmful (negative) documents of a query."""
    parts = []
    for direction in ("helpful", "harmful"):
        part = df[df["direction"] == direction].sort_values("rank").head(top)
        parts.append(part)
    d = pd.concat(parts) if parts else df.head(0)
    d = d.assign(label=[_label(r, meta[:1]) for _, r in d.iterrows()]).sort_values("score")
    fig = go.Figure(go.Bar(
        x=d["score"], y=d["label"], orientation="h",
        marker_color=[DIRECTION_COLORS.get(x, "#888") for x in d["direction"]],
        customdata=d[["direction", "rank"]].to_numpy() if len(d) else None,
        hovertemplate="%{y}<br>score %{x:.4g} (loss units)<br>%{customdata[0]} rank %{customdata[1]}<extra></extra>",
    ))
    fig.update_layout(title="Top documents by influence score", xaxis_title="score (Δ loss; > 0 helps the query)",
                      yaxis=dict(type="category"), **{**_LAYOUT, "height": max(300, 22 * len(d) + 80)})
    fig.add_vline(x=0, line_width=1, line_color="#888")
    return fig


def score_histogram(df: pd.DataFrame, title: str = "Score distribution") -> go.Figure:
    """Histogram of scores coloured by direction."""
    fig = px.histogram(df, x="score", color="direction", color_discrete_map=DIRECTION_COLORS, nbins=40,
                       barmode="overlay", opacity=0.75)
    fig.update_layout(title=title, xaxis_title="score (Δ loss)", yaxis_title="documents", **_LAYOUT)
    fig.add_vline(x=0, line_width=1, line_color="#888")
    return fig


def recurrence_heatmap(scores: pd.DataFrame, doc_ids: list[int], query_ids: list[str]) -> go.Figure:
    """Documents × queries matrix of scores (blank where the document is not in the query's top-k)."""
    d = scores[scores["doc_id"].isin(doc_ids)]
    mat = d.pivot_table(index="doc_id", columns="query_id", values="score", aggfunc="first")
    mat = mat.reindex(index=doc_ids, columns=[q for q in query_ids if q in mat.columns])
    lim = float(abs(d["score"]).max()) if len(d) else 1.0
    fig = go.Figure(go.Heatmap(
        z=mat.to_numpy(), x=[str(c) for c in mat.columns], y=[f"#{i}" for i in mat.index],
        colorscale=[[0, HARMFUL], [0.5, "#f5f5f5"], [1, HELPFUL]], zmin=-lim, zmax=lim,
        colorbar=dict(title="score"), hovertemplate="doc %{y}, query %{x}<br>score %{z:.4g}<extra></extra>",
    ))
    fig.update_layout(title="Documents recurring across prompts", xaxis_title="query", yaxis_title="document",
                      yaxis=dict(type="category", autorange="reversed"),
                      **{**_LAYOUT, "height": max(300, 20 * len(mat) + 120)})
    return fig


def shard_bars(stats: pd.DataFrame) -> go.Figure:
    fig = px.bar(stats.assign(shard=stats["shard"].astype(str)), x="shard", y="n_docs", hover_data=["n_chars"])
    fig.update_layout(title="Documents per shard", xaxis_title="shard", yaxis_title="documents",
                      xaxis=dict(type="category"), **{**_LAYOUT, "height": 220})
    return fig


def contamination_scatter(df: pd.DataFrame) -> go.Figure:
    """Text overlap vs influence per (item, document) pair, coloured by the leaked flag."""
    d = df.copy()
    if "leaked" in d.columns:
        d["leaked"] = d["leaked"].map({True: "leaked", False: "not flagged"}).fillna("not flagged")
    hover = [c for c in ("item_id", "doc_id", "combined_score") if c in d.columns]
    fig = px.scatter(d, x="overlap_score", y="influence_score", color="leaked" if "leaked" in d.columns else None,
                     color_discrete_map={"leaked": HARMFUL, "not flagged": "#607d8b"}, hover_data=hover)
    fig.update_layout(title="Overlap vs influence", xaxis_title="n-gram overlap with the item",
                      yaxis_title="influence score", **_LAYOUT)
    return fig


def selection_histogram(df: pd.DataFrame) -> go.Figure:
    color = "decision" if "decision" in df.columns else None
    fig = px.histogram(df, x="score", color=color, nbins=50, barmode="overlay", opacity=0.75,
                       color_discrete_map={"keep": HELPFUL, "drop": HARMFUL})
    fig.update_layout(title="Document scores by decision", xaxis_title="score", yaxis_title="documents", **_LAYOUT)
    return fig


def net_influence_bars(df: pd.DataFrame, meta: list[str], top: int = 15) -> go.Figure:
    """Most harmful and most helpful documents summed over every prompt of a run."""
    d = pd.concat([df.nsmallest(top, "total_score"), df.nlargest(top, "total_score")]).drop_duplicates("doc_id")
    d = d.assign(label=[_label(r, meta[:1]) for _, r in d.iterrows()]).sort_values("total_score")
    fig = go.Figure(go.Bar(x=d["total_score"], y=d["label"], orientation="h",
                           marker_color=[HELPFUL if s >= 0 else HARMFUL for s in d["total_score"]]))
    fig.update_layout(title="Net influence summed over the run's prompts", xaxis_title="summed score (Δ loss)",
                      yaxis=dict(type="category"), **{**_LAYOUT, "height": max(300, 22 * len(d) + 80)})
    return fig
