"""Tests of fxtap.extractor: torchvision parity, values at the node, pruning, modes, copies."""

from __future__ import annotations

import copy
import gc
import io
import pickle
import weakref
from typing import Any
from unittest import mock

import pytest
import torch
import torchvision
from torch import fx, nn
from torchvision.models import feature_extraction as tv_fx

import fxtap
from fxtap import FeatureExtractor, InvalidArgumentError, NodeNotFoundError
from support.checker import (
    bitwise_equal,
    capture_reference,
    check_extractor,
    num_params,
    preserved,
)

# Small inputs keep the file fast; batch 2 keeps train-mode BatchNorm on 1x1 maps defined.
X32 = torch.randn(2, 3, 32, 32)
X64 = torch.randn(2, 3, 64, 64)  # AlexNet's pooling needs at least 63 pixels


def small_vit() -> nn.Module:
    """vit_b_16 with every layer of the real one, on 64x64 images (16 patches)."""
    return torchvision.models.vit_b_16(image_size=64)


def run(ex: nn.Module, model: nn.Module, x: torch.Tensor) -> dict[str, Any]:
    """Outputs of ``ex`` without gradients, leaving the model's BatchNorm statistics alone."""
    with preserved(model), torch.no_grad():
        torch.manual_seed(0)
        return ex(x)


# --- the shared checker over a few torchvision models, both modes ----------------------------


@pytest.mark.parametrize(
    ("builder", "nodes", "x"),
    [
        (torchvision.models.resnet18, ["layer1", "bn1", "layer4.1", "layer4"], X32),
        (torchvision.models.alexnet, ["features.0", "features.5", "classifier.4"], X64),
        (torchvision.models.mobilenet_v3_small, ["features.3", "features.6.block.2"], X32),
        (torchvision.models.densenet121, ["features.denseblock2", "features.transition2"], X32),
        (small_vit, {"encoder.layers.encoder_layer_5": "mid"}, X64[:1]),
    ],
    ids=["resnet18", "alexnet", "mobilenet_v3_small", "densenet121", "vit_b_16"],
)
def test_checker_on_torchvision_models(builder: Any, nodes: Any, x: torch.Tensor) -> None:
    ex = check_extractor(builder(), nodes, (x,))
    assert isinstance(ex, FeatureExtractor) and isinstance(ex, fx.GraphModule)


def test_train_only_branch_googlenet() -> None:
    model = torchvision.models.googlenet(aux_logits=True, init_weights=False)
    x = X64
    with pytest.raises(NodeNotFoundError, match="'aux1' not found in the eval graph"):
        fxtap.create_feature_extractor(model, ["aux1"])
    ex = fxtap.create_feature_extractor(
        model,
        train_return_nodes={"aux1": "aux", "inception4a": "mid"},
        eval_return_nodes={"inception4a": "mid"},
    )
    assert ex.training and model.training
    for mode, keys in (("train", {"aux", "mid"}), ("eval", {"mid"})):
        ex.train(mode == "train")
        reference, _ = capture_reference(model, (x,), training=mode == "train")
        outputs = run(ex, model, x)
        assert set(outputs) == keys
        for key, name in ex.outputs[mode].items():
            assert bitwise_equal(outputs[key], reference[name]), (mode, key)
    assert "aux1" not in {str(n.target).split(".")[0] for n in ex.graph_for("eval").nodes}


# --- torchvision parity ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("builder", "nodes"),
    [
        (torchvision.models.resnet18, {"layer2": "c3", "layer4": "c5", "fc": "logits"}),
        (torchvision.models.mobilenet_v3_small, ["features.5", "classifier.0"]),
        (torchvision.models.densenet121, ["features.denseblock2", "features.transition3.conv"]),
    ],
    ids=["resnet18", "mobilenet_v3_small", "densenet121"],
)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_same_outputs_as_torchvision(builder: Any, nodes: Any, training: bool) -> None:
    model = builder().train(training)
    ours = fxtap.create_feature_extractor(model, nodes)
    theirs = tv_fx.create_feature_extractor(model, nodes)
    ours_out, theirs_out = run(ours, model, X32), run(theirs, model, X32)
    assert list(ours_out) == list(theirs_out)
    assert bitwise_equal(ours_out, theirs_out)


def test_overlapping_queries_do_not_steal() -> None:
    model = torchvision.models.resnet18().eval()
    ex = fxtap.create_feature_extractor(model, ["layer4", "layer4.1"])
    alone = fxtap.create_feature_extractor(model, ["layer4.1"])
    assert ex.outputs["eval"] == {"layer4": "layer4.1.relu_1", "layer4.1": "layer4.1.relu_1"}
    assert bitwise_equal(run(ex, model, X32)["layer4.1"], run(alone, model, X32)["layer4.1"])
    # torchvision gives 'layer4.1' the add before the last relu: 'layer4' took that relu.
    theirs = tv_fx.create_feature_extractor(model, ["layer4", "layer4.1"])
    assert "'layer4.1': add_7" in theirs.code


