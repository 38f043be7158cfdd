"""Tests of the export path (fxtap.trace._export): torch.export traces, fxtap names and prunes.

Every value is checked bitwise against forward hooks on the unmodified model, in eval mode and
in train mode with the same seed, and gradients against the hooks' gradients. Hugging Face
models are tiny configs built with ``from_config`` (marked ``hf``, the ``[hf]`` extra).
"""

from __future__ import annotations

import copy
import pickle
import types
from typing import Any

import pytest
import torch
import torchvision
from torch import nn
from torch.utils import _pytree as pytree

import fxtap
from fxtap import FeatureExtractor, InputShapeError, InvalidArgumentError, TraceError
from support.checker import (
    Hooks,
    bitwise_equal,
    graph_params,
    loss_grads,
    num_params,
    preserved,
)
from support.hf import HF, W2V, build_hf, hf_reference

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


# ---------------------------------------------------------------- without transformers


def test_leaf_names_match_the_fx_path_on_resnet18() -> None:
    model = torchvision.models.resnet18().eval()
    fx_names = fxtap.trace(model, training=False)
    ex_names = fxtap.trace(model, training=False, tracer="export", example_inputs=X)
    leaves = [
        name
        for node, name in fx_names.names.items()
        if node.op == "call_module" and not name.endswith(("relu", "relu_1"))
    ]
    exported = set(ex_names.names.values())
    assert leaves and all(name in exported for name in leaves), set(leaves) - exported
    # ``out += identity`` is torch.fx's ``add`` (Proxy has no __iadd__) and ATen's ``add_``
    taps = {"layer1.0.bn1": "bn", "layer2.1.conv2": "conv", "fc": "fc", "layer4.1.add": "add"}
    exported_taps = {**taps, "layer4.1.add_": "add"}
    del exported_taps["layer4.1.add"]
    by_fx = fxtap.create_feature_extractor(model, taps, tracer="fx")
    by_export = fxtap.create_feature_extractor(
        model, exported_taps, tracer="export", example_inputs=X
    )
    for mode in (False, True):
        with preserved(model), torch.no_grad():
            torch.manual_seed(0)
            a = by_fx.train(mode)(X)
            torch.manual_seed(0)
            b = by_export.train(mode)(X)
        assert all(bitwise_equal(a[k], b[k]) for k in taps.values()), mode


def test_export_path_shares_tensors_and_leaves_the_model_untouched(untouched: Any) -> None:
    model = torchvision.models.resnet18().train()
    with untouched(model):
        ex = fxtap.create_feature_extractor(model, ["layer2"], tracer="export", example_inputs=X)
    own = {id(p) for p in model.parameters()} | {id(b) for b in model.buffers()}
    assert all(id(p) in own for p in ex.parameters())
    assert num_params(ex) < num_params(model)
    assert ex.training and model.training


def test_inplace_relu_after_a_tap_does_not_change_the_tapped_value() -> None:
    model = torchvision.models.resnet18().eval()
    ex = fxtap.create_feature_extractor(model, ["bn1"], tracer="export", example_inputs=X)
    hooks = Hooks(model, {"bn1": "bn1"}, {})
    with torch.no_grad():
        model(X)
        got = ex(X)["bn1"]
    hooks.remove()
    assert bitwise_equal(got, hooks.values["bn1"]) and (got < 0).any()


def test_missing_example_inputs_name_the_argument() -> None:
    with pytest.raises(InvalidArgumentError, match=r"example_inputs=.*--input"):
        fxtap.create_feature_extractor(torchvision.models.resnet18(), ["layer1"], tracer="export")


def test_unknown_tracer_suggests_the_close_one() -> None:
    with pytest.raises(InvalidArgumentError, match=r"'exprt'.*closest: 'export'"):
        fxtap.create_feature_extractor(torchvision.models.resnet18(), ["layer1"], tracer="exprt")


