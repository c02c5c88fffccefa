"""Decoding the continuation to attribute. Context-aware decoding (`AttributeArgs.contrast`): HF generate with
PromptContrast equals a hand-written greedy loop of the same rule, and contrast 0 is plain greedy. The
repetition penalty acts on the continuation's own tokens only, unless `penalise_prompt`."""

import json
import math

import pytest
import torch

from stride_core.errors import StrideError
from stride_core.method.arguments import AttributeArgs
from stride_core.runs.prompts import PLAUSIBILITY, ContinuationRepetitionPenalty, PromptContrast


@pytest.fixture(scope="module")
def model():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    m = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=64, n_embd=32, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=1))
    return m.eval()


def _by_hand(model, prompt: list[int], n: int, strength: float) -> list[int]:
    """Greedy loop: argmax over plausible tokens of (1 + s) log p(t | prompt, so far) - s log p(t | so far)."""
    out = []
    for _ in range(n):
        with torch.no_grad():
            cond = model(torch.tensor([prompt + out])).logits[0, -1].log_softmax(-1)
            bare = model(torch.tensor([[0] + out])).logits[0, -1].log_softmax(-1)
        score = (1 + strength) * cond - strength * bare
        score[cond < cond.max() + math.log(PLAUSIBILITY)] = float("-inf")
        out.append(int(score.argmax()))
    return out


@pytest.mark.parametrize("strength", [0.5, 2.0])
def test_generate_with_contrast_equals_the_rule_by_hand(model, strength):
    from transformers import LogitsProcessorList

    prompt = [0, 5, 9, 13, 7]
    inp = torch.tensor([prompt])
    with torch.no_grad():
        gen = model.generate(inp, attention_mask=torch.ones_like(inp), max_new_tokens=8, do_sample=False,
                             logits_processor=LogitsProcessorList([PromptContrast(model, 0, len(prompt), strength)]),
                             pad_token_id=1, eos_token_id=None)
    assert gen[0, len(prompt):].tolist() == _by_hand(model, prompt, 8, strength)


def test_contrast_changes_the_text_and_zero_is_greedy(model):
    prompt = [0, 5, 9, 13, 7]
    greedy = _by_hand(model, prompt, 8, 0.0)
    with torch.no_grad():
        plain = model.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False, pad_token_id=1, eos_token_id=None)
    # strength 0 keeps only the plausibility mask, which never removes the argmax: plain greedy
    assert plain[0, len(prompt):].tolist() == greedy
    assert any(_by_hand(model, prompt, 8, s) != greedy for s in (1.0, 3.0))


def _penalised_by_hand(model, prompt: list[int], n: int, penalty: float, on_prompt: bool) -> list[int]:
    """Greedy loop with the CTRL penalty on every token seen so far (on_prompt) or on the generated ones only."""
    out = []
    for _ in range(n):
        with torch.no_grad():
            s = model(torch.tensor([prompt + out])).logits[0, -1].clone()
        for t in set(out) | (set(prompt) if on_prompt else set()):
            s[t] = s[t] / penalty if s[t] > 0 else s[t] * penalty
        out.append(int(s.argmax()))
    return out


def test_repetition_penalty_spares_the_prompt_unless_asked(model):
    from transformers import LogitsProcessorList

    prompt, n, pen = [0, 5, 9, 13, 7, 5], 10, 3.0
    inp = torch.tensor([prompt])
    with torch.no_grad():
        ours = model.generate(inp, attention_mask=torch.ones_like(inp), max_new_tokens=n, do_sample=False,
                              logits_processor=LogitsProcessorList([ContinuationRepetitionPenalty(len(prompt), pen)]),
                              pad_token_id=1, eos_token_id=None)
        hf = model.generate(inp, attention_mask=torch.ones_like(inp), max_new_tokens=n, do_sample=False,
                            repetition_penalty=pen, pad_token_id=1, eos_token_id=None)
    assert ours[0, len(prompt):].tolist() == _penalised_by_hand(model, prompt, n, pen, on_prompt=False)
    assert hf[0, len(prompt):].tolist() == _penalised_by_hand(model, prompt, n, pen, on_prompt=True)
    # one step on planted scores: a prompt token keeps its score, a generated token (seen twice) is penalised once
    scores = torch.tensor([[2.0, -2.0, 4.0, 1.0]])
    ids = torch.tensor([[0, 1, 2, 2]])  # prompt [0, 1], generated [2, 2]
    out = ContinuationRepetitionPenalty(2, 2.0)(ids, scores)
    assert out.tolist() == [[2.0, -2.0, 2.0, 1.0]]
    assert ContinuationRepetitionPenalty(4, 2.0)(ids, scores).tolist() == scores.tolist()  # nothing generated yet


