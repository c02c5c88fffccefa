"""The cost bench's report (stride_core.bench.cost): the crossover size, the printed table and the plot of
seconds against parameters, from results.json rows."""

from __future__ import annotations

import logging
import math
from pathlib import Path

logger = logging.getLogger(__name__)


def crossover(rows: list[dict], fast: str = "stride", slow: str = "kronfluence") -> dict:
    """Where `fast`'s end-to-end time drops below `slow`'s: the first size after which it stays below,
    with the parameter count interpolated on log-log axes between the two sizes that bracket it."""
    t = {}
    for r in rows:
        if r.get("status") == "ok":
            t.setdefault(r["n_params"], {})[r["method"]] = r["total_s"]
    pts = sorted((n, m[fast] / m[slow]) for n, m in t.items() if fast in m and slow in m)
    if not pts:
        return {"text": f"no size with both {fast} and {slow} measured"}
    if all(r < 1 for _, r in pts):
        return {"params": None, "text": f"{fast} is faster than {slow} at every size measured", "ratios": pts}
    if pts[-1][1] >= 1:
        return {"params": None, "text": f"{fast} is not faster than {slow} at the largest size measured", "ratios": pts}
    i = max(j for j, (_, r) in enumerate(pts) if r >= 1)
    (n0, r0), (n1, r1) = pts[i], pts[i + 1]
    f = math.log(r0) / (math.log(r0) - math.log(r1))
    n = math.exp(math.log(n0) + f * (math.log(n1) - math.log(n0)))
    return {"params": round(n), "ratios": pts,
            "text": f"{fast} becomes faster than {slow} end to end at about {n / 1e6:.1f}M parameters "
                    f"(between {n0 / 1e6:.1f}M and {n1 / 1e6:.1f}M)"}


def format_table(results: dict) -> str:
    rows = results["rows"]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    sizes = list(dict.fromkeys((r["size"], r["n_params"]) for r in rows))
    head = ["size", "params"] + [f"{m} {c}" for m in methods for c in ("total s", "fit s", "query s", "peak MB")]
    if "stride" in methods and "kronfluence" in methods:
        head.append("EK-FAC / STRIDE")
    cells = [head]
    by = {(r["size"], r["method"]): r for r in rows}
    for size, n in sizes:
        line = [size, f"{n / 1e6:.1f}M"]
        for m in methods:
            r = by.get((size, m), {})
            if r.get("status") == "ok":
                line += [f"{r['total_s']:.1f}", f"{r['fit_s']:.1f}", f"{r['query_s']:.1f}", f"{r['peak_rss_mb']:.0f}"]
            else:
                line += [r.get("status", "not run")[:28], "", "", f"{r['peak_rss_mb']:.0f}" if r.get("peak_rss_mb") else ""]
        if head[-1] == "EK-FAC / STRIDE":
            a, b = by.get((size, "kronfluence"), {}), by.get((size, "stride"), {})
            ok = a.get("status") == b.get("status") == "ok"
            line.append(f"{a['total_s'] / b['total_s']:.2f}x" if ok else "")
        cells.append(line)
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    return "\n".join("  ".join(c[i].rjust(widths[i]) for i in range(len(head))) for c in cells)


def plot(results: dict, path: Path) -> Path | None:
    """Seconds (end to end) against parameters, log-log, one line per method; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed (the `bench` extra): no plot")
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for m in dict.fromkeys(r["method"] for r in results["rows"]):
        pts = sorted((r["n_params"], r["total_s"]) for r in results["rows"] if r["method"] == m and r.get("status") == "ok")
        if pts:
            ax.plot(*zip(*pts), marker="o", label=m)
        for r in results["rows"]:
            if r["method"] == m and r.get("status") != "ok":
                ax.annotate(f"{m}: {r['status'][:20]}", (r["n_params"], ax.get_ylim()[1]), fontsize=7, rotation=90, va="top")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("model parameters")
    ax.set_ylabel("end-to-end seconds (fit + queries)")
    c = results.get("corpus", {})
    ax.set_title(f"{c.get('docs')} documents x <= {results['args']['tokens']} tokens, {c.get('queries')} queries, "
                 f"{results['machine']['device']}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
