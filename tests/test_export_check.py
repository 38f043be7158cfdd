"""The export path's own checks (fxtap.trace._export_check): graphs that bake in a value the
model computes afresh, and higher-order ops other than grad-mode regions, are refused with a ``TraceError`` naming why, and
``create_feature_extractor`` falls back to the capture path with a warning that says so."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn

import fxtap
from fxtap import CaptureExtractor, TraceError
from fxtap.extractor import FeatureExtractor
from support.checker import bitwise_equal

X = torch.randn(2, 6, generator=torch.Generator().manual_seed(0))


class NumpyMask(nn.Module):
    """Zeroes features drawn with numpy in train mode, as SpecAugment does."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.out = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        if self.training:
            keep = np.random.rand(h.shape[-1]) > 0.5
            h = h * torch.from_numpy(keep.astype("float32"))
        return self.out(h)


class RandomScale(nn.Module):
    """Scales by a number drawn with Python's ``random`` in train mode."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) * (random.random() if self.training else 1.0)


@pytest.mark.parametrize(
    ("model", "source"),
    [(NumpyMask, "numpy's random generator"), (RandomScale, "Python's random module")],
)
def test_a_random_value_baked_into_the_graph_is_refused(model: type, source: str) -> None:
    match = (
        rf"the train graph that torch.export gave for {model.__name__} differs from the model: "
        rf".*{model.__name__} draws from {source}, .*constant.*Fix: .*tracer='fx'"
    )
    with pytest.raises(TraceError, match=match):
        fxtap.trace(model(), training=True, tracer="export", example_inputs=X)
    fxtap.trace(model(), training=False, tracer="export", example_inputs=X)  # eval is exact


def test_a_refused_graph_falls_back_to_capture_with_the_reason() -> None:
    model = NumpyMask()
    with pytest.warns(UserWarning, match=r"CaptureExtractor.*draws from numpy's random generator"):
        ex = fxtap.create_feature_extractor(model, ["fc"], example_inputs=(X,))
    assert isinstance(ex, CaptureExtractor)
    state = np.random.get_state()
    np.random.seed(3)
    with torch.no_grad():
        got = ex.train()(X)["fc"]
    np.random.set_state(state)
    assert bitwise_equal(got, model.fc(X).detach())


def test_the_check_leaves_every_generator_as_it_was() -> None:
    model = nn.Sequential(nn.Linear(6, 6))
    torch.manual_seed(5)
    np.random.seed(5)
    random.seed(5)
    states = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    fxtap.create_feature_extractor(model, ["0"], tracer="export", example_inputs=X)
    assert torch.equal(torch.get_rng_state(), states[0])
    assert (np.random.get_state()[1] == states[1]).all() and random.getstate() == states[2]


class NoGradRegion(nn.Module):
    """A ``torch.no_grad()`` block in train mode: torch.export records a higher-order op.

    ``len(x)`` keeps torch.fx from tracing the root, as in cpmant, so ``tracer="auto"`` goes
    to torch.export.
    """

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.out = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            scale = self.fc(x).abs().mean()
        return self.out(x) * scale / len(x)


class Cond(nn.Module):
    """``torch.cond``: a higher-order op the export path does not carry over."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        return torch.cond(h.sum() > 0, torch.sin, torch.cos, (h,)) / len(x)


def test_no_grad_region_is_inlined_and_passes_no_gradient() -> None:
    model = NoGradRegion().train()
    ex = fxtap.create_feature_extractor(
        model, ["fc", ":output"], tracer="export", example_inputs=(X,)
    )
    assert isinstance(ex, FeatureExtractor)
    got = ex(X)
    assert not got["fc"].requires_grad  # computed under no_grad, as in the model
    ref = model(X)
    assert bitwise_equal(got[":output"], ref)
    want = torch.autograd.grad(ref.sum(), [model.out.weight])[0]
    got[":output"].sum().backward()
    assert model.fc.weight.grad is None and bitwise_equal(model.out.weight.grad, want)


