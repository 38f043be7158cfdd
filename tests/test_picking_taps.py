"""docs/picking-taps.md against the grad-cam package: every Grad-CAM target gives the same CAM.

For each target on the page, grad-cam hooks the module it documents (``target_layers``, with
its ``reshape_transform`` for ViT and Swin) and computes its raw CAM (before scaling and
resizing). fxtap's extractor taps the page's node next to the logits; the tap's value and its
gradient, through the same reshape, must equal what grad-cam captured, and give the same raw
CAM, bitwise. Faster R-CNN's backbone returns a dict of maps, which has no gradient hook in
grad-cam: it is checked with the gradient-free EigenCAM, as grad-cam's own tutorial does.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import fxtap

gradcam = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam import EigenCAM, GradCAM  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402
from pytorch_grad_cam.utils.reshape_transforms import fasterrcnn_reshape_transform  # noqa: E402

PAGE = Path(__file__).resolve().parents[1] / "docs" / "picking-taps.md"


def vit_tokens(t: torch.Tensor) -> torch.Tensor:
    """grad-cam's documented ViT reshape: drop the class token, fold 196 tokens to 14x14."""
    return t[:, 1:, :].reshape(t.size(0), 14, 14, t.size(2)).permute(0, 3, 1, 2)


def channels_first(t: torch.Tensor) -> torch.Tensor:
    """Swin's maps are channels-last."""
    return t.permute(0, 3, 1, 2)


#: model -> (fxtap tap on the page, module grad-cam hooks, reshape, input side).
TARGETS: dict[str, tuple[str, Callable[[Any], nn.Module], Any, int]] = {
    "resnet50": ("layer4", lambda m: m.layer4[-1], None, 64),
    # grad-cam's README: model.features[-1], VGG's last max-pool
    "vgg16": ("features.30", lambda m: m.features[-1], None, 64),
    "vit_b_16": (
        "encoder.layers.encoder_layer_11.ln_1",
        lambda m: m.encoder.layers[-1].ln_1,
        vit_tokens,
        224,
    ),
    "swin_t": ("features.7.1.norm1", lambda m: m.features[-1][-1].norm1, channels_first, 64),
    "densenet121": ("features.norm5", lambda m: m.features[-1], None, 64),
    "mnasnet1_0": ("layers.16", lambda m: m.layers[16], None, 64),
}


def test_every_target_on_the_page_is_checked() -> None:
    text = PAGE.read_text(encoding="utf-8")
    rows = re.findall(r"^\| [^|]+\((\w+)\) \| `([^`]+)`", text, re.M)
    assert {name: tap for name, tap in rows} == {
        **{name: t[0] for name, t in TARGETS.items()},
        "fasterrcnn_resnet50_fpn": "backbone",
    }


def _model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.get_model(name).eval()


#: grad-cam stores a layer's output without copying it, so an in-place op after the layer
#: rewrites what it stored: DenseNet's forward applies ``F.relu(features, inplace=True)`` to
#: ``features.norm5``. fxtap returns the value of the node itself; grad-cam's activation is
#: the value of the node the page names here (its gradient is still the layer's).
OVERWRITTEN = {"densenet121": "relu"}


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_grad_cam_of_the_tap_equals_grad_cams(name: str) -> None:
    tap, layer, reshape, side = TARGETS[name]
    model = _model(name)
    torch.manual_seed(1)
    x = torch.rand(1, 3, side, side)
    stored: list[torch.Tensor] = []
    handle = layer(model).register_forward_hook(lambda m, a, o: stored.append(o.detach().clone()))
    try:
        # NOTE: with gradients on, as grad-cam and the extractor run: without them
        # MultiheadAttention takes its fused fast path and computes other bits.
        category = int(model(x).argmax())
    finally:
        handle.remove()
    targets = [ClassifierOutputTarget(category)]

    cam = GradCAM(model=model, target_layers=[layer(model)], reshape_transform=reshape)
    try:
        cam(input_tensor=x, targets=targets)
        want_act = cam.activations_and_grads.activations[0]
        want_grad = cam.activations_and_grads.gradients[0]
    finally:
        cam.activations_and_grads.release()
    want = np.maximum(
        cam.get_cam_image(x, None, targets, want_act.numpy(), want_grad.numpy(), False), 0
    )

    taps = {tap: "act", ":output": "logits"}
    if name in OVERWRITTEN:
        taps[OVERWRITTEN[name]] = "overwritten"
    extractor = fxtap.create_feature_extractor(model, taps)
    out = extractor(x)
    out["act"].retain_grad()
    out["logits"][0, category].backward()
    assert out["act"].grad is not None, f"no gradient reaches {tap!r}"
    assert torch.equal(out["act"].detach(), stored[0]), "the tap is not the layer's output"
    reshape = reshape or (lambda t: t)
    act, grad = reshape(out["act"].detach()), reshape(out["act"].grad)
    if name in OVERWRITTEN:
        assert not torch.equal(act, want_act)  # grad-cam's copy was rewritten in place
        page = PAGE.read_text(encoding="utf-8")
        assert f'{{"{tap}": "grad", "{OVERWRITTEN[name]}": "act"}}' in page, "fix not documented"
        assert "in place" in page
        act = reshape(out["overwritten"].detach())
    assert torch.equal(act, want_act) and torch.equal(grad, want_grad)
    got = np.maximum(cam.get_cam_image(x, None, targets, act.numpy(), grad.numpy(), False), 0)
    assert got.shape == want.shape and np.array_equal(got, want)


def test_eigen_cam_of_the_faster_rcnn_backbone_equals_grad_cams() -> None:
    torch.manual_seed(0)
    model = torchvision.models.get_model(
        "fasterrcnn_resnet50_fpn", weights_backbone=None, min_size=128, max_size=128
    ).eval()
    x = torch.rand(1, 3, 128, 128)
    cam = EigenCAM(
        model=model, target_layers=[model.backbone], reshape_transform=fasterrcnn_reshape_transform
    )
    try:
        with torch.no_grad():
            cam.activations_and_grads(x)
        want_act = cam.activations_and_grads.activations[0]
    finally:
        cam.activations_and_grads.release()
    want = np.maximum(cam.get_cam_image(x, None, None, want_act.numpy(), None, False), 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the root is untraceable: the extractor captures
        extractor = fxtap.create_feature_extractor(model, {"backbone": "maps"})
    with torch.no_grad():
        maps = extractor(x)["maps"]
    act = fasterrcnn_reshape_transform(maps)
    assert torch.equal(act, want_act)
    got = np.maximum(cam.get_cam_image(x, None, None, act.numpy(), None, False), 0)
    assert np.array_equal(got, want)
