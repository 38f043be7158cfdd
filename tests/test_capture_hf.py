"""The capture path on Hugging Face transformers built from tiny configs (marked ``hf``).

Their root forwards fail in transformers' output decorators, so they take the capture path;
the traced submodules lie inside the layer stacks, and a node there gives a hook's value and
gradient, bitwise.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
from torch import nn

import fxtap
from fxtap.capture import CaptureExtractor
from support.checker import bitwise_equal, hook_gradient, preserved, tensor_grads

pytestmark = pytest.mark.hf

_ENC = {"hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 2}
_ENC |= {"intermediate_size": 37, "vocab_size": 100, "max_position_embeddings": 64}


def _model(name: str) -> nn.Module:
    t = pytest.importorskip("transformers")
    if name == "bert":
        return t.BertModel(t.BertConfig(**_ENC))
    if name == "gpt2":
        config = t.GPT2Config(n_embd=32, n_layer=3, n_head=2, vocab_size=100, n_positions=64)
        config.bos_token_id = config.eos_token_id = 1
        return t.GPT2Model(config)
    return t.LlamaModel(t.LlamaConfig(**_ENC, num_key_value_heads=1))


#: model -> (the stack's prefix, a module inside a traced part of its second layer)
CASES = {
    "bert": ("encoder.layer.", "encoder.layer.1.output.dense"),
    "gpt2": ("h.", "h.1.mlp.c_proj"),
    "llama": ("layers.", "layers.1.mlp.down_proj"),
}


def score(output: Any) -> torch.Tensor:
    return output.last_hidden_state[0, 1].sum()


@pytest.mark.parametrize("name", list(CASES))
def test_islands_inside_layer_stacks_give_hook_values_and_gradients(name: str) -> None:
    torch.manual_seed(0)
    model = _model(name).eval()
    stack, path = CASES[name]
    ids = torch.randint(3, 100, (1, 8), generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        ex = fxtap.create_feature_extractor(model, {path: "tap", ":output": "out"}, tracer="fx")
    assert isinstance(ex, CaptureExtractor)
    assert any(p.startswith(stack) for p in ex.islands["eval"]), ex.islands
    # a module traced through (gpt2's Conv1D) is named by its nodes; the query takes the last
    assert any(n == path or n.startswith(path + ".") for n in ex.node_names("eval"))
    value, expected = hook_gradient(model, path, [ids], score)
    ex.eval()
    with preserved(model):
        out = ex(ids)
        got = tensor_grads(score(out["out"]), out["tap"])
    assert bitwise_equal(out["tap"], value)
    assert got[0] is not None and bitwise_equal(got, expected)
    with torch.no_grad():
        assert bitwise_equal(out["out"].last_hidden_state, model(ids).last_hidden_state)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", list(CASES))
def test_capture_extractors_load_from_the_safe_format(name: str, training: bool, tmp_path) -> None:
    """The model (stored as its allowlisted class, config and weights, rebuilt by
    ``_from_config``) loads without trust; values and gradients equal forward hooks on the
    unmodified model."""
    import copy

    torch.manual_seed(0)
    model = _model(name).train(training)
    _stack, path = CASES[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        ex = fxtap.create_feature_extractor(model, {path: "tap", ":output": "out"}, tracer="fx")
    loaded = fxtap.load(fxtap.save(ex, tmp_path / f"{name}.fxtap"))
    assert isinstance(loaded, CaptureExtractor) and loaded.training == training
    assert type(loaded.model.config) is type(model.config)
    assert loaded.model.config.to_dict() == model.config.to_dict()
    ids = torch.randint(3, 100, (2, 8), generator=torch.Generator().manual_seed(0))
    value, expected = hook_gradient(copy.deepcopy(model), path, [ids], score, seed=0)
    torch.manual_seed(0)  # the same dropout draws in train mode
    out = loaded(ids)
    got = tensor_grads(score(out["out"]), out["tap"])
    assert bitwise_equal(out["tap"], value)
    assert got[0] is not None and bitwise_equal(got, expected)


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_a_functional_tap_in_code_the_first_trace_skipped(training: bool) -> None:
    """distilbert's embeddings slice a buffer by a traced length when position_ids is None
    (``self.position_ids[:, :seq_length]``): the call-time trace reads buffers as proxies."""
    t = pytest.importorskip("transformers")
    config = t.DistilBertConfig(
        dim=32, n_layers=2, n_heads=2, hidden_dim=37, vocab_size=100, max_position_embeddings=64
    )
    model = t.DistilBertModel(config).train(training)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        ex = fxtap.create_feature_extractor(model, {"embeddings.add": "add"}, tracer="fx")
    assert isinstance(ex, CaptureExtractor)
    ids = torch.randint(3, 100, (2, 8), generator=torch.Generator().manual_seed(0))
    seen: list[torch.Tensor] = []
    handle = model.embeddings.LayerNorm.register_forward_pre_hook(
        lambda m, args: seen.append(args[0])
    )
    torch.manual_seed(0)
    model(ids)
    handle.remove()
    # gradients too: the tap is on the autograd path, and reaches the model's own parameters
    # NOTE: the reference's are taken first: the extractor's first call in train mode writes
    # the model's buffers back in place (same values), which the model's backward refuses
    params = list(model.parameters())
    want = torch.autograd.grad(seen[0].sum(), params, allow_unused=True)
    torch.manual_seed(0)
    got = ex(ids)["add"]
    assert bitwise_equal(got, seen[0])
    grads = torch.autograd.grad(got.sum(), params, allow_unused=True)
    assert [g is None for g in grads] == [g is None for g in want]
    assert any(g is not None for g in grads)
    assert all(g is None or bitwise_equal(g, w) for g, w in zip(grads, want))