def test_dynamic_batch_runs_other_batch_sizes() -> None:
    model = torchvision.models.resnet18().eval()
    ex = fxtap.create_feature_extractor(model, ["layer3"], tracer="export", example_inputs=X)
    ref: dict[str, torch.Tensor] = {}
    model.layer3.register_forward_hook(lambda m, i, o: ref.__setitem__("v", o))
    x5 = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        model(x5)
        assert bitwise_equal(ex(x5)["layer3"], ref["v"])
        with pytest.raises(InputShapeError, match=r"'x' has size 1 in dim 0.*example_inputs"):
            ex(x5[:1])


class FixedBatch(nn.Module):
    """Reshapes with a hard-coded batch size, so export must specialize dim 0."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.reshape(2, 4)).sum(0)


def test_fixed_batch_gives_a_clear_error() -> None:
    ex = fxtap.create_feature_extractor(
        FixedBatch(), ["fc"], tracer="export", example_inputs=torch.randn(2, 4)
    )
    assert ex(torch.randn(2, 4))["fc"].shape == (2, 3)
    with pytest.raises(
        InputShapeError, match=r"size 3 in dim 0, .*built for size 2.*dynamic_shapes="
    ):
        ex(torch.randn(3, 4))


def test_copies_pickle_and_save() -> None:
    model = torchvision.models.resnet18().eval()
    ex = fxtap.create_feature_extractor(model, ["layer2.0"], tracer="export", example_inputs=X)
    with torch.no_grad():
        want = ex(X)["layer2.0"]
        for other in (copy.deepcopy(ex), pickle.loads(pickle.dumps(ex))):
            assert bitwise_equal(other(X)["layer2.0"], want)
            assert bitwise_equal(other.train()(X)["layer2.0"], ex.train()(X)["layer2.0"])
            ex.eval()


def test_saves_in_the_safe_format(tmp_path: Any) -> None:
    model = torchvision.models.resnet18().eval()
    ex = fxtap.create_feature_extractor(model, ["layer1"], tracer="export", example_inputs=X)
    loaded = fxtap.load(fxtap.save(ex, tmp_path / "safe.fxtap"))
    with torch.no_grad():
        assert bitwise_equal(loaded(X)["layer1"], ex(X)["layer1"])


def test_detection_model_falls_back_to_capture_with_the_export_error_attached() -> None:
    # NOTE: torch.export cannot trace the RoI heads (data-dependent NMS) nor, in train mode,
    # GeneralizedRCNNTransform (it draws the image size with .item()); docs/tracing.md.
    model = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None
    ).eval()
    images = [torch.rand(3, 64, 80), torch.rand(3, 64, 80)]
    with pytest.warns(UserWarning, match="CaptureExtractor"):
        ex = fxtap.create_feature_extractor(model, ["backbone.body"], example_inputs=(images,))
    assert isinstance(ex, fxtap.CaptureExtractor) and not ex.prunes


def test_export_failure_is_a_trace_error() -> None:
    class DataDependent(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:
                return x
            return -x

    with pytest.raises(TraceError, match=r"torch.export could not trace DataDependent"):
        fxtap.trace(DataDependent(), training=False, tracer="export", example_inputs=X)


# ---------------------------------------------------------------- Hugging Face transformers


#: Known failures, each documented in docs/zoo.md.
_KNOWN = {
    "wav2vec2": (
        "LayerDrop (Wav2Vec2Config.layerdrop=0.1 by default) skips each encoder layer when "
        "torch.rand([]) < layerdrop in train mode: export cannot trace that branch, so the "
        "extractor takes the capture path; the error names the flag "
        "(test_layerdrop_export_failure_names_the_config_flag)"
    ),
}


@pytest.mark.hf
@pytest.mark.parametrize(
    "arch",
    [
        pytest.param(a, marks=pytest.mark.xfail(strict=True, reason=_KNOWN[a]))
        if a in _KNOWN
        else a
        for a in sorted(HF)
    ],
)
def test_transformers_model_is_pruned_and_exact(arch: str) -> None:
    model, inputs = build_hf(arch)
    spec = HF[arch]
    leaf, func, _, later = spec
    model.eval()
    taps = {leaf: "leaf", func: "func"}
    ex = fxtap.create_feature_extractor(
        model,
        train_return_nodes={**taps, ":output": "out"},
        eval_return_nodes=taps,
        example_inputs=inputs,
    )
    assert isinstance(ex, FeatureExtractor), "the export path was not taken"
    # pruned: fewer parameters, and nothing of the later layers runs (eval graph)
    assert graph_params(ex, "eval") < num_params(model)
    assert not any(n == later or n.startswith(later + ".") for n in ex.kept["eval"])
    assert ex.outputs["eval"] == {"leaf": leaf, "func": func}
    with torch.no_grad():
        ref, _ = hf_reference(model, inputs, spec)
        got = ex.eval()(**inputs)
    assert bitwise_equal(got["leaf"], ref["leaf"]) and bitwise_equal(got["func"], ref["func"])
    # train mode, same seed: dropout draws the same numbers; :output keeps its ModelOutput
    model.train()
    ref, out = hf_reference(model, inputs, spec)
    ref_loss = ref["leaf"].float().sum() + ref["func"].float().sum()
    ref_grads = loss_grads(model, ref_loss)
    torch.manual_seed(0)
    got = ex.train()(**inputs)
    assert type(got["out"]) is type(out)
    assert bitwise_equal(pytree.tree_leaves(got["out"]), pytree.tree_leaves(out))
    assert bitwise_equal(got["leaf"], ref["leaf"]) and bitwise_equal(got["func"], ref["func"])
    grads = loss_grads(model, got["leaf"].float().sum() + got["func"].float().sum())
    assert ref_grads.keys() == grads.keys() and ref_grads
    assert all(bitwise_equal(grads[k], ref_grads[k]) for k in grads)


class LayerDropToy(nn.Module):
    """Skips its layer at random in train mode, as transformers' LayerDrop does."""

    def __init__(self, layerdrop: float) -> None:
        super().__init__()
        self.config = types.SimpleNamespace(layerdrop=layerdrop)
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip_the_layer = False
        if self.training and self.config.layerdrop > 0.0:
            dropout_probability = torch.rand([])
            skip_the_layer = dropout_probability < self.config.layerdrop
        if not skip_the_layer:
            x = self.lin(x)
        return x


