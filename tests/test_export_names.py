"""Names on the export path (``fxtap.trace._export_names``): ``:input`` taps of modules whose
first ops read only their own weights, and taps of modules that run no op (``nn.Identity``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import fxtap
from fxtap.extractor import FeatureExtractor
from support.checker import bitwise_equal, output_score, preserved


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


class DropPath(nn.Module):
    """A drop path as timm and transformers write it: not a leaf, no op at rate 0."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = x.new_empty(x.shape[0], 1).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class NoOps(nn.Module):
    """Modules that run no op (``nn.Identity``, a drop path at rate 0) or only dropout at 0;
    the root branches on ``x.dim()``, which torch.fx cannot trace."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.drop = nn.Dropout(0.0)
        self.drop_path = nn.Identity()
        self.path = DropPath(0.0)
        self.norm = nn.LayerNorm(6)
        self.lab = nn.Identity()
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            x = x.mean(1)
        h = self.drop_path(self.drop(self.fc(x)))
        x = x + self.path(torch.tanh(h))
        return self.head(self.lab(self.norm(x)))


#: tap -> (module, port): each leaf that runs no op, its input, and a non-leaf one's input.
TAPS = {
    "drop": ("drop", "out"),
    "drop_path": ("drop_path", "out"),
    "drop_path:input": ("drop_path", "in"),
    "path:input": ("path", "in"),
    "lab": ("lab", "out"),
    "lab:input": ("lab", "in"),
}


def _hooked(model: nn.Module, x: torch.Tensor) -> tuple[dict[str, Any], torch.Tensor]:
    """Each tap's tensor, kept by a forward (pre-)hook on the unmodified model, and the output."""
    seen: dict[str, Any] = {}

    def keep(tap: str, port: str) -> Any:
        def hook(module: nn.Module, args: Any, *out: Any) -> None:
            seen.setdefault(tap, out[0] if port == "out" else args[0])

        return hook

    handles = []
    for tap, (path, port) in TAPS.items():
        module = model.get_submodule(path)
        if port == "out":
            handles.append(module.register_forward_hook(keep(tap, port)))
        else:
            handles.append(module.register_forward_pre_hook(keep(tap, port)))
    try:
        out = model(x)
    finally:
        for handle in handles:
            handle.remove()
    return seen, out


@pytest.mark.parametrize("training", [False, True])
def test_modules_that_run_no_op_are_named_and_equal_hooks(training: bool) -> None:
    model, x = NoOps().train(training), torch.randn(4, 5, 6)
    ex = fxtap.create_feature_extractor(
        model, {**{t: t for t in TAPS}, ":output": "out"}, example_inputs=(x,)
    )
    assert isinstance(ex, FeatureExtractor)  # the export path: torch.fx cannot trace the root
    # the export hook is global and gone, and nothing was set on the model
    assert not nn.modules.module._global_forward_hooks
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    ex.train(training)
    with preserved(model):
        expected, out = _hooked(model, x)
        want = torch.autograd.grad(output_score(out), [expected[t] for t in TAPS])
        got = ex(x)
        grads = torch.autograd.grad(output_score(got["out"]), [got[t] for t in TAPS])
    for tap in TAPS:
        assert bitwise_equal(got[tap], expected[tap]), tap
    assert bitwise_equal(got["out"], out)
    assert bitwise_equal(grads, want)
    # a tap adds no parameters: the head alone is left out of a tap of 'lab'
    small = fxtap.create_feature_extractor(model, ["lab"], example_inputs=(x,))
    kept = {
        str(n.target)
        for n in small.graph_for("train" if training else "eval").nodes
        if n.op == "get_attr"
    }
    assert kept == {"fc.weight", "fc.bias", "norm.weight", "norm.bias"}


def test_no_op_modules_have_the_names_of_the_fx_path() -> None:
    model, x = NoOps().eval(), torch.randn(4, 6)
    fx_names = fxtap.get_graph_node_names(model, tracer="fx")
    export_names = fxtap.get_graph_node_names(model, tracer="export", example_inputs=(x,))
    leaves = {"drop", "drop_path", "lab"}
    for names in (*fx_names, *export_names):
        assert leaves <= set(names)
    # the names the modules' calls leave: DropPath runs no op and is not a leaf, so neither
    # path names it; its value is read with 'path:input' or the op after it
    assert not any(n.startswith("path") for n in export_names[0])


class InplaceAfter(nn.Module):
    """``nn.Identity`` whose output is then written in place."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.lab = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.lab(self.fc(x))
        y += 1
        return y.relu()


def test_a_write_after_a_no_op_module_leaves_its_tap_as_it_was() -> None:
    model, x = InplaceAfter(), torch.randn(2, 6)
    kept: list[torch.Tensor] = []
    handle = model.lab.register_forward_hook(lambda m, a, o: kept.append(o.detach().clone()))
    try:
        with torch.no_grad():
            out = model(x)
    finally:
        handle.remove()
    ex = fxtap.create_feature_extractor(
        model, ["lab", "lab:input", ":output"], tracer="export", example_inputs=(x,)
    )
    with torch.no_grad():
        got = ex(x)
    assert bitwise_equal(got["lab"], kept[0])
    assert bitwise_equal(got["lab:input"], kept[0])
    assert bitwise_equal(got[":output"], out)
