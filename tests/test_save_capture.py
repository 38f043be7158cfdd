"""Capture extractors in the safe ``.fxtap`` format: the module tree, the requests, the options.

A loaded capture extractor is rebuilt from allowlisted classes and handed to fxtap's capture
builder; its values and gradients are compared bitwise with forward hooks on a copy of the
unmodified model, in both modes. ``FXTAP_THOROUGH=1`` runs every torchvision detection model.
"""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision
from torch import nn

import fxtap
from fxtap.capture import CaptureExtractor
from fxtap.errors import LoadError
from fxtap.save import load, save
from support.checker import bitwise_equal, hooked
from support.saving import rewrite_manifest

THOROUGH = os.environ.get("FXTAP_THOROUGH") == "1"
ALL_DETECTION = torchvision.models.list_models(torchvision.models.detection)
# the smallest of each head family by default: two-stage (RPN + ROI heads), single-shot
DETECTION = ALL_DETECTION if THOROUGH else ["fasterrcnn_mobilenet_v3_large_320_fpn"]
DETECTION_EVAL = [] if THOROUGH else ["ssdlite320_mobilenet_v3_large", "fcos_resnet50_fpn"]


def build_detection(name: str) -> nn.Module:
    from support.zoo import build

    return build(name)


def capture(model: nn.Module, nodes: Any, **kwargs: Any) -> CaptureExtractor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the capture path says it is used
        ex = fxtap.create_feature_extractor(model, nodes, **kwargs)
    assert isinstance(ex, CaptureExtractor)
    return ex


def detection_inputs(name: str, training: bool) -> list[Any]:
    torch.manual_seed(1)
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 80)]
    if not training:
        return [images]
    targets = []
    for _ in images:
        target: dict[str, torch.Tensor] = {
            "boxes": torch.tensor([[4.0, 6.0, 40.0, 50.0]]),
            "labels": torch.tensor([1]),
        }
        if name.startswith("maskrcnn"):
            target["masks"] = torch.zeros(1, 64, 64, dtype=torch.uint8)
            target["masks"][:, 8:40, 8:40] = 1
        if name.startswith("keypointrcnn"):
            target["keypoints"] = torch.cat([torch.full((1, 17, 2), 20.0), torch.ones(1, 17, 1)], 2)
        targets.append(target)
    return [images, targets]


def island_node(model: nn.Module) -> str:
    """A node inside a traced submodule (not a module output): served by the island's graph."""
    modules = dict(model.named_modules())
    names = fxtap.get_graph_node_names(model)[1]
    inside = [n for n in names if n not in modules and n.startswith("backbone")]
    return next((n for n in inside if "add" in n), inside[-1])  # VGG has no residual add


def param_grads(score: torch.Tensor, module: nn.Module) -> dict[str, torch.Tensor | None]:
    named = {k: p for k, p in module.named_parameters() if p.requires_grad}
    found = torch.autograd.grad(score, list(named.values()), allow_unused=True)
    return dict(zip(named, found, strict=True))


def score_of(output: Any) -> torch.Tensor:
    leaves = torch.utils._pytree.tree_leaves(output)
    return sum(t.float().sum() for t in leaves if isinstance(t, torch.Tensor) and t.requires_grad)


def check_loaded(name: str, training: bool, tmp_path: Path) -> None:
    model = build_detection(name)
    model.train(training)
    node = island_node(model)
    ex = capture(model, {"backbone": "features", node: "inside", ":output": "out"})
    path = save(ex, tmp_path / f"{name}.fxtap")
    loaded = load(path)  # torchvision's classes are allowlisted: no trust needed
    assert isinstance(loaded, CaptureExtractor) and loaded.training == training
    assert loaded.outputs == ex.outputs and loaded.islands == ex.islands
    reference = copy.deepcopy(model)
    inputs = detection_inputs(name, training)
    torch.manual_seed(0)
    expected, output = hooked(reference, ["backbone"], inputs, training)
    torch.manual_seed(0)
    got = loaded(*inputs)
    assert bitwise_equal(got["features"], expected["backbone"])
    assert bitwise_equal(got["out"], output)
    torch.manual_seed(0)
    original = copy.deepcopy(ex)(*inputs)
    assert bitwise_equal(got["inside"], original["inside"])
    if training:  # the losses: gradients of every parameter equal the model's
        want = param_grads(score_of(output), reference)
        have = param_grads(score_of(got["out"]), loaded.model)
        assert want.keys() == have.keys()
        assert any(g is not None for g in have.values())
        for key, grad in have.items():
            assert bitwise_equal(grad, want[key]), key


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", DETECTION)
def test_detection_models_load_from_the_safe_format(name: str, training: bool, tmp_path: Path):
    check_loaded(name, training, tmp_path)


@pytest.mark.parametrize("name", DETECTION_EVAL)
def test_more_detection_heads_load_from_the_safe_format(name: str, tmp_path: Path):
    check_loaded(name, False, tmp_path)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_test_models_load_with_trust(training: bool, tmp_path: Path):
    from support.capture_models import Stack

    torch.manual_seed(0)
    model = Stack(depth=3).train(training)
    nodes = {"blocks.1.fc1": "a", "blocks.2": "b", "embed:input": "c", ":output": "out"}
    ex = capture(model, nodes, tracer_kwargs={"leaf_modules": [nn.LayerNorm]})
    path = save(ex, tmp_path / "stack.fxtap")
    with pytest.raises(LoadError, match=r"'support\.capture_models:Stack'.*trust=True"):
        load(path)
    loaded = load(path, trust=True)
    assert loaded.tracer_kwargs["leaf_modules"] == [nn.LayerNorm]
    reference = copy.deepcopy(model)
    images = [torch.randn(5, 4), torch.randn(3, 4)]
    torch.manual_seed(0)
    expected, output = hooked(reference, ["blocks.2"], [images], training)
    got = loaded(images)
    assert bitwise_equal(got["b"], expected["blocks.2"])
    assert bitwise_equal(got["out"], output)
    assert bitwise_equal(got["a"], copy.deepcopy(ex)(images)["a"])
    want = param_grads(score_of(output), reference)
    have = param_grads(score_of(got["out"]), loaded.model)
    for key, grad in have.items():
        assert grad is not None and bitwise_equal(grad, want[key]), key