# --- values at the node, even when written in place afterwards -------------------------------


@pytest.mark.parametrize(
    ("builder", "node", "inplace", "later"),
    [
        (torchvision.models.resnet18, "bn1", "relu", "layer1"),
        (torchvision.models.alexnet, "features.0", "features.1", "features.3"),
    ],
    ids=["resnet18", "alexnet"],
)
def test_value_at_node_despite_inplace_op(
    builder: Any, node: str, inplace: str, later: str
) -> None:
    model = builder().eval()
    assert model.get_submodule(inplace).inplace
    produced: dict[str, torch.Tensor] = {}

    def hook(_m: nn.Module, _i: Any, out: torch.Tensor) -> None:
        produced["v"] = out.detach().clone()

    handle = model.get_submodule(node).register_forward_hook(hook)
    try:
        with torch.no_grad():
            model(X64)
    finally:
        handle.remove()
    # A later request keeps the in-place ReLU in the graph.
    ours_ex = fxtap.create_feature_extractor(model, [node, later])
    ours = run(ours_ex, model, X64)[node]
    theirs = run(tv_fx.create_feature_extractor(model, [node, later]), model, X64)[node]
    # The copy costs one clone, right after the node.
    clones = [n for n in ours_ex.graph.nodes if n.target == "clone"]
    assert [str(n.args[0].target) for n in clones] == [node]
    assert bitwise_equal(ours, produced["v"])
    assert (ours < 0).any()
    # torchvision returns the tensor after the in-place ReLU overwrote it.
    assert not bitwise_equal(theirs, produced["v"])
    assert bitwise_equal(theirs, produced["v"].relu())


# --- pruning: parameter counts, shared storage, checkpoints ----------------------------------


def test_resnet50_layer2_keeps_only_what_it_needs() -> None:
    model = torchvision.models.resnet50()
    ex = fxtap.create_feature_extractor(model, ["layer2"])
    assert num_params(ex) == 1_444_928
    assert not any(name.startswith(("layer3", "layer4", "fc")) for name, _ in ex.named_modules())
    original = dict(model.named_parameters()) | dict(model.named_buffers())
    for name, tensor in (*ex.named_parameters(), *ex.named_buffers()):
        assert tensor.data_ptr() == original[name].data_ptr(), name
        assert tensor is original[name]


def test_vit_conv_proj_keeps_only_conv_proj() -> None:
    model = small_vit()
    ex = fxtap.create_feature_extractor(model, ["conv_proj"])
    assert num_params(ex) == 590_592 == num_params(model.conv_proj)
    assert set(ex.state_dict()) == {"conv_proj.weight", "conv_proj.bias"}
    # torchvision keeps the encoder alive through the shape asserts on its input.
    theirs = tv_fx.create_feature_extractor(model, ["conv_proj"])
    assert num_params(theirs) > 78_000_000
    assert bitwise_equal(run(ex, model, X64[:1]), run(theirs, model, X64[:1]))


def test_original_checkpoint_loads() -> None:
    model = torchvision.models.resnet18().eval()
    ex = fxtap.create_feature_extractor(model, ["layer2"])
    assert set(ex.state_dict()) < set(model.state_dict())
    trained = torchvision.models.resnet18().eval()
    result = ex.load_state_dict(trained.state_dict())
    assert not result.missing_keys and not result.unexpected_keys
    for name, tensor in ex.state_dict().items():
        assert bitwise_equal(tensor, trained.state_dict()[name])
    # The extractor shares storage with `model`, so the load reached the model too.
    assert bitwise_equal(model.conv1.weight, trained.conv1.weight)
    assert model.fc.weight is not trained.fc.weight
    reference, _ = capture_reference(trained, (X32,), training=False)
    assert bitwise_equal(run(ex, trained, X32)["layer2"], reference["layer2.1.relu_1"])
    with pytest.raises(RuntimeError, match="Missing key"):
        ex.load_state_dict({"conv1.weight": trained.conv1.weight})


# --- modes, flags, copies --------------------------------------------------------------------


def test_mode_switch_does_not_recompile() -> None:
    model = torchvision.models.resnet18()
    ex = fxtap.create_feature_extractor(
        model,
        train_return_nodes=["layer1", "layer2"],
        eval_return_nodes=["layer1"],
    )
    codes = {}
    with mock.patch.object(fx.GraphModule, "recompile", side_effect=AssertionError("recompile")):
        for _ in range(3):
            for mode in (True, False):
                ex.train(mode)
                codes[mode] = ex.code
                assert ex.graph is ex.graph_for("train" if mode else "eval")
    assert "layer2" in codes[True] and "layer2" not in codes[False]
    assert set(run(ex.eval(), model, X32)) == {"layer1"}
    assert set(run(ex.train(), model, X32)) == {"layer1", "layer2"}


