"""LDS benchmark: metric on planted truths, ground-truth cache, digits harness end to end, CLI."""

import json

import numpy as np
import pytest

from stride_core.bench.lds import lds, lds_summary, query_specific_lds, spearman_columns
from stride_core.errors import StrideError


def _planted(M=300, N=120, Q=6, seed=0):
    rng = np.random.default_rng(seed)
    masks = rng.random((M, N)) < 0.5
    w = rng.standard_normal((Q, N))
    outputs = -(masks @ w.T)  # positive w = including the document lowers the loss
    return masks, w, outputs, rng


# -------------------------------------------------------------------------------------- metric


def test_lds_planted_linear_truth_is_one_and_random_is_zero():
    masks, w, outputs, rng = _planted()
    assert np.allclose(lds(w, masks, outputs), 1.0)
    rand = lds(rng.standard_normal(w.shape), masks, outputs)
    assert abs(rand.mean()) < 0.1
    assert lds(-w, masks, outputs).mean() < -0.99  # sign convention: positive score = helps
    noisy = lds(w, masks, outputs + rng.normal(0, 0.5 * outputs.std(), outputs.shape))
    assert 0.6 < noisy.mean() < 1.0
    # higher_output_is_worse=False flips the target
    assert np.allclose(lds(w, masks, -outputs, higher_output_is_worse=False), 1.0)


def test_constant_predictions_or_outputs_count_as_zero():
    masks, w, outputs, _ = _planted(Q=4)
    scores = w.copy()
    scores[1] = 0.0  # constant prediction for query 1
    per_q = lds(scores, masks, outputs)
    assert np.isfinite(per_q).all() and per_q[1] == 0.0
    assert np.isclose(per_q.mean(), 3 / 4)
    out = outputs.copy()
    out[:, 2] = 5.0  # constant output for query 2
    per_q = lds(w, masks, out)
    assert per_q[2] == 0.0 and np.isclose(per_q.mean(), 3 / 4)
    assert spearman_columns(np.ones((5, 2)), np.arange(10.0).reshape(5, 2)).tolist() == [0.0, 0.0]


def test_query_specific_lds_removes_generic_effects():
    masks, w, outputs, _ = _planted(Q=5)
    generic = masks @ np.random.default_rng(1).standard_normal(masks.shape[1])
    pure_generic = np.repeat(generic[:, None], 5, axis=1)
    assert lds(-np.ones_like(w), masks, pure_generic).std() == 0  # the same for every query
    assert np.all(query_specific_lds(w, masks, pure_generic) == 0.0)  # centred: nothing left
    mixed = outputs + 10 * pure_generic
    assert query_specific_lds(w, masks, mixed).mean() > lds(w, masks, mixed).mean()


def test_lds_summary_and_input_checks():
    s = lds_summary(np.array([0.1, 0.2, 0.3, 0.4]))
    assert np.isclose(s["mean"], 0.25) and s["ci_low"] <= 0.25 <= s["ci_high"] and s["n"] == 4
    assert lds_summary(np.array([0.1, 0.2, 0.3, 0.4])) == s  # seeded
    masks, w, outputs, _ = _planted()
    with pytest.raises(StrideError):
        lds(w[:, :-1], masks, outputs)
    with pytest.raises(StrideError):
        lds(w, masks, outputs[:, :-1])
    with pytest.raises(StrideError):
        lds_summary(np.array([]))


# --------------------------------------------------------------------------------- ground truth


def _digits(**kw):
    from stride_core.bench.settings import get_setting

    return get_setting("digits-mlp", **{"n_query": 5, "n_models": 3, "epochs": 3, **kw})


def test_masks_are_independent_per_model_and_training_is_deterministic(tmp_path):
    s = _digits()
    m0, m1 = s.mask(0), s.mask(1)
    assert m0.shape == (1000,) and m0.dtype == bool and 0.4 < m0.mean() < 0.6
    assert not np.array_equal(m0, m1)
    assert np.array_equal(m0, _digits(n_models=50, epochs=5).mask(0))  # depends on (mask_seed, m) only
    ctx = s.build_context(tmp_path, device="cpu", progress=False)
    a = s.query_outputs(ctx, s.train_subset(ctx, m0, 7))["loss"]
    b = s.query_outputs(ctx, s.train_subset(ctx, m0, 7))["loss"]
    assert np.array_equal(a, b)
    assert [n for n, _ in ctx.model.named_children()] == ["fc1", "act1", "fc2", "act2", "fc3"]