class GumbelNoise(nn.Module):
    """Adds Gumbel noise in train mode, as GroupViT does: the distribution checks its scale."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.out = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        if self.training:
            noise = torch.distributions.Gumbel(torch.zeros_like(h), torch.ones_like(h))
            h = h + noise.sample()
        return self.out(h)


def test_distribution_argument_checks_do_not_stop_the_export() -> None:
    model = GumbelNoise().train()
    # NOTE: torch._dynamo turns the default off when it first patches torch, so whether the
    # checks are on here depends on the tests run before: turn them on for this test
    before = torch.distributions.Distribution._validate_args
    torch.distributions.Distribution.set_default_validate_args(True)
    try:
        ex = fxtap.create_feature_extractor(model, ["fc", "out"], tracer="export", example_inputs=X)
        assert torch.distributions.Distribution._validate_args  # the checks are back on
    finally:
        torch.distributions.Distribution.set_default_validate_args(before)
    assert isinstance(ex, FeatureExtractor)
    torch.manual_seed(3)
    ref = model(X)
    torch.manual_seed(3)
    assert bitwise_equal(ex(X)["out"], ref)


# NOTE: torch.cond's tracing (dynamo) reads .grad of a non-leaf tensor, which warns
@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor:UserWarning")
def test_other_higher_order_ops_are_refused_and_the_capture_path_serves_them() -> None:
    match = r"higher-order op 'cond'.*tracer='fx'"
    with pytest.raises(TraceError, match=match):
        fxtap.trace(Cond(), training=False, tracer="export", example_inputs=X)
    model = Cond().eval()
    with pytest.warns(UserWarning, match=r"CaptureExtractor.*" + match):
        ex = fxtap.create_feature_extractor(model, ["fc"], example_inputs=(X,))
    assert isinstance(ex, CaptureExtractor)
    with torch.no_grad():
        assert bitwise_equal(ex(X)["fc"], model.fc(X))


@pytest.mark.hf
def test_wav2vec2_spec_augment_is_refused_and_captured() -> None:
    """SpecAugment draws its mask with numpy in train mode: the export path refuses it and
    names the line; ``tracer="auto"`` captures it instead (nothing baked in)."""
    t = pytest.importorskip("transformers")
    from support.hf import W2V

    config = t.Wav2Vec2Config(**{**W2V, "mask_time_prob": 0.5, "mask_time_length": 2})
    config.layerdrop = 0.0
    model = t.Wav2Vec2Model(config)
    audio = {"input_values": torch.rand(2, 800, generator=torch.Generator().manual_seed(0))}
    with pytest.raises(TraceError, match=r"Wav2Vec2Model in train mode.*(numpy|np\.)"):
        fxtap.trace(model, training=True, tracer="export", example_inputs=audio)
    with pytest.warns(UserWarning, match=r"CaptureExtractor.*(numpy|np\.)"):
        ex = fxtap.create_feature_extractor(model, ["encoder.layers.1"], example_inputs=audio)
    assert isinstance(ex, CaptureExtractor)


class ExportBranch(nn.Module):
    """Computes its output another way under torch.export, as transformers' gated delta rule
    does (forward substitution instead of ``torch.linalg.solve_triangular``)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.out = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        h = h * 0.1 * 3 if torch.compiler.is_exporting() else h * 0.3
        return self.out(h)


class DataBranchUnlessExporting(ExportBranch):
    """Its eager branch reads a tensor's value, which torch.export cannot trace."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        if not torch.compiler.is_exporting() and bool((h > 100).any()):
            h = h.clamp(max=100)
        return self.out(h)


def test_the_model_s_eager_branch_is_exported() -> None:
    model = ExportBranch()
    x = torch.randn(3, 6, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        h = model.fc(x)
        assert not torch.equal(h * 0.1 * 3, h * 0.3)  # the two branches round differently
    real = torch.compiler.is_exporting
    ex = fxtap.create_feature_extractor(
        model, ["fc", ":output"], tracer="export", example_inputs=(x,)
    )
    assert isinstance(ex, FeatureExtractor)
    assert torch.compiler.is_exporting is real
    for training in (True, False):
        model.train(training)
        ex.train(training)
        got = ex(x)
        assert bitwise_equal(got[":output"], model(x))
        want = torch.autograd.grad(model(x).sum(), list(model.parameters()))
        have = torch.autograd.grad(got[":output"].sum(), list(model.parameters()))
        assert all(torch.equal(a, b) for a, b in zip(want, have))


def test_a_model_whose_eager_branch_cannot_export_takes_its_export_branch() -> None:
    model = DataBranchUnlessExporting().eval()
    ex = fxtap.create_feature_extractor(model, [":output"], tracer="export", example_inputs=(X,))
    assert isinstance(ex, FeatureExtractor)
    # the export branch leaves out the clamp, which changes nothing on these inputs
    assert bitwise_equal(ex(X)[":output"], model(X))
    assert torch.compiler.is_exporting() is False