def test_model_flags_restored_and_untouched_by_switches() -> None:
    model = torchvision.models.resnet18().train()
    model.layer1.eval()  # mixed modes must survive
    flags = {name: m.training for name, m in model.named_modules()}
    ex = fxtap.create_feature_extractor(model, ["layer2"])
    assert ex.training
    ex.eval()
    assert not any(m.training for m in ex.modules())
    ex.train()
    assert all(m.training for m in ex.modules())
    assert {name: m.training for name, m in model.named_modules()} == flags
    assert fxtap.create_feature_extractor(model.eval(), ["layer2"]).training is False


def test_tracer_kwargs_not_mutated() -> None:
    kwargs = {"leaf_modules": [torchvision.models.resnet.BasicBlock]}
    ex = fxtap.create_feature_extractor(
        torchvision.models.resnet18(), ["layer1.0"], tracer_kwargs=kwargs
    )
    assert kwargs == {"leaf_modules": [torchvision.models.resnet.BasicBlock]}
    assert ex.outputs["eval"] == {"layer1.0": "layer1.0"}


def test_copies_keep_both_modes() -> None:
    model = torchvision.models.googlenet(aux_logits=True, init_weights=False)
    ex = fxtap.create_feature_extractor(
        model,
        train_return_nodes=["aux1", "inception4a"],
        eval_return_nodes=["inception4a"],
        keep_traces=True,
    ).eval()
    buffer = io.BytesIO()
    torch.save(ex, buffer)
    buffer.seek(0)
    copies = {
        "deepcopy": copy.deepcopy(ex),
        "pickle": pickle.loads(pickle.dumps(ex)),
        "torch.save": torch.load(buffer, weights_only=False),
    }
    x = X64[:, :, :48, :48]
    expected = {training: run(ex.train(training), model, x) for training in (False, True)}
    assert "aux1" in expected[True] and "aux1" not in expected[False]
    for how, other in copies.items():
        assert isinstance(other, FeatureExtractor) and not other.training, how
        assert other.outputs == ex.outputs, how
        for training in (False, True):
            assert bitwise_equal(run(other.train(training), model, x), expected[training]), how
        assert other.conv1.conv.weight is not model.conv1.conv.weight, how
    assert copies["deepcopy"].full is ex.full


# --- torch.jit.script, torch.compile, torch.export -------------------------------------------


def test_script_compile_export() -> None:
    model = torchvision.models.resnet18().eval()
    ex = fxtap.create_feature_extractor(model, {"bn1": "stem", "layer2": "mid", ":output": "out"})
    x = torch.randn(1, 3, 32, 32)
    expected = run(ex, model, x)
    scripted = torch.jit.script(ex)
    assert bitwise_equal(run(scripted, model, x), expected)
    # NOTE: 'aot_eager' traces through dynamo and AOTAutograd (functionalizing the clone and
    # the in-place ReLU) without a C++ compile, which would take most of the test budget.
    compiled = torch.compile(ex, backend="aot_eager")
    torch.testing.assert_close(run(compiled, model, x), expected, rtol=0, atol=1e-6)
    exported = torch.export.export(ex, (x,))
    torch.testing.assert_close(run(exported.module(), model, x), expected, rtol=0, atol=1e-6)


# --- beyond torchvision: NAME:input and :output ----------------------------------------------


def test_module_input_matches_pre_hook() -> None:
    model = torchvision.models.resnet18().eval()
    seen: dict[str, torch.Tensor] = {}

    def pre_hook(module: nn.Module, args: tuple[Any, ...]) -> None:
        seen.setdefault(paths[module], args[0].detach().clone())

    paths = {model.get_submodule(p): p for p in ("layer3", "layer2.1.conv1", "fc")}
    handles = [m.register_forward_pre_hook(pre_hook) for m in paths]
    try:
        with torch.no_grad():
            model(X32)
    finally:
        for h in handles:
            h.remove()
    assert set(seen) == set(paths.values())
    ex = check_extractor(model, [f"{p}:input" for p in seen], (X32,), modes=("eval",))
    outputs = run(ex, model, X32)
    for path, value in seen.items():
        assert bitwise_equal(outputs[f"{path}:input"], value), path


