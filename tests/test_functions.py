"""Custom autograd Functions (fxtap.trace._functions): their backward is what gradients follow.

A trace records a Function's forward ops and loses its backward: the fx path keeps the module
that applies it whole (a leaf), and the export path refuses the program, so that
``create_feature_extractor`` falls back to the capture path.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fxtap
from fxtap import TraceError
from fxtap.extractor import FeatureExtractor
from fxtap.trace._functions import calls_custom_function
from support.checker import bitwise_equal

X = torch.randn(3, 6, generator=torch.Generator().manual_seed(0))


class Reverse(torch.autograd.Function):
    """The identity forward, a negated gradient (a gradient reversal layer)."""

    @staticmethod
    def forward(ctx: object, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:
        return -grad


class Flip(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return Reverse.apply(x)


class Reversed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.flip = Flip()
        self.out = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.flip(self.fc(x)).relu())


def _grad(value: torch.Tensor, model: Reversed) -> torch.Tensor:
    return torch.autograd.grad(value.sum(), [model.fc.weight])[0]


def test_a_module_applying_a_function_is_a_leaf_on_the_fx_path() -> None:
    model = Reversed()
    assert calls_custom_function(model.flip) and not calls_custom_function(model)
    ex = fxtap.create_feature_extractor(model, ["out"], tracer="fx")
    assert isinstance(ex, FeatureExtractor)
    assert any(n.op == "call_module" and n.target == "flip" for n in ex.graph.nodes)
    got, want = ex(X)["out"], model(X)
    assert bitwise_equal(got, want)
    assert bitwise_equal(_grad(got, model), _grad(want, model))  # the reversed gradient


def test_the_export_path_refuses_a_function() -> None:
    model = Reversed()
    with pytest.raises(TraceError, match=r"module 'flip'.*Reverse.*tracer='fx'"):
        fxtap.create_feature_extractor(model, ["out"], tracer="export", example_inputs=X)


class ReversedRoot(Reversed):
    """``len(x)``: torch.fx cannot trace the root, torch.export can."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) / len(x)


def test_auto_falls_back_to_capture_naming_the_function() -> None:
    model = ReversedRoot()
    with pytest.warns(UserWarning, match=r"module 'flip'.*Reverse"):
        ex = fxtap.create_feature_extractor(model, ["fc", ":output"], example_inputs=X)
    assert isinstance(ex, fxtap.CaptureExtractor)
    got, want = ex(X)[":output"], model(X)
    assert bitwise_equal(got, want)
    assert bitwise_equal(_grad(got, model), _grad(want, model))