def test_ground_truth_cache_prefix_extend_and_key(tmp_path, monkeypatch):
    from stride_core.bench import settings as st
    from stride_core.bench.ground_truth import compute_ground_truth

    calls = []
    orig = st.DigitsSetting.train_subset

    def counting(self, ctx, mask, seed, device="cpu"):
        calls.append(seed)
        return orig(self, ctx, mask, seed, device)

    monkeypatch.setattr(st.DigitsSetting, "train_subset", counting)
    s = _digits()
    gt = compute_ground_truth(s, tmp_path, progress=False)
    assert gt.masks.shape == (3, 1000) and gt.outputs.shape == (3, 5) and gt.extras["margin"].shape == (3, 5)
    assert len(calls) == 3 and gt.n_trained == 3
    again = compute_ground_truth(s, tmp_path, progress=False)  # same arguments: reuse
    assert len(calls) == 3 and again.n_trained == 0 and np.array_equal(again.outputs, gt.outputs)
    fewer = compute_ground_truth(_digits(n_query=3), tmp_path, n_models=2, progress=False)  # prefix
    assert len(calls) == 3 and np.array_equal(fewer.outputs, gt.outputs[:2, :3])
    more = compute_ground_truth(s, tmp_path, n_models=4, progress=False)  # extend: only model 3
    assert len(calls) == 4 and np.array_equal(more.outputs[:3], gt.outputs)
    assert np.array_equal(more.masks[3], s.mask(3))
    changed = compute_ground_truth(_digits(epochs=4), tmp_path, progress=False)  # changed argument
    assert len(calls) == 7 and changed.path != gt.path


# ------------------------------------------------------------------------------------- harness


def test_digits_harness_end_to_end(tmp_path, monkeypatch):
    from stride_core.bench import harness
    from stride_core.bench.harness import METHODS, run_lds_bench

    def oracle_free_custom(ctx):
        return np.zeros((ctx.n_query, ctx.n_train)), {"fit_seconds": 0.0, "query_seconds": 0.0}

    def never_called(ctx):
        raise AssertionError("a peer whose package is missing must not run")

    # a registered peer whose package is not importable is skipped as "not installed"
    monkeypatch.setitem(harness.METHODS, "fakepeer", never_called)
    monkeypatch.setitem(harness.PEERS, "fakepeer", "stride_no_such_package_xyz")
    res = run_lds_bench("digits-mlp", tmp_path / "out", models=4, queries=5,
                        methods="random,generic,tfidf,repsim,graddot,custom,fakepeer", device="cpu",
                        extra_methods={"custom": oracle_free_custom}, cache_dir=tmp_path / "cache",
                        progress=False, setting_overrides={"epochs": 5}, print_table=False)
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(res["rows"]))
    rows = {r["method"]: r for r in saved["rows"]}
    assert set(rows) == {"random", "generic", "tfidf", "repsim", "graddot", "custom"}
    keys = {"setting", "method", "lds_mean", "lds_ci_low", "lds_ci_high", "qs_lds_mean", "fit_seconds",
            "query_seconds", "peak_host_mb", "peak_gpu_mb", "device", "n_models", "n_queries"}
    for r in rows.values():
        assert keys <= set(r) and r["n_models"] == 4 and r["n_queries"] == 5 and r["device"] == "cpu"
        assert all(np.isfinite(r[k]) for k in ("lds_mean", "qs_lds_mean", "peak_host_mb"))
    assert rows["custom"]["lds_mean"] == 0.0  # constant predictions count as 0
    assert [s["method"] for s in saved["skipped"]] == ["fakepeer"]
    assert "not installed" in saved["skipped"][0]["reason"]
    assert saved["base_model"]["train_acc"] > 0.5 and len(saved["per_query"]["tfidf"]["lds"]) == 5
    # every method's (Q, N) scores are kept for offline checks
    assert np.load(tmp_path / "out" / "scores" / "tfidf.npy").shape == (5, saved["ground_truth"]["n_train"])
    assert "custom" not in METHODS  # extra_methods do not leak into the registry
    again = run_lds_bench("digits-mlp", tmp_path / "out2", models=4, queries=5, methods=["random"], device="cpu",
                          cache_dir=tmp_path / "cache", progress=False, setting_overrides={"epochs": 5},
                          print_table=False)
    assert again["ground_truth"]["n_trained_now"] == 0
    with pytest.raises(StrideError, match="unknown method"):
        run_lds_bench("digits-mlp", tmp_path / "o3", models=2, queries=2, methods="nope", device="cpu",
                      cache_dir=tmp_path / "cache", progress=False, print_table=False)


