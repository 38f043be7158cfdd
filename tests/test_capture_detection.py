"""Capture extractors of torchvision detection models: a backbone tap runs and keeps no head.

Built with ``example_inputs=``, a capture extractor probes each mode once and drops the modules
no probe reached before the last tap (fxtap.capture._reach); its values and gradients still
equal those of forward hooks on the unmodified model, bitwise, in train and eval mode.
"""

from __future__ import annotations

import copy
import pickle
import threading
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torchvision
from torch import nn

import fxtap
from fxtap import DroppedModuleError, create_feature_extractor
from fxtap.capture import CaptureExtractor, Dropped
from support.checker import bitwise_equal, preserved
from support.models import ListRoot

SMALL = {"min_size": 64, "max_size": 64}

#: model, builder options, the tap inside the backbone, the head modules, images per call
MODELS: list[tuple[str, dict[str, Any], str, tuple[str, ...], int]] = [
    ("fasterrcnn_mobilenet_v3_large_320_fpn", SMALL, "backbone.body.5", ("rpn", "roi_heads"), 1),
    ("retinanet_resnet50_fpn", SMALL, "backbone.body.layer2", ("head",), 1),
    ("fcos_resnet50_fpn", SMALL, "backbone.body.layer2", ("head",), 1),
    # SSDlite resizes to 320x320 whatever it is given; its train-mode BatchNorm needs 2 images
    ("ssdlite320_mobilenet_v3_large", {}, "backbone.features.0.8", ("head",), 2),
    ("maskrcnn_resnet50_fpn", SMALL, "backbone.body.layer2", ("rpn", "roi_heads"), 1),
]


def _inputs(count: int) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    g = torch.Generator().manual_seed(1)
    images = [torch.rand(3, 64, 64, generator=g) for _ in range(count)]
    target = {
        "boxes": torch.tensor([[4.0, 6.0, 40.0, 50.0]]),
        "labels": torch.tensor([1]),
        "masks": torch.zeros(1, 64, 64, dtype=torch.uint8),
    }
    return images, [dict(target) for _ in range(count)]


def _score(tap: Any) -> torch.Tensor:
    leaves = torch.utils._pytree.tree_leaves(tap)
    return sum((t.float().square().mean() for t in leaves), torch.zeros(()))


def _grads(taps: list[Any], params: list[nn.Parameter]) -> list[tuple[Any, ...]]:
    """The gradients of each tap's score and of their sum with respect to ``params``.

    The sum is taken in the order of ``taps``: a sum in another order runs the backward
    branches in another order and accumulates in the last bits differently.
    """
    return [
        torch.autograd.grad(_score(group), params, allow_unused=True, retain_graph=True)
        for group in [*taps, taps]
    ]


def _reference(
    model: nn.Module,
    paths: list[str],
    args: tuple[Any, ...],
    params: list[nn.Parameter],
    *,
    cloned: str,
) -> tuple[dict[str, Any], list[tuple[Any, ...]]]:
    """Values at ``paths`` seen by forward hooks on the model, and the gradients of their scores.

    The hook at ``cloned`` hands a copy on as the module's output, as the capture extractor
    does for a module output it taps (the copy is an extra autograd node); the others return
    nothing, as a node tapped inside a traced submodule flows on unchanged. With a copy at
    every tap, the gradient of a sum over two taps would be accumulated in another order at
    the inner tap, and differ in the last bits.
    """
    kept: dict[str, Any] = {}

    def keep(path: str) -> Callable[..., Any]:
        def hook(_m: nn.Module, _a: Any, out: Any) -> Any:
            if path in kept or path != cloned:
                kept.setdefault(path, out)
                return None
            kept[path] = out
            return torch.utils._pytree.tree_map(
                lambda v: v.clone() if isinstance(v, torch.Tensor) else v, out
            )

        return hook

    handles = [model.get_submodule(p).register_forward_hook(keep(p)) for p in paths]
    try:
        with preserved(model):
            torch.manual_seed(0)
            model(*args)
            grads = _grads([kept[p] for p in paths], params)
    finally:
        for h in handles:
            h.remove()
    return kept, grads


def _counted(model: nn.Module, paths: tuple[str, ...]) -> dict[str, list[int]]:
    calls: dict[str, list[int]] = {p: [] for p in paths}
    for path in paths:
        model.get_submodule(path).register_forward_pre_hook(lambda *_a, p=path: calls[p].append(1))
    return calls


