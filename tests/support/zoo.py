"""Builders of the model zoos: torchvision (``tests/test_zoo.py``) and timm
(``tests/test_zoo_timm.py``), with the zoo checks their tests share."""

from __future__ import annotations

import contextlib
import inspect
import itertools
import math
import random
import sys
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torchvision
from torch import nn

from support.checker import bitwise_equal, capture_reference, is_write, preserved

ALL_MODELS = torchvision.models.list_models()
RANDOM_NODES = 10
DETECTION = {
    n for n in ALL_MODELS if n in torchvision.models.list_models(torchvision.models.detection)
}
SEGMENTATION = set(torchvision.models.list_models(torchvision.models.segmentation))
VIDEO = set(torchvision.models.list_models(torchvision.models.video))
FLOW = set(torchvision.models.list_models(torchvision.models.optical_flow))


def builder_kwargs(name: str) -> dict[str, Any]:
    """No weights, a small head, and a small input size where the builder takes one."""
    params = inspect.signature(torchvision.models.get_model_builder(name)).parameters
    kwargs: dict[str, Any] = {"weights": None}
    if "weights_backbone" in params:
        kwargs["weights_backbone"] = None
    if name in FLOW:
        return kwargs
    kwargs["num_classes"] = 3 if name in DETECTION else 5
    if name in DETECTION and not name.startswith("ssd"):
        kwargs |= {"min_size": 96, "max_size": 128}  # the transform resizes to this
    if "rcnn" in name:
        # 50 proposals instead of 1000 (2000 in train mode) and 10 detections instead of 100:
        # the box, mask and keypoint heads run once per proposal or detection and dominate
        kwargs |= {
            "rpn_pre_nms_top_n_test": 100,
            "rpn_post_nms_top_n_test": 50,
            "rpn_pre_nms_top_n_train": 100,
            "rpn_post_nms_top_n_train": 50,
            "box_batch_size_per_image": 32,
            "box_detections_per_img": 10,
        }
    if name.startswith("vit_"):
        kwargs["image_size"] = 28 if name == "vit_h_14" else 32
    return kwargs


def build(name: str) -> nn.Module:
    """The model, its random initialisation replaced by a cheap deterministic fill.

    NOTE: the values of the weights do not matter for a bitwise comparison, only that both
    runs see the same ones; torch's random fills dominate the build of the largest models
    (regnet_y_128gf: 640M parameters, ~20 s, most of it drawing random numbers twice: the
    default init, then the builder's own). ``_fast_init`` swaps the random ``torch.nn.init``
    functions for a copy of a fixed random tile scaled by ``1/sqrt(fan_in)``, so activations
    keep their usual size; the constant fills (BatchNorm and LayerNorm weights, biases set
    to zero) are left as they are.
    """
    torch.manual_seed(0)
    with warnings.catch_warnings(), _fast_init():
        # some builders warn that their default initialisation will change
        warnings.simplefilter("ignore", UserWarning)
        return torchvision.models.get_model(name, **builder_kwargs(name))


#: The random ``torch.nn.init`` functions that ``build`` replaces while a model is built.
_RANDOM_INITS = (
    "uniform_",
    "normal_",
    "trunc_normal_",
    "kaiming_uniform_",
    "kaiming_normal_",
    "xavier_uniform_",
    "xavier_normal_",
)


_TILE = 65521  # a prime, so the tile does not line up with the rows of a weight