def test_bench_cli(tmp_path, capsys):
    from stride_core.cli import main

    rc = main(["bench", "lds", "--setting", "digits-mlp", "--models", "3", "--queries", "4", "--methods",
               "random,tfidf", "--device", "cpu", "--cache", str(tmp_path / "c"), "--out", str(tmp_path / "o"),
               "--no-progress"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "tfidf" in out and (tmp_path / "o" / "results.json").exists()
    assert main(["bench", "lds", "--setting", "digits-mlp", "--methods", "nope", "--cache", str(tmp_path / "c"),
                 "--out", str(tmp_path / "o"), "--models", "2"]) == 2


@pytest.mark.slow
def test_tiny_lm_ground_truth_and_baselines_smoke(tmp_path):
    from stride_core.bench.baselines import BASELINES
    from stride_core.bench.ground_truth import compute_ground_truth
    from stride_core.bench.settings import get_setting
    from stride_core.store.models import load_model_and_tokenizer

    s = get_setting("tiny-lm", n_train=80, n_query=3, n_models=2, epochs=1, vocab_size=320, block_size=32,
                    n_val_docs=20, min_query_tokens=16)
    ctx = s.build_context(tmp_path, device="cpu", progress=False)
    model, tok = load_model_and_tokenizer(ctx.model_dir)  # HF format, safetensors
    assert len(ctx.train_texts) == 80 and ctx.n_query == 3
    assert not set(ctx.query_ids) & set(ctx.train_ids.tolist())  # queries are held out
    for p, c, pi, ci, t in zip(ctx.query_prompts, ctx.query_continuations, ctx.query_prompt_ids,
                               ctx.query_cont_ids, ctx.query_texts):
        assert p + c == t
        assert tok(p, add_special_tokens=False)["input_ids"] == pi and tok(c, add_special_tokens=False)["input_ids"] == ci
    gt = compute_ground_truth(s, tmp_path, ctx=ctx, progress=False)
    assert gt.outputs.shape == (2, 3) and np.isfinite(gt.outputs).all()
    for name, fn in BASELINES.items():
        scores, timing = fn(ctx)
        assert scores.shape == (3, 80) and np.isfinite(scores).all(), name
        assert {"fit_seconds", "query_seconds"} <= set(timing)


def test_rerun_consistency_is_one_for_same_init(tmp_path):
    from stride_core.bench.ground_truth import compute_ground_truth, rerun_consistency

    s = _digits(same_init=True, n_models=4)
    ctx = s.build_context(tmp_path, device="cpu", progress=False)
    gt = compute_ground_truth(s, tmp_path, ctx=ctx, progress=False)
    r = rerun_consistency(s, ctx, gt, n_masks=4, progress=False)
    assert r["n_masks"] == 4 and np.isclose(r["mean_rho"], 1.0)


def test_ground_truth_workers_match_serial(tmp_path):
    from stride_core.bench.ground_truth import compute_ground_truth

    s = _digits(n_models=2, epochs=2)
    serial = compute_ground_truth(s, tmp_path / "a", progress=False)
    pooled = compute_ground_truth(s, tmp_path / "b", progress=False, workers=2)
    assert pooled.n_trained == 2 and np.array_equal(serial.masks, pooled.masks)
    assert np.array_equal(serial.outputs, pooled.outputs)  # same thread count: bit-identical


def test_paper_protocol_setting():
    """tiny-lm-paper (PAPER.md D1): the paper's 30% subsets, more ground-truth models, a deeper model; its own caches."""
    from stride_core.bench.settings import SETTINGS, get_setting

    p, t = get_setting("tiny-lm-paper"), get_setting("tiny-lm")
    assert (p.mask_fraction, p.n_models, p.n_layer) == (0.3, 64, 4) and (t.mask_fraction, t.n_models, t.n_layer) == (0.5, 32, 2)
    assert p.base_key() != t.base_key() and p.name in SETTINGS
    assert abs(p.mask(0).mean() - 0.3) < 0.06