@pytest.mark.parametrize(
    ("name", "options", "inner", "heads", "count"), MODELS, ids=[m[0] for m in MODELS]
)
def test_backbone_taps_run_and_keep_no_head_and_equal_hooks(
    name: str, options: dict[str, Any], inner: str, heads: tuple[str, ...], count: int
) -> None:
    torch.manual_seed(0)
    builder = torchvision.models.get_model_builder(name)
    model = builder(weights=None, weights_backbone=None, num_classes=3, **options).eval()
    images, targets = _inputs(count)
    calls = _counted(model, ("backbone", *heads))
    before = {k: v.clone() for k, v in model.train().state_dict().items()}
    nodes = {"backbone": "tap", inner: "inner"}
    with pytest.warns(UserWarning, match=r"Dropped after the probe run on example_inputs="):
        ex = create_feature_extractor(model, nodes, example_inputs=(images, targets), tracer="fx")
    assert isinstance(ex, CaptureExtractor)
    # the build probed both modes and left the model as it was
    assert model.training and all(
        bitwise_equal(v, before[k]) for k, v in model.state_dict().items()
    )
    assert all(not isinstance(m, Dropped) for m in model.modules())
    assert len(calls["backbone"]) == 2 and all(not calls[h] for h in heads)
    calls["backbone"].clear()
    # (b) the heads are stubs in the extractor: fewer parameters than the model
    assert set(ex.dropped) == set(heads)
    assert all(isinstance(ex.model.get_submodule(h), Dropped) for h in heads)
    kept, total = (sum(p.numel() for p in m.parameters()) for m in (ex, model))
    assert 0 < kept < total
    params = [p for p in model.backbone.parameters() if p.requires_grad]
    assert {id(p) for p in ex.parameters()} >= {id(p) for p in params}
    for training in (False, True):
        model.train(training)
        ex.train(training)
        args = (images, targets) if training else (images,)
        expected, expected_grads = _reference(
            model, ["backbone", inner], args, params, cloned="backbone"
        )
        assert all(calls[h] for h in heads)  # the counters count: the model runs its heads
        for seen in calls.values():
            seen.clear()
        with preserved(model):
            torch.manual_seed(0)
            out = ex(*args)
            grads = _grads([out["tap"], out["inner"]], params)
        # (a) the backbone ran once; no head ran (a dropped head raises when it is reached)
        assert len(calls["backbone"]) == 1 and all(not calls[h] for h in heads)
        # (c) values and gradients equal the hooks', bitwise
        assert bitwise_equal(dict(out["tap"]), dict(expected["backbone"])), training
        assert bitwise_equal(out["inner"], expected[inner]), training
        assert all(any(g is not None for g in by_tap) for by_tap in grads)
        assert bitwise_equal(grads, expected_grads), training


def test_without_example_inputs_nothing_is_dropped_and_no_head_runs() -> None:
    model = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None, num_classes=3, **SMALL
    ).eval()
    calls = _counted(model, ("backbone", "rpn", "roi_heads"))
    with pytest.warns(UserWarning, match=r"pass example_inputs= to drop the modules after it"):
        ex = create_feature_extractor(model, ["backbone.body"])
    with torch.no_grad():
        ex(_inputs(1)[0])
    assert ex.dropped == () and not any(isinstance(m, Dropped) for m in ex.modules())
    assert calls == {"backbone": [1], "rpn": [], "roi_heads": []}


# --- a toy root whose control flow depends on its input --------------------------------------------