def test_layerdrop_export_failure_names_the_config_flag() -> None:
    model = LayerDropToy(0.25)
    match = (
        r"torch.export could not trace LayerDropToy in train mode: .* LayerDropToy skips "
        r"layers at random in train mode \(LayerDrop, config.layerdrop=0.25 at "
        r"test_export.py:\d+ `skip_the_layer = dropout_probability < self.config.layerdrop`\)"
        r".* build the model with layerdrop=0.0 in its config"
    )
    with pytest.raises(TraceError, match=match):
        fxtap.trace(model, training=True, tracer="export", example_inputs=X[:, 0, 0, :4])
    # eval mode, and train mode with the flag at 0.0, export
    fxtap.trace(model, training=False, tracer="export", example_inputs=X[:, 0, 0, :4])
    fxtap.trace(LayerDropToy(0.0), training=True, tracer="export", example_inputs=X[:, 0, 0, :4])
    assert model.config.layerdrop == 0.25 and model.training


@pytest.mark.hf
def test_wav2vec2_train_mode_names_layerdrop_and_exports_without_it() -> None:
    t = pytest.importorskip("transformers")
    model, inputs = build_hf("wav2vec2")
    assert model.config.layerdrop == 0.1
    with pytest.raises(TraceError, match=r"config.layerdrop=0.1 at modeling_wav2vec2.py:\d+"):
        fxtap.trace(model, training=True, tracer="export", example_inputs=inputs)
    # the auto tracer falls back to capture, which cannot serve a functional op; it says why
    with pytest.raises(fxtap.NodeNotFoundError, match=r"Wav2Vec2Config\(\.\.\., layerdrop=0.0\)"):
        fxtap.create_feature_extractor(model, ["encoder.layers.1.add"], example_inputs=inputs)
    # the fix the error gives works
    fixed = t.Wav2Vec2Model(t.Wav2Vec2Config(**W2V, layerdrop=0.0))
    ex = fxtap.create_feature_extractor(fixed, ["encoder.layers.1.add"], example_inputs=inputs)
    assert isinstance(ex, FeatureExtractor) and ex.outputs["train"] == ex.outputs["eval"]