def test_model_output_next_to_taps() -> None:
    model = torchvision.models.resnet18().eval()
    ex = check_extractor(model, {"layer3": "feat", ":output": "logits"}, (X32,), modes=("eval",))
    outputs = ex(X32)
    with torch.no_grad():
        assert bitwise_equal(outputs["logits"], model(X32))
    outputs["feat"].sum().backward(retain_graph=True)
    conv = ex.get_submodule("layer3.0.conv1")
    assert conv.weight.grad is not None and ex.fc.weight.grad is None
    outputs["logits"].sum().backward()
    assert ex.fc.weight.grad is not None
    # One pass: the graph runs layer1..layer4 once, not once per output.
    assert [str(n.target) for n in ex.graph.nodes].count("layer3.1.conv1") == 1
    model.zero_grad(set_to_none=True)


# --- argument errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "no nodes requested"),
        ({"return_nodes": ["a"], "train_return_nodes": ["a"]}, "together with"),
        ({"train_return_nodes": ["a"]}, "only train_return_nodes"),
        ({"return_nodes": {"layer1": "k", "layer2": "k"}}, "output key 'k' twice"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(InvalidArgumentError, match=match):
        fxtap.create_feature_extractor(torchvision.models.resnet18(), **kwargs)


def test_not_found_lists_closest_and_mode() -> None:
    with pytest.raises(NodeNotFoundError) as info:
        fxtap.create_feature_extractor(torchvision.models.resnet18(), ["layer1.relu"])
    assert "in the train graph of ResNet" in str(info.value)
    assert "'layer1.0.relu'" in str(info.value)


# --- what an extractor keeps alive ------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_pruned_parameters_are_freed_with_the_model(mode: str) -> None:
    model = torchvision.models.resnet18().train(mode == "train")
    pruned = [weakref.ref(p) for p in (model.fc.weight, model.layer4[1].conv2.weight)]
    kept = weakref.ref(model.layer1[0].conv1.weight)
    ex = fxtap.create_feature_extractor(model, ["layer1"])
    assert ex.training == (mode == "train")
    assert ex.kept[mode] and ex.return_nodes[mode] == {"layer1.1.relu_1": "layer1"}
    del model
    gc.collect()
    assert all(ref() is None for ref in pruned)
    assert kept() is not None  # the extractor still runs layer1


class _ListRoot(nn.Module):
    """An untraceable root (it iterates over a list) with a head after the tapped body."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
        self.head = nn.Linear(4, 2)

    def forward(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        return [self.head(self.body(img[None]).mean((2, 3))) for img in images]


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_capture_extractor_holds_only_the_model_it_runs(mode: str) -> None:
    model = _ListRoot().train(mode == "train")
    params = [weakref.ref(p) for p in model.parameters()]
    with pytest.warns(UserWarning, match="cannot trace the root"):
        ex = fxtap.create_feature_extractor(model, ["body.0"])
    assert isinstance(ex, fxtap.CaptureExtractor) and isinstance(ex, fxtap.Extractor)
    del model
    gc.collect()
    # nothing is pruned on the capture path: it runs (and holds) the model itself, no more
    assert all(ref() is not None for ref in params)
    del ex
    gc.collect()
    assert all(ref() is None for ref in params)


def test_traces_are_kept_only_on_request() -> None:
    model = torchvision.models.resnet18()
    ex = fxtap.create_feature_extractor(model, ["layer1"])
    assert ex.full == {}
    ex = fxtap.create_feature_extractor(model, ["layer1"], keep_traces=True)
    assert set(ex.full) == {"train", "eval"}


# --- threads ---------------------------------------------------------------------------------


def test_calls_from_many_threads_equal_serial_calls() -> None:
    import threading

    model = torchvision.models.resnet18().eval()
    ex = fxtap.create_feature_extractor(model, {"layer1.0.relu": "a", "layer2": "b"})
    inputs = [
        torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(i)) for i in range(8)
    ]
    with torch.no_grad():
        serial = [ex(x) for x in inputs]
    wrong: list[tuple[int, int]] = []

    def work(worker: int) -> None:
        with torch.no_grad():
            for call in range(25):
                i = (worker + call) % len(inputs)
                if not bitwise_equal(ex(inputs[i]), serial[i]):
                    wrong.append((worker, call))

    threads = [threading.Thread(target=work, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == []


def test_mode_switches_from_many_threads_leave_one_consistent_mode() -> None:
    import threading

    model = torchvision.models.resnet18()
    ex = fxtap.create_feature_extractor(model, ["layer1"])
    barrier = threading.Barrier(8)

    def work(worker: int) -> None:
        barrier.wait()
        for call in range(300):
            ex.train((worker + call) % 2 == 0)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    mode = "train" if ex.training else "eval"
    assert ex.graph is ex.graph_for(mode)
    assert type(ex).forward is ex._fxtap_modes[ex.training][4]
    assert all(m.training == ex.training for m in ex.modules())
    x = torch.randn(2, 3, 32, 32)
    reference, _ = capture_reference(model, (x,), training=ex.training, names=["layer1.1.relu_1"])
    assert bitwise_equal(run(ex, model, x)["layer1"], reference["layer1.1.relu_1"])
