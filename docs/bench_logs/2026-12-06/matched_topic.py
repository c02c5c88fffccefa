import sys, numpy as np, pandas as pd
from safetensors.numpy import load_file
sys.path.insert(0, "/work/main")
from stride_core.store.workspace import workspace_at
from stride_core.store.corpus import load_documents
run = sys.argv[1]; ws = workspace_at(sys.argv[2])
EXPECT = {0: ["json"], 1: ["logging"], 2: ["re"], 3: ["io"], 4: ["subprocess"], 5: ["contextlib"], 6: ["socket"], 7: ["datetime"], 8: ["argparse"],
          10: ["tempfile"], 11: ["collections"], 12: ["asyncio"], 13: ["hashlib"], 14: ["threading"], 15: ["unittest"], 16: ["pathlib"],
          19: ["http", "urllib"], 20: ["zipfile"], 21: ["dataclasses"], 22: ["random"]}
d = load_file(f"{run}/subsets.safetensors"); mem = d["members"]; ids = d["doc_ids"]
c = load_file(f"{run}/generic.safetensors")["y_mean"]; y = np.load(f"{run}/last_measurements.npy")
docs = load_documents(ws, "pydocs", ["doc_id", "source"]); src = dict(zip(docs.doc_id, docs.source))
srcs = np.array([src[int(i)] for i in ids])
beta = np.maximum(0, (y @ c) / (c @ c)); yr = y - beta[:, None] * c
for name, Y in (("raw", y), ("specific", yr)):
    m = Y[:, mem].mean(2)  # (Q, N)
    hits = sum(any(s in EXPECT[q] for s in srcs[np.argsort(-m[q])[:5]]) for q in EXPECT)
    share = np.bincount(np.argsort(-m, 1)[:, :5].ravel(), minlength=len(ids)).max() / len(y)
    print(f"matched statistic on {name} y: module in top 5 for {hits}/20; top-5 hub share {share:.3f}")
