"""fxtap names every torchvision model as torchvision does, except for the documented rules.

Models are built on the ``meta`` device: tracing runs no forward, so no weights need to exist,
and construction takes milliseconds instead of seconds. Two rules make fxtap differ from
torchvision (docs/node-names.md), and each difference is checked against the model:

* suffix: a real module whose name ends in ``_<digits>`` keeps it. torchvision strips the
  suffix and renumbers per base name (ViT's ``ln_1``, ``ln_2`` become ``ln``, ``ln_1``).
* reserved: a generated name never equals the path of a real submodule. torchvision names a
  functional ``cat`` ``inception3a.cat`` although ``inception3a.cat`` is also the path of a
  (never called) ``FloatFunctional`` module; fxtap calls the function ``inception3a.cat_1``.
"""

from __future__ import annotations

import collections
import functools
import inspect
import re
import warnings
from collections.abc import Callable
from typing import Any
from unittest import mock

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models import feature_extraction, regnet

from fxtap import get_graph_node_names, trace

pytestmark = pytest.mark.slow

#: torchvision's own ``get_graph_node_names`` cannot trace these, so there is nothing to
#: compare; ``test_torchvision_still_cannot_trace`` keeps the list honest.
TORCHVISION_UNTRACEABLE = frozenset(
    {
        # detection heads iterate over a Proxy (the list of images, anchors per level)
        "fasterrcnn_mobilenet_v3_large_320_fpn",
        "fasterrcnn_mobilenet_v3_large_fpn",
        "fasterrcnn_resnet50_fpn",
        "fasterrcnn_resnet50_fpn_v2",
        "fcos_resnet50_fpn",
        "keypointrcnn_resnet50_fpn",
        "maskrcnn_resnet50_fpn",
        "maskrcnn_resnet50_fpn_v2",
        "retinanet_resnet50_fpn",
        "retinanet_resnet50_fpn_v2",
        "ssd300_vgg16",
        "ssdlite320_mobilenet_v3_large",
        # RAFT's correlation lookup branches on tensor values
        "raft_large",
        "raft_small",
    }
)

#: Last name component that torchvision rewrites, fxtap spelling -> torchvision spelling.
#: ViT's encoder blocks have real submodules ``ln_1`` and ``ln_2``: torchvision strips
#: ``_1`` and ``_2`` and numbers the two calls of "``ln``" ``ln`` and ``ln_1``.
SUFFIX_RENAMES = {"ln_1": "ln", "ln_2": "ln_1"}

#: How many names differ from torchvision's in each mode, by rule. Unlisted models: none.
EXPECTED_DIFFERENCES: dict[str, dict[str, int]] = {
    # one ``ln_1`` and one ``ln_2`` per encoder layer: 12, 12, 24, 24 and 32 layers
    "vit_b_16": {"suffix": 2 * 12},
    "vit_b_32": {"suffix": 2 * 12},
    "vit_l_16": {"suffix": 2 * 24},
    "vit_l_32": {"suffix": 2 * 24},
    "vit_h_14": {"suffix": 2 * 32},
}

ALL_MODELS = torchvision.models.list_models()
COMPARED = [name for name in ALL_MODELS if name not in TORCHVISION_UNTRACEABLE]


def build(name: str, device: str = "meta") -> nn.Module:
    """Build ``name`` without weights, on ``meta`` by default."""
    kwargs: dict[str, object] = {"weights": None}
    params = inspect.signature(torchvision.models.get_model_builder(name)).parameters
    if "weights_backbone" in params:
        kwargs["weights_backbone"] = None
    # NOTE: RegNet's builders compute block widths with torch ops and ``.tolist()``, which
    # meta tensors cannot do: that small computation runs on CPU, the model on ``device``.
    block_params = mock.patch.object(
        regnet.BlockParams, "from_init_params", _on_cpu(regnet.BlockParams.from_init_params)
    )
    with warnings.catch_warnings(), block_params, torch.device(device):
        # some builders warn that their default initialisation will change
        warnings.simplefilter("ignore", UserWarning)
        return torchvision.models.get_model(name, **kwargs)


def _on_cpu(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with torch.device("cpu"):
            return fn(*args, **kwargs)

    return wrapper


def classify(
    model: nn.Module, ours: list[str], theirs: list[str], training: bool
) -> collections.Counter[str]:
    """Check each name that differs from torchvision's against the model; count them by rule."""
    assert len(ours) == len(theirs), "fxtap and torchvision found different numbers of nodes"
    pairs = [(a, b) for a, b in zip(ours, theirs) if a != b]
    kinds: collections.Counter[str] = collections.Counter()
    if not pairs:
        return kinds
    paths = {name for name, _ in model.named_modules()}
    nodes = {name: node for node, name in trace(model, training=training).names.items()}
    for ours_name, theirs_name in pairs:
        node = nodes[ours_name]
        if node.op == "call_module":
            # the suffix rule: fxtap's name is the module's real path
            assert ours_name == node.target, ours_name
            assert ours_name in paths, ours_name
            scope, _, last = ours_name.rpartition(".")
            assert last in SUFFIX_RENAMES, f"{ours_name!r} differs from {theirs_name!r}"
            assert theirs_name == (f"{scope}.{SUFFIX_RENAMES[last]}" if scope else last)
            kinds["suffix"] += 1
        else:
            # the reserved rule: torchvision's name is taken by a real submodule's path
            assert theirs_name in paths, f"{ours_name!r} differs from {theirs_name!r}"
            assert re.fullmatch(re.escape(theirs_name) + r"_\d+", ours_name), ours_name
            assert ours_name not in paths, ours_name
            kinds["reserved"] += 1
    return kinds


@pytest.mark.parametrize("name", COMPARED)
def test_same_names_as_torchvision(name: str) -> None:
    model = build(name)
    theirs = feature_extraction.get_graph_node_names(model, suppress_diff_warning=True)
    ours = get_graph_node_names(model, suppress_diff_warning=True)
    expected = EXPECTED_DIFFERENCES.get(name, {})
    for mode, training in ((0, True), (1, False)):
        assert len(set(ours[mode])) == len(ours[mode]), "fxtap names must be unique"
        kinds = classify(model, ours[mode], theirs[mode], training)
        assert dict(kinds) == expected, f"{'train' if training else 'eval'} mode of {name}"


@pytest.mark.parametrize("name", sorted(TORCHVISION_UNTRACEABLE))
def test_torchvision_still_cannot_trace(name: str) -> None:
    assert name in ALL_MODELS
    with pytest.raises(torch.fx.proxy.TraceError):
        feature_extraction.get_graph_node_names(build(name), suppress_diff_warning=True)


def test_expected_differences_name_real_models() -> None:
    assert set(EXPECTED_DIFFERENCES) <= set(COMPARED)


@pytest.mark.parametrize(
    "name", ["resnet18", "mobilenet_v3_small", "regnet_y_400mf", "swin_t", "vit_b_16"]
)
def test_meta_models_trace_like_real_ones(name: str) -> None:
    assert get_graph_node_names(build(name)) == get_graph_node_names(build(name, "cpu"))
