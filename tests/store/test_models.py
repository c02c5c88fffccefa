import json

import pytest

from stride_core.errors import ModelError
from stride_core.store.models import check_model_dir, load_model_and_tokenizer


def test_train_tiny_ci_beats_unigram_and_reloads(pydocs_ws):
    import torch
    from transformers import AutoModelForCausalLM

    ws, model_dir = pydocs_ws
    metrics = json.loads((model_dir / "stride_training.json").read_text())
    assert metrics["val_loss"] < metrics["unigram_val_loss"] - 0.3
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True)
    model2, tok = load_model_and_tokenizer(model_dir)
    ids = tok("The json module", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, model2(ids).logits)


def _fake_dir(tmp_path, files):
    d = tmp_path / "m"
    d.mkdir()
    for name, content in files.items():
        (d / name).write_text(content)
    return d


@pytest.mark.parametrize(
    "files, fragment",
    [
        ({}, "no config.json"),
        ({"config.json": "{"}, "not valid JSON"),
        ({"config.json": "{}"}, "no \\*.safetensors"),
        ({"config.json": "{}", "pytorch_model.bin": "x"}, "only pickled weights"),
        ({"config.json": json.dumps({"auto_map": {"AutoModel": "m.M"}}), "model.safetensors": ""}, "custom code"),
        ({"config.json": "{}", "modeling_x.py": "import os", "model.safetensors": ""}, "custom code"),
    ],
)
def test_unsafe_or_broken_model_dirs(tmp_path, files, fragment):
    with pytest.raises(ModelError, match=fragment):
        check_model_dir(_fake_dir(tmp_path, files))


def test_missing_model_dir(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_model_and_tokenizer(tmp_path / "nope")
