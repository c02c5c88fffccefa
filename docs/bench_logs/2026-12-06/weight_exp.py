"""Attribution with per-token weights on the measured loss (experiment). Weights: uniform, idf (log N/df of the
target token over the run's token store), idf^2. Reports module-in-top-5 (20 labelled prompts), hub share."""
import sys, json, time, numpy as np, pandas as pd
sys.path.insert(0, "/work/main")
from stride_core.store.workspace import workspace_at
from stride_core.runs.attribution import open_run
from stride_core.runs.prompts import generate, query_items, read_prompts
from stride_core.method.arguments import AttributeArgs
from stride_core.method.activations import features_in_memory
from stride_core.method.generic import reference_prompts, masked_mean, remove_generic
from stride_core.store.tokens import TokenStore
from stride_core.store.corpus import load_documents
from safetensors.numpy import load_file
wsdir, run = sys.argv[1], sys.argv[2]
ws = workspace_at(wsdir); args = AttributeArgs(device="cpu")
o = open_run(ws, run, args); task = o.task
ts = TokenStore.open(ws.run_dir(run) / "tokens")
ids = np.fromfile(ws.run_dir(run) / "tokens" / "ids.bin", dtype=np.int32); offs = np.load(ws.run_dir(run) / "tokens" / "offsets.npy")
V = task.model.config.vocab_size; N = len(offs) - 1
df = np.zeros(V)
for i in range(N): df[np.unique(ids[offs[i]:offs[i + 1]])] += 1
idf = np.log((N + 1) / (df + 1)) + 1.0
prompts = read_prompts("/work/main/data/sample_prompts.jsonl")
gens = generate(task, prompts, args)
rows, rids = reference_prompts(ts, 64, o.config.subsets.seed, 24)
refs = generate(task, [{"query_id": f"r{r}", "prompt": None, "prompt_ids": i} for r, i in zip(rows, rids)], args)
qf = features_in_memory(task, query_items(gens, "all")); rf = features_in_memory(task, query_items(refs, "all"))
members = o.design.members
docs = load_documents(ws, o.config.corpus, ["doc_id", "source"]); src = dict(zip(docs.doc_id, docs.source))
doc_ids = np.asarray(o.cache.doc_ids)
EXPECT = {"p00": ["json"], "p01": ["logging"], "p02": ["re"], "p03": ["io"], "p04": ["subprocess"], "p05": ["contextlib"], "p06": ["socket"],
          "p07": ["datetime"], "p08": ["argparse"], "p10": ["tempfile"], "p11": ["collections"], "p12": ["asyncio"], "p13": ["hashlib"],
          "p14": ["threading"], "p15": ["unittest"], "p16": ["pathlib"], "p19": ["http", "urllib"], "p20": ["zipfile"], "p21": ["dataclasses"], "p22": ["random"]}
qids = [g["query_id"] for g in gens]
for name, pw in (("uniform", 0), ("idf", 1), ("idf^2", 2)):
    t = time.time()
    for f in (qf, rf):
        if not hasattr(f, "_w0"): f._w0 = f.weight.copy()
        f.weight = (f._w0 * idf[f.target] ** pw).astype(np.float32)
    y, base = o.estimator.measure(qf); yref, _ = o.estimator.measure(rf)
    c = masked_mean(yref, members[rows]).astype(np.float32)
    for rank_mode, Y in (("specific", remove_generic(y, c)), ("raw", y)):
        W = o.estimator.recover(Y).influence_
        hits, counts = 0, np.zeros(W.shape[1])
        for qi, q in enumerate(qids):
            w = W[qi]; pos = np.flatnonzero(w > 0); top = pos[np.argsort(-w[pos])][:5]
            counts[top] += 1
            if q in EXPECT: hits += any(src[int(doc_ids[j])] in EXPECT[q] for j in top)
        print(f"{name:8s} {rank_mode:8s} module in top 5: {hits}/20  hub share {counts.max() / len(qids):.3f}  nonzero/query {np.mean((W > 0).sum(1)):.1f} ({time.time() - t:.0f}s)", flush=True)
