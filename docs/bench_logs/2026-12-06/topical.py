"""Share of sample prompts whose module is among the top-5 helpful documents: STRIDE (attributions.parquet) vs TF-IDF."""
import sys, json, numpy as np, pandas as pd, duckdb
sys.path.insert(0, "/work/main")
from stride_core.store.workspace import workspace_at
from stride_core.store.text import tfidf_similarity
from stride_core.store.corpus import load_documents
ws = workspace_at(sys.argv[1]); df = pd.read_parquet(sys.argv[2])
EXPECT = {"p00": ["json"], "p01": ["logging"], "p02": ["re"], "p03": ["io"], "p04": ["subprocess"], "p05": ["contextlib"], "p06": ["socket"],
          "p07": ["datetime"], "p08": ["argparse"], "p10": ["tempfile"], "p11": ["collections"], "p12": ["asyncio"], "p13": ["hashlib"],
          "p14": ["threading"], "p15": ["unittest"], "p16": ["pathlib"], "p19": ["http", "urllib"], "p20": ["zipfile"], "p21": ["dataclasses"], "p22": ["random"]}
docs = load_documents(ws, "pydocs", ["doc_id", "source"])
src = dict(zip(docs.doc_id, docs.source))
q = df.groupby("query_id").first()
texts = [q.loc[k, "prompt"] + q.loc[k, "continuation"] for k in q.index]
S = tfidf_similarity(ws, "pydocs", docs.doc_id.tolist(), texts)
hits = {"stride": 0, "tfidf": 0}; n = 0
for i, k in enumerate(q.index):
    if k not in EXPECT: continue
    n += 1
    top = df[(df.query_id == k) & (df.direction == "helpful")].sort_values("rank").head(5).doc_id
    hits["stride"] += any(src[d] in EXPECT[k] for d in top)
    tt = docs.doc_id.to_numpy()[np.argsort(-S[i])[:5]]
    hits["tfidf"] += any(src[d] in EXPECT[k] for d in tt)
print(f"prompts with a labelled module in the corpus: {n}; module in top 5: STRIDE {hits['stride']}, TF-IDF {hits['tfidf']}")
