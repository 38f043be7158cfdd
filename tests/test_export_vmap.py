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


def test_a_graph_that_raises_inside_vmap_leaves_no_level_open() -> None:
    """What an exported graph runs (``_vmap_increment_nesting``, then an op that raises before
    ``_vmap_decrement_nesting``), inside the guard the export path's checks run graphs in."""
    from fxtap._compat import vmap_levels_kept

    level = torch._C._functorch.maybe_current_level
    before = level()
    with pytest.raises(RuntimeError, match="inside the level"), vmap_levels_kept():
        torch._C._functorch._vmap_increment_nesting(3, "error")
        assert level() != before
        raise RuntimeError("inside the level")
    assert level() == before
    assert torch.rand(2).shape == (2,)  # random ops still run outside vmap
