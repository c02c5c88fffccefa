"""Top-5 hub share and the continuation table of a run's attributions.parquet (experiment helper)."""
import sys, collections
import pandas as pd
df = pd.read_parquet(sys.argv[1])
k = int(sys.argv[2]) if len(sys.argv) > 2 else 5
Q = df["query_id"].nunique()
h = df[(df.direction == "helpful") & (df["rank"] <= k)]
cnt = collections.Counter(h["doc_id"])
top = cnt.most_common(5)
print(f"prompts {Q}; top-{k} hub share {top[0][1] / Q:.3f} (most frequent: {top})")
print("topics rows among top-5 helpful:", (h["source"] == "pydoc_data.topics").sum(), "of", len(h))
for qid, g in df.groupby("query_id", sort=True):
    f = g.iloc[0]; hh = g[(g.direction == "helpful")].sort_values("rank")
    tops = "; ".join(f"{r.source}: {str(r.object)[:40]}" for r in hh.head(3).itertuples()) or "none"
    print(f"| {f.prompt} | {' '.join(str(f.continuation).split())[:110].replace('|', '/')} | {tops} |")