@pytest.mark.hf
def test_transformers_extractor_leaves_the_model_untouched(untouched: Any) -> None:
    model, inputs = build_hf("bert")
    model.train()
    with untouched(model):
        ex = fxtap.create_feature_extractor(model, ["encoder.layer.0"], example_inputs=inputs)
        ex.eval()(**inputs)
    assert model.training and not ex.training


# ---------------------------------------------------------------- buffer updates in train mode


def _buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.named_buffers()}


@pytest.mark.parametrize("taps", [["fc"], ["layer2.0"]])
def test_train_calls_update_buffers_as_the_fx_path_does(taps: list[str]) -> None:
    """BatchNorm's running statistics and ``num_batches_tracked`` of every module that runs."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18().train()
    eager, by_fx = copy.deepcopy(model), copy.deepcopy(model)
    start = _buffers(model)
    ex = fxtap.create_feature_extractor(model, taps, tracer="export", example_inputs=X)
    fx_ex = fxtap.create_feature_extractor(by_fx, taps, tracer="fx")
    with torch.no_grad():
        for i in range(3):
            x = torch.randn(2 + i, 3, 32, 32, generator=torch.Generator().manual_seed(i))
            ex(x)
            fx_ex(x)
            eager(x)
    after, by_fx_after, eager_after = _buffers(model), _buffers(by_fx), _buffers(eager)
    assert after.keys() == by_fx_after.keys() == eager_after.keys()
    assert all(bitwise_equal(after[k], by_fx_after[k]) for k in after)
    ran = {k for k in after if not bitwise_equal(after[k], start[k])}
    counted = {k for k in ran if k.endswith("num_batches_tracked")}
    assert all(int(after[k]) == 3 for k in counted) and counted
    if taps == ["fc"]:  # every module ran: every buffer equals eager's
        assert ran == set(after)
        assert all(bitwise_equal(after[k], eager_after[k]) for k in after)
    else:  # the pruned layers' statistics did not move
        assert "layer3.0.bn1.num_batches_tracked" not in ran
        assert "layer2.0.bn2.num_batches_tracked" in ran


def test_buffers_inside_a_leaf_module_update_when_it_runs() -> None:
    from torchvision.models.resnet import BasicBlock

    torch.manual_seed(0)
    model = torchvision.models.resnet18().train()
    by_fx = copy.deepcopy(model)
    options = {"leaf_modules": [BasicBlock]}
    ex = fxtap.create_feature_extractor(
        model, ["layer1"], tracer_kwargs=options, tracer="export", example_inputs=X
    )
    fx_ex = fxtap.create_feature_extractor(by_fx, ["layer1"], tracer_kwargs=options, tracer="fx")
    with torch.no_grad():
        ex(X)
        fx_ex(X)
    after, by_fx_after = _buffers(model), _buffers(by_fx)
    assert all(bitwise_equal(after[k], by_fx_after[k]) for k in after)
    assert int(after["layer1.1.bn2.num_batches_tracked"]) == 1
    assert int(after["layer2.0.bn1.num_batches_tracked"]) == 0


class MutatesBuffer(nn.Module):
    """Counts its calls in a buffer of its own (a write nothing reads)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.add_(1)
        return self.conv(x).relu()


def test_buffer_written_outside_a_leaf_module_is_updated() -> None:
    model = MutatesBuffer().train()
    ex = fxtap.create_feature_extractor(model, ["conv"], tracer="export", example_inputs=X)
    with torch.no_grad():
        ex(X)
        ex.eval()(X)
    assert int(model.calls) == 2
