"""Plot LDS against total time (fit + query), one point per method, from LDS `results.json` files.

    stride bench plot --results DIR/results.json [DIR2/results.json ...] --out FILE.png

Each results file (written by `stride bench lds`, see harness.py) becomes one panel titled with its
setting; a method that appears in several files of the same setting is plotted from the last one
given. Points carry the method name and a vertical bar for the 95% confidence interval of the LDS;
the time axis is logarithmic (times of 0 are drawn at the axis floor). matplotlib is an optional
dependency (the `bench` extra) and is imported only here, with the Agg backend.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from ..errors import StrideError

logger = logging.getLogger(__name__)

MIN_SECONDS = 0.01  # floor of the log time axis


def load_rows(paths) -> dict[str, list[dict]]:
    """{setting: [row, ...]} from results.json files (later files replace a setting's same method)."""
    by_setting: dict[str, dict[str, dict]] = {}
    for p in paths:
        p = Path(p)
        if p.is_dir():
            p = p / "results.json"
        try:
            data = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise StrideError(f"cannot read LDS results {p}: {exc}") from exc
        rows = data.get("rows") if isinstance(data, dict) else data
        if not isinstance(rows, list):
            raise StrideError(f"{p} has no list of result rows")
        for r in rows:
            missing = [k for k in ("setting", "method", "lds_mean", "fit_seconds", "query_seconds") if k not in r]
            if missing:
                raise StrideError(f"a row of {p} lacks {missing}")
            by_setting.setdefault(r["setting"], {})[r["method"]] = r
    if not by_setting:
        raise StrideError("no result rows to plot")
    return {s: list(m.values()) for s, m in by_setting.items()}


def total_seconds(row: dict) -> float:
    return float(row["fit_seconds"]) + float(row["query_seconds"])


def _kind(method: str) -> str:
    if method.startswith("stride"):
        return "stride"
    if method in ("kronfluence",) or method.startswith("dattri"):
        return "peer"
    return "baseline"


STYLE = {"stride": dict(color="#d62728", marker="*", s=180), "peer": dict(color="#1f77b4", marker="D", s=60),
         "baseline": dict(color="#7f7f7f", marker="o", s=45)}


def plot_lds_vs_time(paths, out, title: str | None = None, device_note: str | None = None) -> Path:
    """Write a PNG with one panel per setting; returns the output path."""
    try:
        import matplotlib
    except ImportError as exc:
        raise StrideError("plotting needs matplotlib: install the `bench` extra (pip install -e '.[bench]')") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = load_rows(paths)
    settings = list(data)
    fig, axes = plt.subplots(1, len(settings), figsize=(6.2 * len(settings), 4.6), squeeze=False)
    for ax, setting in zip(axes[0], settings):
        rows = sorted(data[setting], key=lambda r: -r["lds_mean"])
        ys = [float(r["lds_mean"]) for r in rows]
        yspan = (max(ys) - min(ys)) or 1.0
        placed: list[tuple[float, float]] = []  # (log10 x, y) of labels drawn above their point
        for r in rows:
            x = max(total_seconds(r), MIN_SECONDS)
            y = float(r["lds_mean"])
            st = STYLE[_kind(r["method"])]
            if "lds_ci_low" in r and "lds_ci_high" in r:
                ax.errorbar(x, y, yerr=[[y - r["lds_ci_low"]], [r["lds_ci_high"] - y]], color=st["color"],
                            alpha=0.5, lw=1, capsize=2, zorder=1)
            ax.scatter([x], [y], color=st["color"], marker=st["marker"], s=st["s"], zorder=2,
                       edgecolors="black", linewidths=0.4)
            # a label near one already drawn above its point goes below its own point instead
            lx = math.log10(x)
            crowded = any(abs(lx - px) < 0.35 and abs(y - py) < 0.06 * yspan for px, py in placed)
            ax.annotate(r["method"], (x, y), textcoords="offset points", xytext=(6, -11 if crowded else 4), fontsize=8)
            if not crowded:
                placed.append((lx, y))
        ax.set_xscale("log")
        ax.axhline(0.0, color="black", lw=0.5, alpha=0.4)
        ax.set_xlabel("total time, fit + query (s, log scale)")
        ax.set_ylabel("LDS (mean over queries, 95% CI)")
        dev = {str(r.get("device", "")) for r in rows}
        n = rows[0].get("n_models"), rows[0].get("n_queries")
        sub = f"{setting}: {n[0]} retrained models x {n[1]} queries, device {'/'.join(sorted(dev))}"
        ax.set_title(sub, fontsize=10)
        ax.grid(True, which="both", alpha=0.25)
    handles = [plt.Line2D([], [], color=STYLE[k]["color"], marker=STYLE[k]["marker"], ls="", markersize=8,
                          markeredgecolor="black", label=lab)
               for k, lab in (("stride", "STRIDE"), ("peer", "peer library"), ("baseline", "baseline"))]
    axes[0][-1].legend(handles=handles, loc="lower right", fontsize=8)
    fig.suptitle(title or "LDS against total time (fit + query), one point per method", fontsize=11)
    if device_note:
        fig.text(0.01, 0.01, device_note, fontsize=7, alpha=0.7)
    fig.tight_layout()
    out = Path(out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    logger.info("wrote %s (%s)", out, ", ".join(settings))
    return out


# ------------------------------------------------------------------------------------------- cli


def cmd_bench_plot(args):
    out = plot_lds_vs_time(args.results, args.out, title=args.title, device_note=args.note)
    print(f"wrote {out}")


def register(bench_subparsers, common_parent):
    """`stride bench plot ...` (added by stride_core.bench.commands)."""
    x = bench_subparsers.add_parser("plot", help="PNG of LDS against total time (fit + query), one point per method",
                                    parents=[common_parent])
    x.add_argument("--results", nargs="+", required=True, metavar="RESULTS_JSON",
                   help="results.json files (or their folders) from `stride bench lds`; one panel per setting")
    x.add_argument("--out", required=True, help="output PNG path")
    x.add_argument("--title", default=None, help="figure title")
    x.add_argument("--note", default=None, help="small footnote (e.g. the machine and date)")
    x.set_defaults(func=cmd_bench_plot)