def test_generate_spares_the_prompt_by_default(model):
    """`generate` (the product's path) follows the rule of `penalise_prompt`, and the setting changes the text."""
    from stride_core.runs.prompts import generate

    class Tok:
        pad_token_id, eos_token_id = 1, 1

        def decode(self, ids):
            return " ".join(map(str, ids))

    class Task:
        tokenizer, bos, device, max_tokens, context = Tok(), 0, "cpu", 64, 64

    Task.model = model
    prompt = [5, 9, 13, 7, 5]
    texts = {}
    for flag in (False, True):
        g = generate(Task(), [{"query_id": "a", "prompt": "p", "prompt_ids": prompt}],
                     AttributeArgs(max_new_tokens=10, repetition_penalty=3.0, no_repeat_ngram_size=0, penalise_prompt=flag))[0]
        assert g["continuation_ids"] == _penalised_by_hand(model, [0, *prompt], 10, 3.0, on_prompt=flag)
        texts[flag] = g["continuation_ids"]
    assert texts[False] != texts[True]
    with pytest.raises(StrideError, match="penalise_prompt"):
        AttributeArgs(penalise_prompt="yes")


def test_contrast_is_validated():
    assert AttributeArgs().contrast >= 0
    with pytest.raises(StrideError, match="contrast"):
        AttributeArgs(contrast=-1.0)
    with pytest.raises(StrideError, match="contrast"):
        AttributeArgs(contrast=float("nan"))


def test_continuation_metrics_tell_generic_from_specific_text():
    from stride_core.bench.decoding import continuation_metrics

    corpus = ["json encodes objects", "sockets connect hosts", "csv reads rows", "the default value is used"]
    prompts = ["the json module", "a socket to a host", "the csv module"]
    specific = continuation_metrics(prompts, ["encodes json objects", "connects sockets to hosts", "reads csv rows"], corpus)
    generic = continuation_metrics(prompts, ["the default value is used"] * 3, corpus)
    assert specific["specificity"] > 0.2 > generic["specificity"] == pytest.approx(0.0, abs=1e-9)
    assert generic["cross_sim"] == pytest.approx(1.0) and specific["cross_sim"] < 0.5
    assert specific["distinct2"] == 1.0 and generic["distinct2"] < 0.5


def test_decoding_bench_reports_each_strength(small_run, tmp_path, capsys):
    from stride_core.cli import main

    ws, _, _ = small_run
    p = tmp_path / "p.txt"
    p.write_text("The json module\nA socket connects to\nThe csv module reads\n")
    rc = main(["--workspace", str(ws.root), "--no-progress", "bench", "decoding", "--run", "r1", "--out", str(tmp_path / "d"),
               "--prompts", str(p), "--contrast", "0,1", "--max-new-tokens", "6", "--device", "cpu"])
    assert rc == 0
    res = json.loads((tmp_path / "d" / "results.json").read_text())
    # each strength, and the plain decoding with transformers' prompt-penalising rule beside it
    assert set(res["results"]) == {"0", "1", "0, prompt penalised"} and len(res["continuations"]["1"]) == 3
    for r in res["results"].values():
        assert 0 < r["nll"] < 20 and -1 <= r["specificity"] <= 1
    assert "The csv module reads" in (tmp_path / "d" / "continuations.md").read_text()
    assert main(["--workspace", str(ws.root), "bench", "decoding", "--run", "r1", "--out", str(tmp_path / "e"),
                 "--contrast", "x"]) == 2
