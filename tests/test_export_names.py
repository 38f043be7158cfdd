"""Names on the export path (``fxtap.trace._export_names``): ``:input`` taps of modules whose
first ops read only their own weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import fxtap
from fxtap.extractor import FeatureExtractor
from support.checker import bitwise_equal


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


class Scaling(nn.Module):
    """Scales its first argument by a function of its second, which it reads first (Mistral
    Large 4's ``softmax_scaling``)."""

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        scale = (pos + 1).float().log()
        return x * scale[:, :, None]


class SameTwice(nn.Module):
    """Takes another branch when its two arguments are one tensor (attention's ``q is k``)."""

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return q * 2 if q is k else q * 3 + k


class Reads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)
        self.scaling = Scaling()
        self.twice = SameTwice()
        self.same = SameTwice()

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        h = self.proj(x)
        return self.twice(self.scaling(h, pos), h) + self.same(h, h)


def _hooked_inputs(model: nn.Module, paths: list[str], *args: torch.Tensor) -> dict[str, Any]:
    seen: dict[str, torch.Tensor] = {}

    def hook(path: str) -> Any:
        def record(module: nn.Module, args: tuple[Any, ...]) -> None:
            seen.setdefault(path, args[0].clone())

        return record

    handles = [model.get_submodule(p).register_forward_pre_hook(hook(p)) for p in paths]
    try:
        out = model(*args)
    finally:
        for h in handles:
            h.remove()
    return {**{f"{p}:input": v for p, v in seen.items()}, ":output": out}


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_input_of_a_module_that_reads_another_argument_first(mode: str) -> None:
    model = Reads().train(mode == "train")
    x, pos = torch.randn(2, 5, 4), torch.arange(5).expand(2, 5)
    taps = ["scaling:input", "twice:input", "same:input", ":output"]
    ex = fxtap.create_feature_extractor(model, taps, tracer="export", example_inputs=(x, pos))
    assert isinstance(ex, FeatureExtractor)
    ex.train(mode == "train")
    want = _hooked_inputs(model, ["scaling", "twice", "same"], x, pos)
    got = ex(x, pos)
    for key in taps:
        assert torch.equal(got[key], want[key]), key
    # the gradient through the tap of the first argument reaches the projection
    grads = torch.autograd.grad(got["scaling:input"].sum(), [model.proj.weight])
    ref = torch.autograd.grad(want["scaling:input"].sum(), [model.proj.weight])
    assert torch.equal(grads[0], ref[0])


def test_marks_leave_no_op_behind_and_no_hook() -> None:
    model = Reads().eval()
    x, pos = torch.randn(2, 5, 4), torch.arange(5).expand(2, 5)
    ex = fxtap.create_feature_extractor(
        model, ["twice:input"], tracer="export", example_inputs=(x, pos)
    )
    assert isinstance(ex, FeatureExtractor)
    for mode in ("train", "eval"):
        targets = {str(n.target) for n in ex.graph_for(mode).nodes}
        assert not any("fxtap" in t for t in targets), targets
    assert not torch.nn.modules.module._global_forward_pre_hooks
    assert all(not m._forward_pre_hooks for m in model.modules())


class TupleLeaves(nn.Module):
    """Leaf modules that return tuples: attention's (output, weights), an LSTM's
    (output, (h, c))."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.gru = nn.GRU(8, 8, batch_first=True)
        self.out = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        a = self.attn(h, h, h)[0]
        o, hn = self.gru(a)
        return self.out(o + hn[-1][:, None])


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_a_leaf_that_returns_a_tuple_is_tapped_as_it_returns_it(mode: str, tmp_path: Path) -> None:
    model = TupleLeaves().train(mode == "train")
    x = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(0))
    taps = ["attn", "gru", ":output"]
    ex = fxtap.create_feature_extractor(model, taps, tracer="export", example_inputs=(x,))
    assert isinstance(ex, FeatureExtractor)
    ex.train(mode == "train")
    seen: dict[str, Any] = {}

    def hook(name: str) -> Any:
        def record(module: nn.Module, args: tuple[Any, ...], out: Any) -> None:
            seen.setdefault(name, out)

        return record

    handles = [
        model.attn.register_forward_hook(hook("attn")),
        model.gru.register_forward_hook(hook("gru")),
    ]
    try:
        torch.manual_seed(0)
        want = {":output": model(x), **seen}
    finally:
        for h in handles:
            h.remove()
    torch.manual_seed(0)
    got = ex(x)
    for key in taps:
        assert type(got[key]) is type(want[key]), key
        assert bitwise_equal(got[key], want[key]), key
    (g,) = torch.autograd.grad(got["gru"][1].sum(), [model.fc.weight], retain_graph=True)
    (r,) = torch.autograd.grad(want["gru"][1].sum(), [model.fc.weight], retain_graph=True)
    assert torch.equal(g, r)
    # only the attention's call runs for a tap of it
    small = fxtap.create_feature_extractor(model, ["attn"], tracer="export", example_inputs=(x,))
    assert not any("gru" in str(n.target) for n in small.graph_for(mode).nodes)
    # the tuple's node saves in the safe format and loads without trust
    fxtap.save(small, tmp_path / "attn.fxtap")
    loaded = fxtap.load(tmp_path / "attn.fxtap").train(mode == "train")
    small.train(mode == "train")
    torch.manual_seed(0)
    want_small = small(x)
    torch.manual_seed(0)
    assert bitwise_equal(loaded(x), want_small)
