"""``torch.vmap`` inside a model on the export path: torch.export records it inline, as calls
that enter and leave a vmap level around batch-dim ops; pruning keeps those calls (gemma4's
audio mask functions)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fxtap
from fxtap.extractor import FeatureExtractor
from support.checker import bitwise_equal


class VmapMask(nn.Module):
    """Builds a mask with ``torch.vmap`` over the batch, as transformers' mask functions do."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.out = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        mask = torch.vmap(lambda row: row > row.mean())(h)
        return self.out(h * mask)


@pytest.mark.parametrize("taps", [["fc"], ["fc", ":output"], ["out:input"]])
def test_vmap_inside_the_model_is_kept_whole(taps: list[str]) -> None:
    model = VmapMask()
    x = torch.randn(3, 6, generator=torch.Generator().manual_seed(0))
    ex = fxtap.create_feature_extractor(model, taps, tracer="export", example_inputs=(x,))
    assert isinstance(ex, FeatureExtractor)
    seen: dict[str, torch.Tensor] = {}

    def on_fc(m: nn.Module, a: tuple[torch.Tensor, ...], o: torch.Tensor) -> None:
        seen.setdefault("fc", o)

    def on_out(m: nn.Module, a: tuple[torch.Tensor, ...]) -> None:
        seen.setdefault("out:input", a[0])

    hooks = [model.fc.register_forward_hook(on_fc), model.out.register_forward_pre_hook(on_out)]
    try:
        for training in (True, False):
            model.train(training)
            ex.train(training)
            seen.clear()
            want = {":output": model(x), **seen}
            got = ex(x)
            for tap in taps:
                assert bitwise_equal(got[tap], want[tap]), tap
                (g,) = torch.autograd.grad(got[tap].sum(), [model.fc.weight], retain_graph=True)
                (r,) = torch.autograd.grad(want[tap].sum(), [model.fc.weight], retain_graph=True)
                assert torch.equal(g, r), tap
    finally:
        for h in hooks:
            h.remove()
