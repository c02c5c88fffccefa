"""Does the model carry the prompt's topic? NLL of each prompt's TF-IDF-nearest document (first 48 tokens)
conditioned on every prompt: (P, P); the diagonal should be lowest in each column."""
import json, sys, duckdb, numpy as np, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from sklearn.feature_extraction.text import TfidfVectorizer
model_dir, db = sys.argv[1], sys.argv[2]
prompts = [json.loads(l)["prompt"] for l in open("data/sample_prompts.jsonl")]
c = duckdb.connect(db, read_only=True)
texts = [r[0] for r in c.sql("select text from docs__pydocs order by doc_id").fetchall()]
v = TfidfVectorizer(sublinear_tf=True, stop_words="english").fit(texts)
sim = (v.transform(prompts) @ v.transform(texts).T).toarray()
tgt = [texts[i] for i in sim.argmax(1)]
tok = AutoTokenizer.from_pretrained(model_dir); m = AutoModelForCausalLM.from_pretrained(model_dir).eval()
P = len(prompts); M = np.zeros((P, P))
with torch.no_grad():
    for j, p in enumerate(prompts):
        pid = tok(p)["input_ids"]
        for i, t in enumerate(tgt):
            tid = tok(" " + t)["input_ids"][:48]
            ids = torch.tensor([[tok.eos_token_id] + pid + tid])
            lp = torch.log_softmax(m(ids).logits[0, :-1].float(), -1)
            y = ids[0, 1:]
            nll = -lp[torch.arange(len(y)), y][len(pid):].mean()
            M[j, i] = float(nll)
# column i: target i under every prompt j; z of the diagonal within its column
rank = [(M[:, i] < M[i, i]).sum() for i in range(P)]
gain = [M[:, i].mean() - M[i, i] for i in range(P)]
print("median rank of own prompt (0 best, chance %.1f):" % ((P - 1) / 2), np.median(rank), "mean gain nats", np.mean(gain).round(3))
print("top-1 own:", sum(r == 0 for r in rank), "/", P)
for i in range(P): print(rank[i], round(gain[i], 3), tgt[i][:50].replace("\n", " | "))
