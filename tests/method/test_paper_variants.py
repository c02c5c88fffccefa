"""The paper-fidelity operator options (PAPER.md D2/D3/D5/D8): logit-space steering, the paper's
linearity residual, token-proportional fidelity sampling and a member-free stability sample."""

import numpy as np
import pytest
import torch

from stride_core.method.activations import FeatureCache, features_in_memory
from stride_core.method.arguments import OperatorArgs, SubsetArgs
from stride_core.method.estimator import StrideEstimator
from stride_core.method.measurement import measure, measure_looped
from stride_core.method.operators import SteeringOperators, _TokenSampler, projection_residual_matrix
from stride_core.method.subsets import SubsetDesign
from stride_core.method.tasks import CausalLMTask

from test_engine import TEXTS, _Tok, _tiny


def _logit_ops(D, V, K=5, R=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    ops = SteeringOperators(D, V, K, R, space="logits")
    with torch.no_grad():
        ops.A.copy_(0.3 * torch.randn(K, R, V, generator=g))
    return ops


def test_logit_space_measurement_equals_looped_and_a_hook_on_the_logits():
    model = _tiny("gpt2")
    task = CausalLMTask(model, _Tok(), max_tokens=32)
    items = [(_Tok()(t)["input_ids"], 2 if i % 2 else 0) for i, t in enumerate(TEXTS)]
    q = features_in_memory(task, items, batch_size=3)
    ops = _logit_ops(32, 64)
    y, _ = measure(q, ops, task.head, logits_budget=64 * 40)  # tiny budget forces chunking
    assert np.allclose(y, measure_looped(q, ops, task.head), atol=1e-5)
    assert np.allclose(y, measure(q, ops, task.head, low_rank=False)[0], atol=1e-5)
    # a full forward whose output logits get B(h) a_k added (the project page's equation)
    ids, n_prompt = items[2]
    for k in range(ops.K):
        store = {}
        hh = task.layer_module.register_forward_hook(lambda m, i, o: store.__setitem__("h", o[0] if isinstance(o, tuple) else o))
        try:
            with torch.no_grad():
                out = model(torch.tensor([[0, *ids]]))
        finally:
            hh.remove()
        logits = out.logits[0, :-1]
        steered = logits + ops.delta_all(store["h"][0, :-1], torch.tensor([k]))[0]
        t = torch.tensor(ids)
        w = torch.ones(len(ids))
        w[:n_prompt] = 0
        ce = torch.nn.functional.cross_entropy
        expect = ((ce(logits, t, reduction="none") - ce(steered, t, reduction="none")) * w).sum().detach() / w.sum()
        assert abs(float(expect.detach()) - y[2, k]) < 1e-4


def test_logit_space_with_a_biased_head_is_not_shifted_by_the_bias():
    model = _tiny("gpt2")
    task = CausalLMTask(model, _Tok(), max_tokens=32)
    q = features_in_memory(task, [(_Tok()(t)["input_ids"], 0) for t in TEXTS], batch_size=3)
    head = torch.nn.Linear(32, 64)
    with torch.no_grad():
        head.bias.copy_(torch.randn(64, generator=torch.Generator().manual_seed(1)))
    ops = _logit_ops(32, 64)
    y, _ = measure(q, ops, head)
    assert np.allclose(y, measure_looped(q, ops, head), atol=1e-5)


def _cache(lengths, D=8, V=16, seed=0):
    g = np.random.default_rng(seed)
    n = int(sum(lengths))
    return FeatureCache(root=None, doc_ids=np.arange(len(lengths)), offsets=np.concatenate([[0], np.cumsum(lengths)]),
                        h=g.standard_normal((n, D)).astype(np.float32), z=g.standard_normal((n, D)).astype(np.float32),
                        target=g.integers(0, V, n), weight=np.ones(n, dtype=np.float32))


def test_token_sampling_weighs_documents_by_length_and_stays_in_the_subset():
    lengths = [1, 99, 10, 40, 5, 60]
    cache = _cache(lengths)
    design = SubsetDesign(members=np.array([[0], [0], [1], [1], [1], [0]]), K=2, doc_ids=np.arange(6))
    doc_of = cache.doc_of_token()
    for by, expect in (("token", {0: 1 / 160, 1: 99 / 160, 5: 60 / 160}), ("document", {0: 1 / 3, 1: 1 / 3, 5: 1 / 3})):
        s = _TokenSampler(cache, design, seed=0, by=by)
        rows = s.members(torch.tensor([0, 0]), 20000).numpy()
        docs = doc_of[rows.reshape(-1)]
        assert set(np.unique(docs)) <= {0, 1, 5}  # only members of subset 0
        for d, p in expect.items():
            assert abs((docs == d).mean() - p) < 0.02, (by, d)
    rows = _TokenSampler(cache, design, seed=0, by="token").members(torch.tensor([1]), 5000).numpy()
    assert set(np.unique(doc_of[rows.reshape(-1)])) == {2, 3, 4}


def test_stability_sample_excludes_the_subsets_members_only_when_asked():
    cache = _cache([3] * 40)
    design = SubsetDesign.random(np.arange(40), K=4, S=2, seed=0)  # each document is in half of the subsets
    k = torch.arange(4)
    for exclude in (False, True):
        rows = _TokenSampler(cache, design, seed=0, exclude_members=exclude).anywhere((4, 200), k).numpy()
        docs = cache.doc_of_token()[rows]  # (4, 200)
        inside = (design.members[docs] == np.arange(4)[:, None, None]).any(-1)
        assert inside.any() != exclude


def test_paper_linearity_residual_is_lower_for_additive_responses_than_for_noise():
    """The unnormalised, uncentred ridge residual at q = 2K: y = M w (10-sparse w) leaves less than half
    the residual of noise. (Only less than half: with N > K every y is M w for some dense w, so the loss
    can only favour the directions a sparse w fills; PAPER.md D3, docs/DESIGN.md.)"""
    design = SubsetDesign.random(np.arange(1000), K=600, S=5, seed=0)
    IminusP = projection_residual_matrix(design, q=1200, gamma=1.0, seed=0, center=False)
    g = torch.Generator().manual_seed(0)
    w = torch.zeros(1000)
    w[torch.randperm(1000, generator=g)[:10]] = torch.randn(10, generator=g)
    y_add = torch.sparse.mm(design.sparse(), w[:, None])[:, 0]
    y_noise = torch.randn(600, generator=g)
    res = lambda y: float((IminusP @ y).pow(2).sum() / y.pow(2).sum())  # noqa: E731
    assert res(y_add) < 0.5 * res(y_noise)


@pytest.mark.parametrize("opts", [dict(space="logits"), dict(linearity_weight=0.01, linearity_form="paper", jl_dim=20),
                                  dict(fidelity_sampling="document", stability_excludes_members=True)])
def test_operator_options_train_save_and_load(tmp_path, opts):
    model = _tiny("gpt2")
    task = CausalLMTask(model, _Tok(), max_tokens=32)
    texts = [t + " " + str(i) for i, t in enumerate(TEXTS * 6)]
    train = features_in_memory(task, [(_Tok()(t)["input_ids"], 0) for t in texts], batch_size=8)
    est = StrideEstimator(task.head, SubsetArgs(K=20, S=3), OperatorArgs(R=4, steps=40, subset_batch=20, **opts))
    est.fit(train)
    fid = [t["fidelity"] for t in est.trace_]
    assert np.isfinite(fid).all() and np.mean(fid[-5:]) < np.mean(fid[:5])
    if "linearity_weight" in opts:
        assert all(np.isfinite(t["linearity"]) for t in est.trace_)
    assert est.ops_.space == opts.get("space", "hidden")
    assert est.ops_.A.shape[-1] == (64 if opts.get("space") == "logits" else 32)
    s = est.scores(train)
    est.save(tmp_path / "ops.safetensors")
    back = StrideEstimator(task.head, SubsetArgs(K=20, S=3), OperatorArgs(R=4, **opts)).load(tmp_path / "ops.safetensors", est.design_)
    assert back.ops_.space == est.ops_.space
    assert np.allclose(back.scores(train), s, atol=1e-6)


def test_unknown_operator_options_are_clear_errors():
    from stride_core.errors import StrideError

    for bad in (dict(space="middle"), dict(linearity_form="ridge"), dict(fidelity_sampling="doc")):
        with pytest.raises(StrideError, match=next(iter(bad))):
            OperatorArgs(**bad)
    with pytest.raises(ValueError, match="space"):
        SteeringOperators(4, 4, 2, 1, space="middle")


def test_propagated_operator_measurement_matches_a_manual_forward_and_is_chunk_invariant():
    """stride-propagated (D2 (a)): steering the last block's output equals lm_head(ln_f(h + a_k B(h)))."""
    from stride_core.bench.propagated import _operators, measure_propagated, train_propagated

    model = _tiny("gpt2")
    for p in model.parameters():
        p.requires_grad_(False)
    block = model.transformer.h[1]
    ops = _operators(32, 4, 3)
    with torch.no_grad():
        ops.A.copy_(0.3 * torch.randn(4, 3, 32, generator=torch.Generator().manual_seed(0)))
    queries = [([0, *_Tok()(t)["input_ids"]], 2) for t in TEXTS]
    y = measure_propagated(model, block, ops, queries, K=4, subset_chunk=3)
    assert np.allclose(y, measure_propagated(model, block, ops, queries, K=4, subset_chunk=1), atol=1e-5)
    seq, n_prompt = queries[0]
    store = {}
    hh = block.register_forward_hook(lambda m, i, o: store.__setitem__("h", o[0] if isinstance(o, tuple) else o))
    with torch.no_grad():
        base_logits = model(torch.tensor([seq])).logits[0, :-1]
    hh.remove()
    t = torch.tensor(seq[1:])
    ce = torch.nn.functional.cross_entropy
    for k in range(4):
        with torch.no_grad():
            h = store["h"]
            steered = model.lm_head(model.transformer.ln_f(h + ops.delta(h, torch.tensor([k]))))[0, :-1]
        expect = (ce(base_logits, t, reduction="none") - ce(steered, t, reduction="none"))[n_prompt:].mean()
        assert abs(float(expect) - y[0, k]) < 1e-4
    # training lowers the members' loss: y of a training document is larger on its own subsets
    docs = [[0, *_Tok()(t + " " + str(i))["input_ids"]] for i, t in enumerate(TEXTS * 5)]
    design = SubsetDesign.random(np.arange(len(docs)), K=10, S=2, seed=0)
    ops = train_propagated(model, block, docs, design, R=4, steps=60, subset_batch=10, lr=1e-2)
    y = measure_propagated(model, block, ops, [(d, 0) for d in docs], K=10)
    own = np.zeros_like(y, dtype=bool)
    own[np.repeat(np.arange(len(docs)), 2), design.members.reshape(-1)] = True
    assert y[own].mean() > y[~own].mean() + 0.01
    assert not any(m._forward_hooks for m in model.modules())  # the steering hook is removed
