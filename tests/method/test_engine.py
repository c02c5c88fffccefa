"""Engine equivalence and invariance tests on tiny random models (no training needed)."""

import numpy as np
import pytest
import torch

from stride_core.method.activations import FeatureCache, build_cache, features_in_memory
from stride_core.errors import StrideError
from stride_core.method.measurement import measure, measure_looped
from stride_core.method.operators import SteeringOperators
from stride_core.method.tasks import CausalLMTask, ClassifierTask, decoder_blocks


class _Tok:
    """Minimal tokenizer stand-in: characters -> ids (the task only needs these attributes)."""

    bos_token_id = 0
    eos_token_id = 0
    pad_token_id = 0

    def __call__(self, texts, add_special_tokens=False):
        one = isinstance(texts, str)
        ids = [[1 + (ord(c) % 60) for c in t] for t in ([texts] if one else texts)]
        return {"input_ids": ids[0] if one else ids}


def _tiny(family: str):
    import transformers as tf

    common = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                  max_position_embeddings=128)
    if family == "gpt2":
        cfg = tf.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=2, n_positions=128)
        cls = tf.GPT2LMHeadModel
    elif family == "llama":
        cfg, cls = tf.LlamaConfig(num_key_value_heads=2, **common), tf.LlamaForCausalLM
    elif family == "qwen2":
        cfg, cls = tf.Qwen2Config(num_key_value_heads=2, **common), tf.Qwen2ForCausalLM
    else:
        cfg, cls = tf.GPTNeoXConfig(**common), tf.GPTNeoXForCausalLM
    torch.manual_seed(0)
    return cls(cfg).eval()


TEXTS = ["hello world, this is a test", "short", "another document with more characters in it", "x y z"]


@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2", "gpt_neox"])
def test_features_for_each_family_match_full_forward(family):
    model = _tiny(family)
    task = CausalLMTask(model, _Tok(), max_tokens=32)
    prefix, n = decoder_blocks(model)
    assert task.layer == f"{prefix}.1"
    items = [(_Tok()(t)["input_ids"][:32], 0) for t in TEXTS]
    feats = task.features(items)
    # z rebuilds the model's logits exactly
    for (ids, _), f in zip(items, feats):
        seq = torch.tensor([[0, *ids]])
        with torch.no_grad():
            logits = model(seq).logits[0, :-1]
        assert torch.allclose(task.head(f["z"]), logits, atol=1e-4)
        assert f["h"].shape == (len(ids), 32) and torch.equal(f["target"], torch.tensor(ids))
    # hooks are always removed
    assert not any(m._forward_hooks for m in model.modules())


def test_unknown_layer_is_a_clear_error():
    with pytest.raises(StrideError, match="no module named"):
        CausalLMTask(_tiny("gpt2"), _Tok(), layer="transformer.h.9")


