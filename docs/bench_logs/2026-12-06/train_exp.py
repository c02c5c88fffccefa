"""Train a variant of the built-in model on pydocs with the demo's tokenizer (experiment, not project code)."""
import sys, time, json, math, shutil
from pathlib import Path
import numpy as np, torch
sys.path.insert(0, "/work/main")
from stride_core.store.tiny_model import TinyModelArgs, pack, train_lm, eval_loss, split_docs
from stride_core.store.workspace import workspace_at
from stride_core.store.corpus import load_documents
from transformers import AutoTokenizer, GPT2Config, LlamaConfig, AutoModelForCausalLM

name, family, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
extra = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
out = Path("/work/exp/models") / name
src = Path("/work/ws/models/pydocs-tiny")
tok = AutoTokenizer.from_pretrained(src)
texts = load_documents(workspace_at("/work/ws"), "pydocs", ["doc_id", "text"])["text"].tolist()
args = TinyModelArgs(min_steps=steps, **{k: v for k, v in extra.items() if k in TinyModelArgs.__dataclass_fields__})
tr, va = split_docs(len(texts), args.val_fraction, args.seed)
ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
eos = tok.eos_token_id
blocks = pack([ids[i] for i in tr], eos, args.block_size)
torch.manual_seed(0)
if family == "gpt2":
    cfg = GPT2Config(vocab_size=len(tok), n_positions=512, n_embd=args.n_embd, n_layer=args.n_layer, n_head=args.n_head,
                     bos_token_id=eos, eos_token_id=eos, resid_pdrop=extra.get("drop", 0.0), embd_pdrop=extra.get("drop", 0.0),
                     attn_pdrop=extra.get("drop", 0.0), tie_word_embeddings=True)
else:
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=args.n_embd, intermediate_size=extra.get("inter", 344), num_hidden_layers=args.n_layer,
                      num_attention_heads=args.n_head, num_key_value_heads=args.n_head, max_position_embeddings=512,
                      bos_token_id=eos, eos_token_id=eos, pad_token_id=eos, tie_word_embeddings=True, rope_theta=10000.0)
model = AutoModelForCausalLM.from_config(cfg)
print(name, "params", sum(p.numel() for p in model.parameters()), "blocks", len(blocks), flush=True)
t = time.time()
trace = train_lm(model, blocks, args, progress=False)
dt = time.time() - t
vl = eval_loss(model, [ids[i] for i in va], eos, args.block_size)
print(f"{name}: train {np.mean(trace[-50:]):.3f} val {vl:.3f} in {dt:.0f}s", flush=True)
out.mkdir(parents=True, exist_ok=True)
model.save_pretrained(out); tok.save_pretrained(out)
json.dump({"val": vl, "train": float(np.mean(trace[-50:])), "seconds": dt}, open(out / "exp.json", "w"))
