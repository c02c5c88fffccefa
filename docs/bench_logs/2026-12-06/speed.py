import sys, time, torch, numpy as np
from transformers import GPT2Config, LlamaConfig, AutoModelForCausalLM
V = 4096
def run(cfg, n=60):
    torch.manual_seed(0); m = AutoModelForCausalLM.from_config(cfg); opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    x = torch.randint(0, V, (16, 129))
    for i in range(n + 10):
        if i == 10: t = time.time()
        out = m(input_ids=x[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(out.reshape(-1, V), x[:, 1:].reshape(-1)); opt.zero_grad(); loss.backward(); opt.step()
    return n / (time.time() - t)
g = GPT2Config(vocab_size=V, n_positions=512, n_embd=128, n_layer=4, n_head=4, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0)
l = LlamaConfig(vocab_size=V, hidden_size=128, intermediate_size=344, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512, tie_word_embeddings=True)
for r in range(2):
    print("gpt2 it/s", round(run(g), 2), "llama it/s", round(run(l), 2), flush=True)
