"""A call of an extractor that fails on its inputs says which input and what was expected."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import fxtap
from fxtap.errors import InputShapeError, InputTypeError, NodeNotFoundError


@pytest.fixture(scope="module")
def resnet() -> fxtap.FeatureExtractor:
    return fxtap.create_feature_extractor(torchvision.models.resnet18().eval(), ["layer2"])


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text and "Proxy" not in text
    return text


def test_vit_at_128_pixels_names_the_size_it_expects():
    model = torchvision.models.vit_b_16().eval()
    extractor = fxtap.create_feature_extractor(model, ["encoder"])
    with pytest.raises(InputShapeError) as exc:
        extractor(torch.rand(1, 3, 128, 128))
    text = _one_line(exc)
    assert "input 'x' of shape 1x3x128x128 does not fit VisionTransformer" in text
    assert "Expected 224" in text and "e.g. 1x3x224x224" in text
    assert isinstance(exc.value.__cause__, AssertionError)


def test_wrong_channels(resnet, capsys):
    with pytest.raises(InputShapeError) as exc:
        resnet(torch.rand(1, 1, 32, 32))
    text = _one_line(exc)
    assert "input 'x' of shape 1x1x32x32 does not fit ResNet" in text
    assert "to have 3 channels" in text and "e.g. 1x3x" in text
    assert capsys.readouterr().err == ""  # torch.fx's printout of the generated code is not shown


def test_numpy_array(resnet):
    with pytest.raises(InputTypeError) as exc:
        resnet(np.zeros((1, 3, 32, 32), dtype=np.float32))
    text = _one_line(exc)
    assert "input 'x' of ResNet is a numpy.ndarray of shape 1x3x32x32" in text
    assert "expected a torch.Tensor" in text and "torch.from_numpy(x)" in text
    assert isinstance(exc.value, TypeError)


@pytest.mark.parametrize(
    ("dtype", "fix"),
    [(torch.uint8, "x.to(torch.float32) / 255"), (torch.float64, "x.to(torch.float32)")],
)
def test_a_dtype_other_than_the_weights(resnet, dtype, fix):
    with pytest.raises(InputTypeError) as exc:
        resnet(torch.zeros(1, 3, 32, 32, dtype=dtype))
    text = _one_line(exc)
    name = str(dtype).removeprefix("torch.")
    assert f"input 'x' of ResNet is a {name} tensor; expected float32" in text and fix in text


def test_failures_that_are_not_the_inputs_stay_as_they_are():
    class Tokens(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(10, 4)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.embed(ids).sum(1)

    extractor = fxtap.create_feature_extractor(Tokens(), ["embed"])
    assert extractor(torch.tensor([[1, 2]]))["embed"].shape == (1, 2, 4)
    with pytest.raises(IndexError) as exc:
        extractor(torch.tensor([[1, 20]]))  # an id out of range: a value, not a dtype or shape
    assert not isinstance(exc.value, fxtap.FxtapError)


def test_explained_after_pickle_and_load(resnet, tmp_path):
    import io

    buffer = io.BytesIO()
    torch.save(resnet, buffer)
    buffer.seek(0)
    copies = [torch.load(buffer, weights_only=False)]
    fxtap.save(resnet, tmp_path / "r.fxtap")
    copies.append(fxtap.load(tmp_path / "r.fxtap"))
    for extractor in copies:
        with pytest.raises(InputShapeError):
            extractor(torch.rand(1, 1, 32, 32))


def test_a_train_only_node_asked_in_eval_says_the_train_graph_has_it():
    model = torchvision.models.googlenet(aux_logits=True, init_weights=False)
    with pytest.raises(NodeNotFoundError) as exc:
        fxtap.create_feature_extractor(model, ["aux1.fc2"])
    text = str(exc.value)
    assert "'aux1.fc2' not found in the eval graph of GoogLeNet, but the train graph has it" in text
    assert "train_return_nodes=['aux1.fc2'] together with eval_return_nodes=" in text
    extractor = fxtap.create_feature_extractor(
        model, train_return_nodes=["aux1.fc2"], eval_return_nodes=["inception5b"]
    )
    x = torch.rand(2, 3, 64, 64)
    assert extractor.train()(x)["aux1.fc2"].shape == (2, 1000)
    assert extractor.eval()(x)["inception5b"].shape == (2, 1024, 2, 2)


def test_public_only_leaves_torchs_own_errors(resnet):
    """Without torch's private call wrapper (``FXTAP_COMPAT_PUBLIC_ONLY=1``) calls are not
    explained: torch's own error comes through, as documented in ``fxtap._compat``."""
    from fxtap import _compat

    with _compat.public_only():
        extractor = fxtap.create_feature_extractor(torchvision.models.resnet18(), ["layer2"])
        with pytest.raises(RuntimeError) as exc:
            extractor(torch.rand(1, 1, 32, 32))
    assert not isinstance(exc.value, fxtap.FxtapError)


@pytest.mark.hf
def test_a_keyword_input_the_extractor_was_not_built_with_is_named():
    """bert built with no options is exported from input_ids and attention_mask; a call that
    adds token_type_ids names it, and an extractor built with it takes it."""
    from support.checker import bitwise_equal
    from support.hf import build_hf

    model, inputs = build_hf("bert")
    model.eval()
    types = torch.zeros_like(inputs["input_ids"])
    types[:, 4:] = 1
    extractor = fxtap.create_feature_extractor(model, ["encoder.layer.1"])
    with pytest.raises(InputTypeError) as exc:
        extractor(**inputs, token_type_ids=types)
    text = _one_line(exc)
    assert "keyword input 'token_type_ids' is not an input" in text
    assert "'input_ids', 'attention_mask'" in text and "example_inputs=" in text
    full = {**inputs, "token_type_ids": types}
    extractor = fxtap.create_feature_extractor(model, ["encoder.layer.1"], example_inputs=full)
    seen = {}
    handle = model.encoder.layer[1].register_forward_hook(lambda m, a, o: seen.setdefault("v", o))
    with torch.no_grad():
        model(**full)
        handle.remove()
        got = extractor(**full)["encoder.layer.1"]
    want = seen["v"][0] if isinstance(seen["v"], tuple) else seen["v"]
    assert bitwise_equal(got, want)


class _Flagged(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor, double: bool = False) -> torch.Tensor:
        y = self.fc(x)
        return y * 2 if double else y


def test_a_non_tensor_keyword_held_fixed_by_the_export_path_is_explained():
    x = torch.randn(2, 4)
    model = _Flagged().eval()
    ex = fxtap.create_feature_extractor(
        model, ["fc"], tracer="export", example_inputs={"x": x, "double": True}
    )
    assert torch.equal(ex(x=x)["fc"], model.fc(x))
    with pytest.raises(InputTypeError) as err:
        ex(x=x, double=True)
    message = str(err.value)
    assert "'double'" in message and "holds fixed" in message and "leave 'double' out" in message
