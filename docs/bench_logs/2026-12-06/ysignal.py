"""Does y carry the prompt's topic? For each sample prompt: mean y over subsets holding a document of the expected
module minus the mean over the other subsets, in units of the subsets' spread (a z), raw and generic-removed."""
import sys, json, numpy as np, duckdb
from safetensors.numpy import load_file
run = sys.argv[1]; ypath = sys.argv[2] if len(sys.argv) > 2 else f"{run}/last_measurements.npy"
EXPECT = ["json", "logging", "re", "io", "subprocess", "contextlib", "socket", "datetime", "argparse", None, "tempfile", "collections",
          "asyncio", "hashlib", "threading", "unittest", "pathlib", "csv", "decimal", "http", "zipfile", "dataclasses", "random", None]
d = load_file(f"{run}/subsets.safetensors"); mem = d["members"]; K = int(d["K"][0]); ids = d["doc_ids"]
c = load_file(f"{run}/generic.safetensors")["y_mean"]
y = np.load(ypath)
con = duckdb.connect("/work/ws/stride.duckdb", read_only=True)
src = dict(con.sql("select doc_id, source from docs__pydocs").fetchall())
src = np.array([src[int(i)] for i in ids])
beta = np.maximum(0, (y @ c) / (c @ c)); yr = y - beta[:, None] * c
zs = []
for q, mod in enumerate(EXPECT):
    if mod is None: continue
    docs = np.flatnonzero(src == mod)
    ks = np.unique(mem[docs].ravel())
    other = np.setdiff1d(np.arange(K), ks)
    for name, v in (("raw", y[q]), ("spec", yr[q])):
        z = (v[ks].mean() - v[other].mean()) / v.std() * np.sqrt(len(ks))
        zs.append((mod, name, len(docs), len(ks), round(float(z), 2)))
for r in zs: print(r)
print("median z raw", np.median([r[4] for r in zs if r[1] == "raw"]), "spec", np.median([r[4] for r in zs if r[1] == "spec"]))
import pandas as pd
att = pd.read_parquet(sys.argv[3]) if len(sys.argv) > 3 else None
print("prompt-module: best rank of a module doc by matched stat (raw, spec), among N =", len(ids))
for q, mod in enumerate(EXPECT):
    if mod is None or not (src == mod).any(): continue
    for name, v in (("raw", y[q]), ("spec", yr[q])):
        m = v[mem].mean(1)  # (N,) mean y over each doc's subsets
        order = np.argsort(-m); rank = np.empty(len(m), int); rank[order] = np.arange(len(m))
        best = rank[src == mod].min()
        print(f"  {mod:12s} {name:4s} best rank {best:5d}  median rank {int(np.median(rank[src == mod])):5d}")
