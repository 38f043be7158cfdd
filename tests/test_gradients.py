"""Taps sit on the autograd path: Grad-CAM targets give a hook's value and gradient, bitwise.

The reference is ``support.checker.hook_gradient``: a forward hook on the unmodified model that
keeps the module's output and hands a copy on as the output (the usual Grad-CAM hook that
survives later in-place ops such as ResNet's ``relu(bn1)``), so the kept tensor holds the value
of the call and ``torch.autograd.grad(score, kept)`` is the gradient with respect to it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torchvision
from torch import nn

import fxtap
from fxtap.capture import CaptureExtractor
from support.checker import bitwise_equal, hook_gradient, preserved, tensor_grads


def class_score(output: Any) -> torch.Tensor:
    return output[0, 3]


def detection_score(output: Any) -> torch.Tensor:
    return sum(d["scores"].sum() + d["boxes"].sum() for d in output)  # type: ignore[return-value]


def _resnet18() -> nn.Module:
    return torchvision.models.resnet18(num_classes=10)


TARGETS: list[tuple[str, Callable[[], nn.Module], str, tuple[int, ...], tuple[str, ...]]] = [
    ("resnet18", _resnet18, "layer4", (2, 3, 64, 64), ("eval", "train")),
    ("resnet18", _resnet18, "bn1", (2, 3, 64, 64), ("eval", "train")),
    ("resnet50", lambda: torchvision.models.resnet50(num_classes=10), "layer4",
     (1, 3, 64, 64), ("eval",)),
    ("vgg16", lambda: torchvision.models.vgg16(num_classes=10), "features.29",
     (1, 3, 32, 32), ("eval",)),
    ("densenet161", lambda: torchvision.models.densenet161(num_classes=10), "features.norm5",
     (1, 3, 32, 32), ("eval",)),
    ("mnasnet1_0", lambda: torchvision.models.mnasnet1_0(num_classes=10), "layers.16",
     (2, 3, 64, 64), ("eval", "train")),
    ("vit_b_16", lambda: torchvision.models.vit_b_16(num_classes=10),
     "encoder.layers.encoder_layer_11.ln_1", (1, 3, 224, 224), ("eval",)),
    ("swin_t", lambda: torchvision.models.swin_t(num_classes=10), "features.7.1.norm1",
     (1, 3, 64, 64), ("eval", "train")),
]  # fmt: skip


@pytest.mark.parametrize(
    ("builder", "path", "shape", "modes"),
    [pytest.param(b, p, s, m, id=f"{n}-{p}") for n, b, p, s, m in TARGETS],
)
def test_tap_value_and_gradient_equal_a_hook(
    builder: Callable[[], nn.Module], path: str, shape: tuple[int, ...], modes: tuple[str, ...]
) -> None:
    torch.manual_seed(0)
    model = builder()
    x = torch.randn(shape)
    ex = fxtap.create_feature_extractor(model, {path: "tap", ":output": "out"})
    for mode in modes:
        model.train(mode == "train")
        ex.train(mode == "train")
        value, expected = hook_gradient(model, path, [x], class_score)
        with preserved(model):
            torch.manual_seed(0)
            out = ex(x)
            got = tensor_grads(class_score(out["out"]), out["tap"])
        assert bitwise_equal(out["tap"], value), mode
        assert all(g is not None for g in got)
        assert bitwise_equal(got, expected), mode


def test_detection_backbone_tap_value_and_gradient_equal_a_hook() -> None:
    torch.manual_seed(0)
    model = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None,
        weights_backbone=None,
        num_classes=5,
        min_size=96,
        max_size=128,
        box_score_thresh=0.0,
        rpn_pre_nms_top_n_test=50,
        rpn_post_nms_top_n_test=50,
        box_detections_per_img=10,
    ).eval()
    images = [torch.rand(3, 96, 128)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        ex = fxtap.create_feature_extractor(model, {"backbone": "tap", ":output": "out"})
    assert isinstance(ex, CaptureExtractor)
    value, expected = hook_gradient(model, "backbone", [images], detection_score)
    with preserved(model):
        torch.manual_seed(0)
        out = ex(images)
        got = tensor_grads(detection_score(out["out"]), out["tap"])
    assert bitwise_equal(dict(out["tap"]), dict(value))
    assert any(g is not None for g in got)
    assert bitwise_equal(got, expected)