@contextlib.contextmanager
def _fast_init() -> Iterator[None]:
    tile = torch.rand(2 * _TILE, generator=torch.Generator().manual_seed(0)) * 2 - 1
    calls = itertools.count()

    def fill(tensor: torch.Tensor, *_args: Any, **_kwargs: Any) -> torch.Tensor:
        fan_in = math.prod(tensor.shape[1:]) if tensor.dim() >= 2 else 0
        scale = (3 / fan_in) ** 0.5 if fan_in else 0.05
        start = next(calls) * 7919 % _TILE  # each tensor starts elsewhere in the tile
        values = tile[start : start + _TILE] * scale
        with torch.no_grad():
            flat = tensor.view(-1) if tensor.is_contiguous() else torch.empty(tensor.numel())
            rows, rest = divmod(flat.numel(), _TILE)
            flat[: rows * _TILE].view(rows, _TILE).copy_(values.expand(rows, _TILE))
            flat[rows * _TILE :].copy_(values[:rest])
            if not tensor.is_contiguous():
                tensor.copy_(flat.view(tensor.shape))
        return tensor

    originals = {id(getattr(torch.nn.init, f)) for f in _RANDOM_INITS}
    # NOTE: also the names imported with ``from torch.nn.init import ...``
    # (``nn.MultiheadAttention`` calls its own ``xavier_uniform_``)
    bound = [
        (module, attr, value)
        for key, module in list(sys.modules.items())
        if key.split(".")[0] in ("torch", "torchvision")
        for attr, value in list(vars(module).items())
        if id(value) in originals
    ]
    try:
        for module, attr, _ in bound:
            setattr(module, attr, fill)
        yield
    finally:
        for module, attr, value in bound:
            setattr(module, attr, value)


def pick(names: list[str], seed: int) -> list[str]:
    """10 random nodes (fixed seed), a middle node and the last node, in graph order."""
    rng = random.Random(seed)
    chosen = set(rng.sample(names, min(RANDOM_NODES, len(names))))
    chosen |= {names[len(names) // 2], names[-1]}
    return [n for n in names if n in chosen]


def quiet(fn: Callable[[], Any]) -> tuple[Any, list[str]]:
    """Run ``fn`` and return its result and the fallback's warnings (others are errors)."""
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        result = fn()
    messages = [str(w.message) for w in record if w.category is UserWarning]
    others = [w for w in record if w.category is not UserWarning]
    assert not others, others
    return result, messages


def check_mode(ex: Any, model: nn.Module, mode: str, inputs: list[Any]) -> None:
    """``check_extractor``'s assertions for an extractor built with per-mode nodes."""
    training = mode == "train"
    ex.train(training)
    ex.graph.lint()
    for node in ex.graph.nodes:
        if node.op not in ("placeholder", "output") and not node.users:
            ok = node.op == "call_function" and "assert" in getattr(node.target, "__name__", "")
            assert ok or is_write(node, ex), f"dead node {node.format_node()} ({mode})"
    # only the requested values; the eager cross-check of the reference in eval mode only
    # (in train mode the models with dropout skip it anyway)
    reference, _ = capture_reference(
        model,
        inputs,
        training=training,
        names=set(ex.outputs[mode].values()),
        cross_check=not training,
    )
    with preserved(model), torch.no_grad():
        torch.manual_seed(0)
        outputs = ex(*inputs)
    assert set(outputs) == set(ex.outputs[mode])
    for key, node in ex.outputs[mode].items():
        assert bitwise_equal(outputs[key], reference[node]), f"{mode} output {node!r}"


# --- timm (the optional timm package; callers skip when it is missing) -----------------------

#: Convolutional models that take any input size: checked at 64x64.
FLEXIBLE = [
    "resnet10t", "resnet18d", "resnext26ts", "seresnext26ts", "regnetx_002", "regnety_002",
    "mobilenetv3_small_050", "mobilenetv2_035", "mnasnet_small", "lcnet_035",
    "efficientnet_lite0", "tinynet_e", "ghostnet_050", "densenet121", "dla34", "dpn48b",
    "cspresnet50", "darknet17", "ese_vovnet19b_slim", "rexnet_100", "repvgg_a0",
    "mobileone_s0", "convnext_atto", "convnextv2_atto", "edgenext_xx_small", "poolformer_s12",
    "nf_resnet26", "eca_resnet33ts", "gcresnext26ts", "skresnet18", "res2net50_14w_8s",
    "resnest14d", "selecsls42b", "hardcorenas_a", "fbnetc_100", "spnasnet_100",
    "semnasnet_050", "fastvit_t8", "repghostnet_050", "hgnetv2_b0", "starnet_s1",
]  # fmt: skip
#: Models whose position embeddings or window sizes fix the input: checked at their size.
FIXED = [
    "vit_tiny_patch16_224", "deit_tiny_patch16_224", "levit_128s", "mixer_s32_224",
    "efficientformer_l1", "pit_ti_224", "xcit_nano_12_p16_224",
]  # fmt: skip


def build_timm(name: str) -> nn.Module:
    import timm

    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, num_classes=5)