# --- hostile files -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def detection_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = build_detection("fasterrcnn_mobilenet_v3_large_320_fpn").eval()
    path = tmp_path_factory.mktemp("capture") / "det.fxtap"
    return save(capture(model, ["backbone", "rpn"]), path)


def _rpn(manifest: dict[str, Any]) -> dict[str, Any]:
    return manifest["model"]["modules"]["rpn"]


def _root_class(m: dict[str, Any]) -> None:
    m["model"]["class"] = "torchvision.models.detection.faster_rcnn:FasterRCNNX"


def _config_key(m: dict[str, Any]) -> None:
    m["model"]["config"]["x=1;import os"] = 1


def _child_name(m: dict[str, Any]) -> None:
    m["model"]["modules"]["x=__import__('os')"] = m["model"]["modules"].pop("rpn")


def _extra_top(m: dict[str, Any]) -> None:
    m["code"] = "print(1)"


def _extra_module_key(m: dict[str, Any]) -> None:
    _rpn(m)["forward"] = "x"


def _object_class(m: dict[str, Any]) -> None:
    _rpn(m)["config"]["box_coder"]["object"]["class"] = "os:system"


def _object_state(m: dict[str, Any]) -> None:
    _rpn(m)["config"]["box_coder"]["object"]["state"]["__class__"] = 1


def _object_attribute(m: dict[str, Any]) -> None:
    _rpn(m)["config"]["box_coder"]["object"]["state"]["evil"] = 1


def _function(m: dict[str, Any]) -> None:
    _rpn(m)["config"]["box_similarity"] = {"function": "builtins:eval"}


def _tensor(m: dict[str, Any]) -> None:
    _rpn(m)["modules"]["anchor_generator"]["config"]["cell_anchors"] = [{"tensor": "t99999"}]


def _leaf(m: dict[str, Any]) -> None:
    m["tracer"] = {"leaf_modules": ["builtins:exec"]}


def _autowrap(m: dict[str, Any]) -> None:
    m["tracer"] = {"autowrap_modules": ["os"]}


def _request(m: dict[str, Any]) -> None:
    m["outputs"]["eval"] = {"x": "no.such.node"}


def _kind(m: dict[str, Any]) -> None:
    m["kind"] = "graphs"


def _same_as(m: dict[str, Any]) -> None:
    m["model"]["modules"]["rpn"] = {"same_as": "model"}


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_root_class, r"model\.class.*FasterRCNNX.*does not allow.*closest: .*FasterRCNN'"),
        (_config_key, r"model\.config.*FasterRCNN holds no attribute 'x=1;import os'"),
        (_child_name, r"model\.modules\.x=__import__.*is not a plain identifier"),
        (_extra_top, r"unexpected \['code'\]"),
        (_extra_module_key, r"rpn: expected the fields.*unexpected \['forward'\]"),
        (_object_class, r"object class 'os:system'.*does not allow"),
        (_object_state, r"'__class__' is not a plain identifier"),
        (_object_attribute, r"BoxCoder holds no attribute 'evil'"),
        (_function, r"function 'builtins:eval'.*does not allow"),
        (_tensor, r"tensor 't99999' is not listed"),
        (_leaf, r"tracer\.leaf_modules\[0\].*not allowed"),
        (_autowrap, r"tracer\.autowrap_modules\[0\].*not allowed"),
        (_request, r"stored requests cannot be served.*no\.such\.node"),
        (_kind, r"kind: 'graphs' is not 'capture'"),
        (_same_as, r"not a module stored before"),
    ],
    ids=lambda v: v.__name__.strip("_") if callable(v) else "",
)
def test_hostile_capture_files_are_refused(
    detection_file: Path, tmp_path: Path, edit: Any, message: str
):
    path = rewrite_manifest(detection_file, target=tmp_path / "evil.fxtap", edit=edit)
    with pytest.raises(LoadError, match=message):
        load(path)


def test_unsavable_tracer_options_are_refused_with_the_fix(tmp_path: Path):
    from support.capture_models import Stack

    ex = capture(Stack(depth=2), ["blocks.1"], tracer_kwargs={"autowrap_functions": [lambda x: x]})
    with pytest.raises(fxtap.InvalidArgumentError, match=r"fmt='pickle'"):
        save(ex, tmp_path / "s.fxtap")
    assert not list(tmp_path.iterdir())


def test_helper_objects_that_cannot_be_described_are_refused_with_the_fix(tmp_path: Path):
    """A cycle of plain objects, or an object with its own pickling, is not plain data."""
    from support.capture_models import Stack

    class Loop:
        def __init__(self) -> None:
            self.me = self

    for helper in (Loop(), torch.Generator()):
        model = Stack(depth=2)
        model.embed.helper = helper
        ex = capture(model, ["blocks.1"])
        with pytest.raises(
            fxtap.InvalidArgumentError, match=r"'model\.embed'.*'helper'.*fmt='pickle'"
        ):
            save(ex, tmp_path / "h.fxtap")
        assert not list(tmp_path.iterdir())
