"""Peer adapters of the LDS harness (stride_core/bench/peers.py) at toy size.

The library tests skip cleanly when kronfluence / dattri are not installed (CI installs only `dev`).
They check the sign convention and the indexing with a self-influence probe: when the queries *are*
training examples, each query's own training example must be scored highest (positive = helps)."""

import dataclasses
import importlib.util

import numpy as np
import pytest

from stride_core.bench import peers
from stride_core.bench.harness import METHODS, PEERS, run_lds_bench

PEER_NAMES = ["kronfluence", "dattri-trak", "dattri-logra"]
# TRAK inverts the (proj_dim x proj_dim) kernel of projected train gradients, singular with fewer
# training examples than dimensions: the toy contexts below have ~200, the benchmarks > 512
TOY_KWARGS = {"dattri-trak": {"proj_dim": 64}}


def _installed(package):
    try:
        return importlib.util.find_spec(package) is not None
    except ValueError:
        return False


# skip before the (slow) context fixtures are built when the library is missing
PEER_PARAMS = [pytest.param(n, marks=pytest.mark.skipif(not _installed(PEERS[n]), reason=f"{PEERS[n]} not installed"))
               for n in PEER_NAMES]


def test_peers_are_registered_with_their_packages():
    for name in PEER_NAMES:
        assert METHODS[name] is peers.PEER_METHODS[name]
        assert PEERS[name] in ("kronfluence", "dattri")


def test_sum_windows_adds_each_documents_windows():
    s = np.array([[1.0, 2.0, 3.0, 4.0], [0.5, 0.0, -1.0, 2.0]])
    owner = np.array([0, 0, 2, 2])
    out = peers.sum_windows(s, owner, 3)
    assert np.allclose(out, [[3.0, 0.0, 7.0], [0.5, 0.0, 1.0]])


def test_conv1d_to_linear_keeps_the_logits():
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=2, n_head=2)).eval()
    x = torch.randint(0, 50, (2, 10))
    with torch.no_grad():
        before = model(input_ids=x).logits
    n = peers.conv1d_to_linear(model)
    assert n == 8 and not any(isinstance(m, Conv1D) for m in model.modules())
    with torch.no_grad():
        after = model(input_ids=x).logits
    assert torch.allclose(before, after, atol=1e-5)


def test_peer_unavailable_is_recorded_with_its_reason(tmp_path):
    def cannot(ctx):
        raise peers.PeerUnavailable("needs a GPU for this toy reason")

    res = run_lds_bench("digits-mlp", tmp_path / "out", models=3, queries=3, methods="random,nogo", device="cpu",
                        extra_methods={"nogo": cannot}, cache_dir=tmp_path / "cache", progress=False,
                        setting_overrides={"epochs": 2}, print_table=False)
    assert [r["method"] for r in res["rows"]] == ["random"]
    assert res["skipped"] == [{"method": "nogo", "reason": "cannot run on digits-mlp: needs a GPU for this toy reason"}]


# --------------------------------------------------------------------------- the libraries themselves


@pytest.fixture(scope="module")
def digits_self_ctx(tmp_path_factory):
    """A small digits context whose 8 queries are its first 8 training images."""
    import torch

    from stride_core.bench.settings import get_setting

    torch.manual_seed(0)
    s = get_setting("digits-mlp", n_train=200, n_query=8, epochs=15)
    ctx = s.build_context(tmp_path_factory.mktemp("digits"), device="cpu", progress=False)
    return dataclasses.replace(ctx, X_query=ctx.X_train[:8].copy(), y_query=ctx.y_train[:8].copy())


@pytest.fixture(scope="module")
def lm_self_ctx(tmp_path_factory):
    """A tiny tiny-lm context (one-layer model) whose 6 queries are cut from training documents."""
    from stride_core.bench.settings import get_setting

    s = get_setting("tiny-lm", n_train=40, n_query=2, n_val_docs=5, vocab_size=300, n_layer=1, n_embd=32,
                    n_head=2, epochs=2.0)
    ctx = s.build_context(tmp_path_factory.mktemp("lm"), device="cpu", progress=False)
    docs = [i for i, ids in enumerate(ctx.train_token_ids) if len(ids) >= 20][:6]
    prompts = [ctx.train_token_ids[d][:8] for d in docs]
    conts = [ctx.train_token_ids[d][8:ctx.block_size - 1] for d in docs]
    ctx = dataclasses.replace(ctx, query_prompt_ids=prompts, query_cont_ids=conts, query_prompts=[""] * 6,
                              query_continuations=[""] * 6, query_texts=[""] * 6)
    return ctx, np.asarray(docs)


def _check_self_influence(scores, own, n_train, min_top=0.75):
    scores = np.asarray(scores)
    assert scores.shape == (len(own), n_train) and np.isfinite(scores).all()
    rows = np.arange(len(own))
    assert (scores[rows, own] > 0).all(), "a query's own training example must help it (positive score)"
    top = scores.argmax(1) == own
    assert top.mean() >= min_top, f"own example ranked first for only {top.sum()}/{len(own)} queries"


@pytest.mark.parametrize("name", PEER_PARAMS)
def test_peer_self_influence_digits(name, digits_self_ctx):
    scores, timing = peers.PEER_METHODS[name](digits_self_ctx, **TOY_KWARGS.get(name, {}))
    _check_self_influence(scores, np.arange(8), digits_self_ctx.n_train)
    assert timing["fit_seconds"] > 0 and timing["query_seconds"] > 0


@pytest.mark.parametrize("name", PEER_PARAMS)
def test_peer_self_influence_tiny_lm(name, lm_self_ctx):
    ctx, own = lm_self_ctx
    scores, timing = peers.PEER_METHODS[name](ctx, **TOY_KWARGS.get(name, {}))
    _check_self_influence(scores, own, ctx.n_train, min_top=0.5)
    assert timing["fit_seconds"] > 0


@pytest.mark.skipif(not _installed("kronfluence"), reason="kronfluence not installed")
def test_kronfluence_is_reproducible_and_leaves_logging_alone(digits_self_ctx):
    import logging

    root = logging.getLogger()
    before = root.level
    root.setLevel(logging.DEBUG)
    try:
        a, _ = peers.kronfluence_scores(digits_self_ctx)
        assert root.level == logging.DEBUG  # kronfluence sets the root level when given a log_level
        b, _ = peers.kronfluence_scores(digits_self_ctx)
    finally:
        root.setLevel(before)
    assert np.array_equal(a, b)  # the sampled Fisher labels are seeded
