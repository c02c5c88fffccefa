import sys, json, time, torch, numpy as np
sys.argv += [] 
exec(open("decode_exp.py").read().split("modes = {")[0])  # reuse setup + GenPenalty + gen + nll
def seq_lp(ctx, c):
    x = torch.tensor([[bos, *ctx, *c]])
    with torch.no_grad(): lp = model(x).logits[0, :-1].log_softmax(-1)
    st = len(ctx); return lp[st:].gather(1, x[0, st+1:, None]).squeeze(1)
def mmi(p, n, lam, temp=0.8, seed=0):
    ids = tok(p, add_special_tokens=False)["input_ids"]; inp = torch.tensor([[bos, *ids]])
    torch.manual_seed(seed)
    out = model.generate(inp.repeat(n, 1), attention_mask=torch.ones(n, inp.shape[1], dtype=torch.long), max_new_tokens=32, do_sample=True, temperature=temp, top_k=40,
                         logits_processor=LogitsProcessorList([GenPenalty2(inp.shape[1], 1.3)]), no_repeat_ngram_size=3,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    best, bs = None, -1e9
    for row in out:
        c = row[inp.shape[1]:].tolist()
        if tok.eos_token_id in c: c = c[:c.index(tok.eos_token_id)]
        if len(c) < 4: continue
        cond = seq_lp(ids, c); bare = seq_lp([], c)
        s = float(cond.mean() - lam * bare.mean())
        if s > bs: bs, best = s, c
    return tok.decode(best), best, ids
class GenPenalty2:
    def __init__(self, plen, p): self.plen, self.p = plen, p
    def __call__(self, ids, scores):
        so = ids[:, self.plen:]
        if so.shape[1] == 0: return scores
        v = scores.gather(1, so); v = torch.where(v < 0, v * self.p, v / self.p)
        return scores.scatter(1, so, v)
for n, lam in [(8, 0.0), (8, 0.5), (8, 1.0), (16, 0.5)]:
    t = time.time(); outs = [mmi(p, n, lam) for p in prompts]
    m = continuation_metrics(prompts, [o[0] for o in outs], texts)
    tot = [nll(o[2], o[1]) for o in outs]; m["nll"] = sum(a for a, _ in tot) / max(1, sum(b for _, b in tot))
    print(f"mmi n={n} lam={lam}: on {m['on_prompt']:.3f} spec {m['specificity']:.3f} cross {m['cross_sim']:.3f} d2 {m['distinct2']:.3f} nll {m['nll']:.2f} ({time.time()-t:.0f}s)", flush=True)
    json.dump([o[0] for o in outs], open(f"mmi_{n}_{lam}.json", "w"))
