"""Names on the export path (``fxtap.trace._export_names``): ``:input`` taps of modules whose
first ops read only their own weights."""

from __future__ import annotations

import torch
from torch import nn

import fxtap
from fxtap.extractor import FeatureExtractor


class StandardizedConv(nn.Conv2d):
    """A weight-standardized convolution (BiT's): its first ops read the weight, not the input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        w = (w - w.mean(dim=(1, 2, 3), keepdim=True)) / (w.std(dim=(1, 2, 3), keepdim=True) + 1e-5)
        return nn.functional.conv2d(x, w, self.bias, self.stride, self.padding)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3)
        self.conv = StandardizedConv(4, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.relu(self.stem(x)))


def test_input_of_a_module_whose_first_ops_read_its_weight() -> None:
    model, x = Net().eval(), torch.randn(2, 3, 10, 10)
    ex = fxtap.create_feature_extractor(model, ["conv:input"], tracer="export", example_inputs=(x,))
    assert isinstance(ex, FeatureExtractor)
    seen: list[torch.Tensor] = []
    handle = model.conv.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    try:
        with torch.no_grad():
            model(x)
            got = ex(x)["conv:input"]
    finally:
        handle.remove()
    assert torch.equal(got, seen[0])