class Branchy(ListRoot):
    """Runs ``head`` before ``body`` only when given more than one image."""

    def forward(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        if len(images) > 1:
            scale = self.head(images[1].flatten()[:6]).sum()
            images = [images[0] * scale]
        return [self.head(self.body(img[None]).mean((2, 3))) for img in images]


def _build(model: nn.Module, nodes: Any, match: str, **kw: Any) -> CaptureExtractor:
    with pytest.warns(UserWarning, match=match):
        ex = create_feature_extractor(model, nodes, tracer="fx", **kw)
    assert isinstance(ex, CaptureExtractor)
    return ex


def test_a_call_that_reaches_a_dropped_module_gets_a_typed_error() -> None:
    model = Branchy().eval()
    one = [torch.randn(3, 8, 8)]
    ex = _build(model, ["body.relu"], r"Dropped .*: 'head'", example_inputs=(one,)).eval()
    assert ex.dropped == ("head",) and isinstance(model.head, nn.Linear)
    assert "head" not in ex.node_names("eval") and "body.relu" in ex.node_names("eval")
    with torch.no_grad():
        assert ex(one)["body.relu"].shape[0] == 1
        with pytest.raises(DroppedModuleError, match=r"module 'head' \(Linear\) of Branchy was "
                           r"called, .* Rebuild with example_inputs= .*"):  # fmt: skip
            ex([one[0], torch.randn(3, 8, 8)])
    with pytest.raises(DroppedModuleError, match=r"asked for its attribute 'weight'"):
        _ = ex.model.head.weight
    assert isinstance(DroppedModuleError("x"), RuntimeError)
    # the model itself still takes both paths
    with torch.no_grad():
        assert len(model([one[0], one[0]])) == 1


def test_dropped_extractors_copy_pickle_and_run_on_threads() -> None:
    torch.manual_seed(0)
    model = ListRoot().eval()
    images = [[torch.randn(3, 8, 8)] for _ in range(40)]
    ex = _build(model, ["body.conv2"], "Dropped", example_inputs=(images[0],)).eval()
    with torch.no_grad():
        serial = [ex(i) for i in images]
    for other in (copy.deepcopy(ex), pickle.loads(pickle.dumps(ex))):
        assert other.dropped == ("head",) and isinstance(other.model.head, Dropped)
        with torch.no_grad():
            assert bitwise_equal([other(i) for i in images], serial)
    results: list[Any] = [None] * 4

    def work(worker: int) -> None:
        with torch.no_grad():
            results[worker] = [ex(i) for i in images[worker:] + images[:worker]]

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for w, got in enumerate(results):
        assert bitwise_equal(got, serial[w:] + serial[:w])


def test_render_of_a_dropped_extractor_says_to_draw_the_model(tmp_path: Any) -> None:
    model = ListRoot()
    one = ([torch.randn(3, 8, 8)],)
    ex = _build(model, ["body.relu"], "Dropped", example_inputs=one)
    with pytest.raises(fxtap.InvalidArgumentError, match=r"it dropped 'head' .* render\(model, "):
        fxtap.render(ex, example_inputs=one, out_dir=tmp_path, fmt="dot")


def test_nothing_is_dropped_when_the_whole_model_runs_or_the_probe_fails() -> None:
    model = ListRoot()
    one = ([torch.randn(3, 8, 8)],)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.warns(UserWarning, match="Traced submodules") as record:
            ex = create_feature_extractor(
                model, ["body", ":output"], example_inputs=one, tracer="fx"
            )
    assert ex.dropped == () and "Dropped" not in str(record[0].message)
    # a probe that raises (the input is not a list of images) drops nothing, and says why
    match = r"Nothing dropped: the train-mode probe run on example_inputs= raised"
    ex = _build(model, ["body"], match, example_inputs=(torch.randn(3, 8, 8),))
    assert ex.dropped == () and isinstance(ex.model.head, nn.Linear)
    assert fxtap.DroppedModuleError is DroppedModuleError


@pytest.mark.parametrize("fmt", ["fxtap", "pickle"])
def test_a_dropped_detection_extractor_saves_and_loads(tmp_path: Any, fmt: str) -> None:
    torch.manual_seed(0)
    builder = torchvision.models.get_model_builder("fasterrcnn_mobilenet_v3_large_320_fpn")
    model = builder(weights=None, weights_backbone=None, num_classes=3, **SMALL).eval()
    images, targets = _inputs(1)
    ex = _build(model, ["backbone"], "Dropped", example_inputs=(images, targets)).eval()
    assert ex.dropped == ("rpn", "roi_heads")
    loaded = fxtap.load(fxtap.save(ex, tmp_path / "det.fxtap", fmt=fmt), trust=fmt == "pickle")
    assert isinstance(loaded, CaptureExtractor) and loaded.dropped == ex.dropped
    assert all(isinstance(loaded.model.get_submodule(p), Dropped) for p in ex.dropped)
    with torch.no_grad():
        assert bitwise_equal(loaded(images), ex(images))
    with pytest.raises(DroppedModuleError, match="'rpn'"):
        _ = loaded.model.rpn.head
