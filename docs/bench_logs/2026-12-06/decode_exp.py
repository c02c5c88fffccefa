"""Decoding variants on a trained model: specificity etc. (experiment, not project code)."""
import sys, json, time
import numpy as np, torch
from transformers import AutoTokenizer, AutoModelForCausalLM, LogitsProcessorList
sys.path.insert(0, "/work/main")
from stride_core.bench.decoding import continuation_metrics
from stride_core.store.workspace import workspace_at
from stride_core.store.corpus import load_documents

model_dir, ws = sys.argv[1], sys.argv[2]
torch.set_num_threads(1)
tok = AutoTokenizer.from_pretrained(model_dir); model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
prompts = [json.loads(l)["prompt"] for l in open("/work/main/data/sample_prompts.jsonl")]
texts = load_documents(workspace_at(ws), "pydocs", ["text"])["text"].astype(str).tolist()
bos = tok.bos_token_id

class GenPenalty:
    def __init__(self, plen, penalty, ngram, prompt_bonus=1.0):
        self.plen, self.p, self.n, self.bonus = plen, penalty, ngram, prompt_bonus
    def __call__(self, ids, scores):
        gen = ids[0, self.plen:].tolist(); s = scores.clone()
        if self.p != 1.0 and gen:
            idx = torch.tensor(sorted(set(gen)))
            v = s[0, idx]; s[0, idx] = torch.where(v < 0, v * self.p, v / self.p)
        if self.bonus != 1.0:
            pidx = torch.tensor(sorted(set(ids[0, 1:self.plen].tolist()) - set(gen)))
            if len(pidx):
                v = s[0, pidx]; s[0, pidx] = torch.where(v < 0, v / self.bonus, v * self.bonus)
        if self.n and len(gen) >= self.n - 1:
            seq = ids[0].tolist(); start = max(1, self.plen - (self.n - 1))
            ctx = tuple(seq[-(self.n - 1):])
            banned = {seq[i + self.n - 1] for i in range(start, len(seq) - self.n + 1) if tuple(seq[i:i + self.n - 1]) == ctx}
            if banned: s[0, list(banned)] = -float("inf")
        return s

def gen(p, mode):
    ids = tok(p, add_special_tokens=False)["input_ids"]
    inp = torch.tensor([[bos, *ids]])
    kw = dict(max_new_tokens=32, do_sample=False, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, attention_mask=torch.ones_like(inp))
    if mode == "hf":
        out = model.generate(inp, repetition_penalty=1.3, no_repeat_ngram_size=3, **kw)
    elif mode == "genrep+hfng":
        out = model.generate(inp, logits_processor=LogitsProcessorList([GenPenalty(inp.shape[1], 1.3, 0, 1.0)]), no_repeat_ngram_size=3, **kw)
    elif mode == "plain":
        out = model.generate(inp, **kw)
    else:
        pen, ng, bonus = mode
        out = model.generate(inp, logits_processor=LogitsProcessorList([GenPenalty(inp.shape[1], pen, ng, bonus)]), **kw)
    c = out[0, inp.shape[1]:].tolist()
    if tok.eos_token_id in c: c = c[:c.index(tok.eos_token_id)]
    return tok.decode(c), c, ids

def nll(ids, c):
    x = torch.tensor([[bos, *ids, *c]])
    with torch.no_grad(): lp = model(x).logits[0, :-1].log_softmax(-1)
    st = len(ids); return -float(lp[st:].gather(1, x[0, st+1:, None]).sum()), len(c)

modes = {"genrep+hfng": "genrep+hfng", "hf rep1.3 ng3 (current)": "hf", "gen-only rep1.3 ng3": (1.3, 3, 1.0), "gen-only rep1.2 ng3": (1.2, 3, 1.0),
         "gen-only rep1.5 ng3": (1.5, 3, 1.0), "no rep, gen ng3": (1.0, 3, 1.0), "gen-only rep1.3 ng3 prompt-bonus1.3": (1.3, 3, 1.3)}
if len(sys.argv) > 3: modes = {k: v for k, v in modes.items() if any(s in k for s in sys.argv[3].split(","))}
res = {}
for name, mode in modes.items():
    t = time.time(); outs = [gen(p, mode) for p in prompts]
    m = continuation_metrics(prompts, [o[0] for o in outs], texts)
    tot = [nll(o[2], o[1]) for o in outs]; m["nll"] = sum(a for a, _ in tot) / max(1, sum(b for _, b in tot))
    res[name] = (m, [o[0] for o in outs])
    print(f"{name:40s} on {m['on_prompt']:.3f} spec {m['specificity']:.3f} cross {m['cross_sim']:.3f} d2 {m['distinct2']:.3f} nll {m['nll']:.2f} ({time.time()-t:.0f}s)", flush=True)
json.dump(res, open(sys.argv[4] if len(sys.argv) > 4 else "/work/exp/decode_res.json", "w"), indent=1)