def _ops(model, K=5, R=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    D = model.config.hidden_size
    ops = SteeringOperators(D, D, K, R)
    with torch.no_grad():
        ops.A.copy_(0.3 * torch.randn(K, R, D, generator=g))
    return ops


@pytest.mark.parametrize("R", [3, 40])  # R < D: logits mixed from a_k W_U^T; R >= D: through the head per subset
def test_batched_measurement_equals_looped_and_full_forward_hook(R):
    model = _tiny("gpt2")
    task = CausalLMTask(model, _Tok(), max_tokens=32)
    items = [(_Tok()(t)["input_ids"], 3 if i % 2 else 0) for i, t in enumerate(TEXTS)]
    q = features_in_memory(task, items, batch_size=3)
    ops = _ops(model, R=R)
    y, base = measure(q, ops, task.head, logits_budget=64 * 40)  # tiny budget forces chunking
    assert np.allclose(y, measure_looped(q, ops, task.head), atol=1e-5)
    # full forward with the steering applied by hooks
    for qi, (ids, n_prompt) in enumerate(items):
        for k in range(ops.K):
            store = {}
            h_hook = task.layer_module.register_forward_hook(lambda m, i, o: store.__setitem__("h", o[0] if isinstance(o, tuple) else o))
            pre = task.unembed.register_forward_pre_hook(lambda m, args: (args[0] + ops.delta_all(store["h"][0], torch.tensor([k]))[0][None],))
            try:
                with torch.no_grad():
                    seq = torch.tensor([[0, *ids]])
                    logits = model(seq).logits[0, :-1]
            finally:
                h_hook.remove(); pre.remove()
            tok_loss = torch.nn.functional.cross_entropy(logits, torch.tensor(ids), reduction="none")
            w = torch.ones(len(ids)); w[:n_prompt] = 0
            with torch.no_grad():
                base_logits = model(torch.tensor([[0, *ids]])).logits[0, :-1]
            base_loss = (torch.nn.functional.cross_entropy(base_logits, torch.tensor(ids), reduction="none") * w).sum() / w.sum()
            steered = (tok_loss * w).sum() / w.sum()
            assert abs(float(base_loss - steered) - y[qi, k]) < 1e-4


def test_measurement_with_a_biased_head_matches_looped():
    """The low-rank path subtracts the head's bias from the projected a_k (the head is affine, not linear)."""
    model = _tiny("gpt2")
    task = CausalLMTask(model, _Tok(), max_tokens=32)
    q = features_in_memory(task, [(_Tok()(t)["input_ids"], 0) for t in TEXTS], batch_size=3)
    g = torch.Generator().manual_seed(1)
    head = torch.nn.Linear(32, 64)
    with torch.no_grad():
        head.bias.copy_(torch.randn(64, generator=g))
    ops = _ops(model, R=3)
    y, _ = measure(q, ops, head, logits_budget=64 * 40)
    assert np.allclose(y, measure_looped(q, ops, head), atol=1e-5)
    assert np.allclose(y, measure(q, ops, head, low_rank=False)[0], atol=1e-5)


def test_cache_is_invariant_to_batch_size_and_resumes(tmp_path, monkeypatch):
    model = _tiny("llama")
    task = CausalLMTask(model, _Tok(), max_tokens=32)
    texts = TEXTS * 3
    items = [(_Tok()(t)["input_ids"][:32], 0) for t in texts]
    lengths = [len(i) for i, _ in items]
    ids = np.arange(len(items)) + 100
    a = build_cache(tmp_path / "a", task, items, lengths, ids, batch_size=1, dtype="float32", progress=False)
    b = build_cache(tmp_path / "b", task, items, lengths, ids, batch_size=5, dtype="float32", progress=False)
    assert np.allclose(a.h, b.h, atol=1e-5) and np.allclose(a.z, b.z, atol=1e-5)
    assert np.array_equal(a.target, b.target)
    # interrupt after the first batch, then resume
    calls = {"n": 0}
    orig = task.features

    def flaky(batch):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return orig(batch)

    monkeypatch.setattr(task, "features", flaky)
    with pytest.raises(KeyboardInterrupt):
        build_cache(tmp_path / "c", task, items, lengths, ids, batch_size=4, dtype="float32", progress=False)
    with pytest.raises(Exception, match="incomplete"):
        FeatureCache.open(tmp_path / "c")
    monkeypatch.setattr(task, "features", orig)
    c = build_cache(tmp_path / "c", task, items, lengths, ids, batch_size=4, dtype="float32", progress=False)
    assert np.allclose(a.h, c.h, atol=1e-5) and np.array_equal(a.target, c.target)


def test_nan_activations_name_the_document(tmp_path):
    model = _tiny("gpt2")
    with torch.no_grad():
        model.transformer.h[0].mlp.c_fc.weight.fill_(float("nan"))
    task = CausalLMTask(model, _Tok(), max_tokens=16)
    items = [(_Tok()(t)["input_ids"][:16], 0) for t in TEXTS]
    with pytest.raises(StrideError, match="NaN or inf in the activations of document"):
        build_cache(tmp_path / "n", task, items, [len(i) for i, _ in items], np.arange(4), progress=False)


def test_classifier_task_on_plain_module():
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    task = ClassifierTask(net, "1", n_classes=3)
    x = torch.randn(5, 4)
    feats = task.features([(x[i], i % 3) for i in range(5)])
    assert feats[0]["h"].shape == (1, 8) and torch.allclose(torch.cat([f["z"] for f in feats]), net(x), atol=1e-6)


def test_designs_ensemble_fits_saves_loads_and_averages(tmp_path):
    from dataclasses import replace

    from stride_core.method.arguments import OperatorArgs, SubsetArgs
    from stride_core.method.estimator import StrideEstimator
    from stride_core.method.subsets import SubsetDesign

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    task = ClassifierTask(net, "1", n_classes=4)
    X = torch.randn(60, 6)
    train = features_in_memory(task, [(X[i], i % 4) for i in range(60)])
    queries = features_in_memory(task, [(X[i], i % 4) for i in range(5)])
    ops_args = OperatorArgs(R=4, steps=5, tokens_per_subset=2, stability_tokens=2, n_reference=8)
    sub = SubsetArgs(K=12, S=3, designs=3)
    est = StrideEstimator(task.head, sub, ops_args).fit(train)
    assert est.design_.K == 36 and est.design_.S == 9 and len(est.members_) == 3
    # each design is the one-design estimator with seeds + e, and scores are the mean of their recoveries
    single = [StrideEstimator(task.head, replace(sub, designs=1, seed=e), replace(ops_args, seed=e)).fit(train) for e in range(3)]
    for e, s in enumerate(single):
        np.testing.assert_array_equal(est.members_[e].design.members, s.design_.members)
    expected = np.mean([s.scores(queries) for s in single], axis=0)
    np.testing.assert_allclose(est.scores(queries), expected, atol=1e-6)
    y, _ = est.measure(queries)
    assert y.shape == (5, 36)
    # save / load round trip (stacked design in subsets.safetensors, designs prefixed in one file)
    est.save(tmp_path / "ops.safetensors")
    est.design_.save(tmp_path / "subsets.safetensors")
    design = SubsetDesign.load(tmp_path / "subsets.safetensors", train.doc_ids)
    loaded = StrideEstimator(task.head, sub, ops_args).load(tmp_path / "ops.safetensors", design)
    np.testing.assert_allclose(loaded.scores(queries), est.scores(queries), atol=1e-6)
    np.testing.assert_allclose(loaded.reference_, est.reference_)
    # one design keeps the plain file layout and args.json without a `designs` key
    single[0].save(tmp_path / "one.safetensors")
    from safetensors.torch import load_file

    assert not any(k.startswith("d1.") for k in load_file(str(tmp_path / "one.safetensors")))
    assert "designs" not in SubsetArgs().to_dict() and SubsetArgs(designs=2).to_dict()["designs"] == 2
    with pytest.raises(StrideError):
        SubsetArgs(designs=0)
