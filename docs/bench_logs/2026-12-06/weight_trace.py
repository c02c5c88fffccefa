"""IDF-weighted measured tokens on the info tracing run: hit@10 / max share@10 of the 30 prefix prompts."""
import sys, json, numpy as np
sys.path.insert(0, "/work/main")
exec(open("/work/exp/weight_exp.py").read().split("prompts = read_prompts")[0].replace("wsdir, run = sys.argv[1], sys.argv[2]", "wsdir, run = '/work/ws3', 'i1'"))
prompts = [json.loads(l) for l in open("/work/exp/info/tracing/prompts.jsonl")]
gens = generate(task, prompts, args)
rows, rids = reference_prompts(ts, 64, o.config.subsets.seed, 24)
refs = generate(task, [{"query_id": f"r{r}", "prompt": None, "prompt_ids": i} for r, i in zip(rows, rids)], args)
qf = features_in_memory(task, query_items(gens, "all")); rf = features_in_memory(task, query_items(refs, "all"))
doc_ids = np.asarray(o.cache.doc_ids); members = o.design.members
srcs = [int(p["query_id"][3:]) for p in prompts]
for name, pw in (("uniform", 0), ("idf", 1), ("idf^2", 2)):
    for f in (qf, rf):
        if not hasattr(f, "_w0"): f._w0 = f.weight.copy()
        f.weight = (f._w0 * idf[f.target] ** pw).astype(np.float32)
    y, _ = o.estimator.measure(qf); yref, _ = o.estimator.measure(rf)
    c = masked_mean(yref, members[rows]).astype(np.float32)
    W = o.estimator.recover(remove_generic(y, c)).influence_
    hits, counts = 0, np.zeros(W.shape[1])
    for qi, s in enumerate(srcs):
        w = W[qi]; pos = np.flatnonzero(w > 0); top = pos[np.argsort(-w[pos])][:10]
        counts[top] += 1; hits += s in set(doc_ids[top].tolist())
    print(f"{name:8s} hit@10 {hits / len(srcs):.2f}  max share@10 {counts.max() / len(srcs):.2f}", flush=True)
