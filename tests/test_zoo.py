"""Every torchvision model can be tapped: values equal an independent run of the model.

For each of the 121 builders of ``torchvision.models.list_models()`` (no weights; small heads
and inputs where the builder allows), 10 random nodes per mode (fixed seed), a middle node and
the last node are extracted and compared bitwise with the shared checker's independent capture
(``tests/checker.py``), in eval mode and in train mode.

Models whose root forward cannot be traced (detection, RAFT) are served by the capture path
(``fxtap.capture.CaptureExtractor``); their reference is a forward of the unmodified model with
hooks for module outputs, and the shared checker's capture of each traced submodule run on the
arguments the submodule received.

Each traced extractor is also saved in the safe ``.fxtap`` format, loaded without trust and
compared bitwise with itself, in both modes (``check_round_trip``).

Train mode, honestly: the checker seeds the RNG before both runs, so a dropout or stochastic
depth draws the same mask in both as long as the extractor runs the same random ops in the same
order. Requesting the last node keeps every random op on the main path, but a pruned side
branch that draws random numbers (GoogLeNet's and Inception's auxiliary heads) shifts the
stream: those models are compared in eval mode only (``TRAIN_EXCLUDED``, with the reason).

``python tests/test_zoo.py LOG`` prints the table of docs/zoo.md from a ``pytest -v
--durations=0`` log of this file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import itertools
import math
import random
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fxtap
from fxtap.capture import CaptureExtractor
from fxtap.trace import restore_training
from tests.checker import (
    _is_write,
    bitwise_equal,
    capture_reference,
    check_tap_gradient,
    preserved,
)

pytestmark = pytest.mark.slow

ALL_MODELS = torchvision.models.list_models()
RANDOM_NODES = 10
#: Models compared in eval mode only, with the reason.
_AUX = (
    "train-mode auxiliary heads hold dropout; when the random nodes do not need them they are "
    "pruned, the dropout draws they make are skipped, and later dropout masks shift"
)
TRAIN_EXCLUDED: dict[str, str] = {
    "googlenet": _AUX,
    "quantized_googlenet": _AUX,
    "inception_v3": _AUX,
    "quantized_inception_v3": _AUX,
}

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


def example_inputs(name: str, training: bool) -> list[Any]:
    """Inputs the model accepts; batch 2 where train-mode BatchNorm sees a single value."""
    if name in FLOW:
        # the correlation pyramid needs 128x128 images; two refinement steps instead of 12
        return [torch.rand(1, 3, 128, 128), torch.rand(1, 3, 128, 128), 2]
    if name in DETECTION:
        images = [torch.rand(3, 96, 128)]
        if not training:
            return [images]
        target: dict[str, torch.Tensor] = {
            "boxes": torch.tensor([[10.0, 12.0, 60.0, 70.0]]),
            "labels": torch.tensor([1]),
        }
        if name.startswith("mask"):
            mask = torch.zeros(1, 96, 128, dtype=torch.uint8)
            mask[:, 12:70, 10:60] = 1
            target["masks"] = mask
        if name.startswith("keypoint"):
            target["keypoints"] = torch.tensor([[[20.0, 20.0, 1.0]] * 17])
        if name.startswith("ssdlite"):
            # its extra layers end in 1x1 maps: train-mode BatchNorm needs two images
            return [[*images, torch.rand(3, 96, 128)], [target, target]]
        return [images, [target]]
    if name in VIDEO:
        if name == "s3d":
            return [torch.rand(1, 3, 16, 224, 224)]  # its final pool is a fixed (2, 7, 7)
        if name.startswith("mvit"):
            return [torch.rand(1, 3, 16, 224, 224)]  # positional embeddings of a fixed size
        return [torch.rand(1, 3, 4, 64, 64)]
    if name in SEGMENTATION:
        return [torch.rand(2, 3, 64, 64)]
    if name.startswith("vit_"):
        size = 28 if name == "vit_h_14" else 32
        return [torch.rand(1, 3, size, size)]
    if name == "maxvit_t":
        return [torch.rand(1, 3, 224, 224)]  # 7x7 partitions at every stage
    if "inception_v3" in name:
        return [torch.rand(2, 3, 299, 299)]  # the auxiliary head needs 17x17 maps
    return [torch.rand(2, 3, 64, 64)]


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


def check_full_trace(name: str, model: nn.Module) -> str:
    """Extract random nodes per mode and compare with the shared checker's capture."""
    (train_names, eval_names), _ = quiet(lambda: fxtap.get_graph_node_names(model))
    nodes = {
        "train": pick(train_names, seed=sum(map(ord, name + "train"))),
        "eval": pick(eval_names, seed=sum(map(ord, name + "eval"))),
    }
    ex, _ = quiet(
        lambda: fxtap.create_feature_extractor(
            model, train_return_nodes=nodes["train"], eval_return_nodes=nodes["eval"]
        )
    )
    for mode in ("eval", "train"):
        if mode == "train" and name in TRAIN_EXCLUDED:
            continue
        check_mode(ex, model, mode, example_inputs(name, mode == "train"))
    check_round_trip(name, ex)
    return f"full trace, {len(ex.opaque)} leaves" if ex.opaque else "full trace"


def check_round_trip(name: str, ex: Any) -> None:
    """The extractor saved in the safe format and loaded without trust computes the same bits."""
    import io
    import zipfile

    from fxtap.save._pack import pack
    from fxtap.save._safe_load import read_archive

    buffer = io.BytesIO()
    pack(ex, buffer)
    with zipfile.ZipFile(buffer) as archive:
        loaded = read_archive(archive, trust=False)
    for mode in ("eval", "train"):
        if mode == "train" and name in TRAIN_EXCLUDED:
            continue
        inputs = example_inputs(name, mode == "train")
        results = []
        for extractor in (ex, loaded):
            extractor.train(mode == "train")
            torch.manual_seed(0)
            with torch.no_grad():
                results.append(extractor(*inputs))
        assert list(results[0]) == list(results[1])
        for key in results[0]:
            assert bitwise_equal(results[0][key], results[1][key]), f"loaded {mode} {key!r}"


def check_mode(ex: Any, model: nn.Module, mode: str, inputs: list[Any]) -> None:
    """``check_extractor``'s assertions for an extractor built with per-mode nodes."""
    training = mode == "train"
    ex.train(training)
    ex.graph.lint()
    for node in ex.graph.nodes:
        if node.op not in ("placeholder", "output") and not node.users:
            ok = node.op == "call_function" and "assert" in getattr(node.target, "__name__", "")
            assert ok or _is_write(node, ex), f"dead node {node.format_node()} ({mode})"
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


def check_capture(name: str, model: nn.Module) -> str:
    """Check a ``CaptureExtractor`` against hooks on the model and per-submodule captures."""
    probe, _ = quiet(lambda: fxtap.create_feature_extractor(model, [":output"]))
    assert isinstance(probe, CaptureExtractor)
    for mode in ("eval", "train"):
        training = mode == "train"
        inputs = example_inputs(name, training)
        islands = probe.islands[mode]
        run = eager_run(model, inputs, training)
        called = list(run.outputs)
        candidates = [n for n in probe.node_names(mode) if n.split(".")[0] in called or n in called]
        candidates = [n for n in candidates if n in called or not _is_module(model, n)]
        nodes = pick(candidates, seed=sum(map(ord, name + mode)))
        ex, messages = quiet(lambda nodes=nodes: fxtap.create_feature_extractor(model, nodes))
        assert isinstance(ex, CaptureExtractor) and not ex.prunes
        assert any("nothing is pruned" in m for m in messages)
        ex.train(training)
        with preserved(model):
            torch.manual_seed(0)
            with torch.no_grad():
                outputs = ex(*inputs)
        reference = eager_reference(model, run, training, nodes, islands, probe.opaque)
        for node in nodes:
            assert same(outputs[node], reference[node]), f"{mode} node {node!r}"
    return f"submodule capture ({len(islands)} traced submodules)"


def same(a: Any, b: Any) -> bool:
    """``bitwise_equal``, also through plain objects such as detection's ``ImageList``."""
    if type(a) is type(b) and hasattr(a, "__dict__") and not isinstance(a, torch.Tensor):
        return same(vars(a), vars(b))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return bitwise_equal(a, b)


def _cloned(value: Any) -> Any:
    return torch.utils._pytree.tree_map(
        lambda v: v.clone() if isinstance(v, torch.Tensor) else v, value
    )


def _is_module(model: nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
    except AttributeError:
        return False
    return True


@dataclasses.dataclass
class EagerRun:
    """One eager forward of the unmodified model, seen by forward hooks on every module.

    Attributes:
        outputs: module path -> output of its first call, cloned at once (later code may
            write into it in place: ``result += input``), in the order the calls finish.
        calls: module path -> arguments and keyword arguments of that call, cloned.
    """

    outputs: dict[str, Any]
    calls: dict[str, tuple[Any, Any]]


def eager_run(model: nn.Module, inputs: list[Any], training: bool) -> EagerRun:
    """Run the model once as the user would, from the seed the extractor's run starts from."""
    run = EagerRun({}, {})
    handles = []
    for path, module in model.named_modules():

        def hook(_m: nn.Module, args: Any, kwargs: Any, out: Any, path: str = path) -> None:
            if path not in run.calls:
                run.calls[path] = (_cloned(args), _cloned(kwargs))
                run.outputs[path] = _cloned(out)

        handles.append(module.register_forward_hook(hook, with_kwargs=True))
    try:
        with preserved(model), restore_training(model), torch.no_grad():
            model.train(training)
            torch.manual_seed(0)
            model(*inputs)
    finally:
        for h in handles:
            h.remove()
    return run


def eager_reference(
    model: nn.Module,
    run: EagerRun,
    training: bool,
    nodes: list[str],
    islands: tuple[str, ...],
    opaque: tuple[str, ...],
) -> dict[str, Any]:
    """Module outputs from the eager run; island nodes from the checker's capture."""
    outputs, calls = run.outputs, run.calls
    reference: dict[str, Any] = {}
    captured: dict[str, dict[str, Any]] = {}
    for node in nodes:
        island = next((i for i in islands if node.startswith(i + ".")), None)
        if island is None:
            reference[node] = outputs[node]
            continue
        if island not in captured:
            args, kwargs = calls[island]
            assert not kwargs
            # the traced submodules hold no random ops, so the checker's own seed is fine;
            # the modules the fallback kept opaque inside it are leaves of its trace here too
            leaves = [p[len(island) + 1 :] for p in opaque if p.startswith(island + ".")]
            captured[island], _ = capture_reference(
                model.get_submodule(island),
                list(args),
                training=training,
                tracer_kwargs={"leaf_modules": leaves},
            )
        values = captured[island]
        # a query names a node, or else the last node under that dotted prefix; a module
        # inside a leaf of the traced submodule has no node and is served by its hook
        local = node[len(island) + 1 :]
        reference[node] = next(
            (v for k, v in reversed(values.items()) if k == local or k.startswith(local + ".")),
            outputs.get(node),
        )
    return reference


#: Models expected to fail, with the reason (none at present).
KNOWN_FAILURES: dict[str, str] = {}


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.xfail(reason=KNOWN_FAILURES[n], strict=True))
        if n in KNOWN_FAILURES
        else n
        for n in ALL_MODELS
    ],
)
def test_every_model_can_be_tapped(name: str) -> None:
    model = build(name)
    try:
        fxtap.trace(model, training=False)
    except fxtap.TraceError as exc:
        if exc.module_path:
            raise
        check_capture(name, model)
    else:
        check_full_trace(name, model)
    # one tap per model on the autograd path: value and gradient equal a hook's (eval mode)
    with restore_training(model):
        model.eval()
        check_tap_gradient(model, example_inputs(name, training=False))


def path_taken(name: str) -> str:
    """How fxtap serves ``name`` (tracing only, on the ``meta`` device: no forward runs)."""
    from fxtap.capture import find_islands

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        try:
            with torch.device("meta"):
                model = torchvision.models.get_model(name, **builder_kwargs(name))
        except NotImplementedError:  # RegNet computes its widths with real tensors
            model = build(name)
        try:
            traced = fxtap.trace(model, training=False, auto_leaf=True)
        except fxtap.TraceError:
            islands = find_islands(model, training=False)
            return f"submodule capture: {len(islands)} traced submodules"
    n = len(traced.leaves) + len(traced.wrapped)
    return f"full trace with {n} leaves" if n else "full trace"


def main(argv: list[str]) -> None:
    """Print the docs/zoo.md table from a ``pytest -v --durations=0`` log of this file.

    The log may come from a run with or without ``-n 2`` (pytest-xdist writes its lines the
    other way round).
    """
    import re

    log = Path(argv[0]).read_text() if argv else ""
    test = r"test_every_model_can_be_tapped\[(\S+)\]"
    results = "(PASSED|FAILED|XFAIL|XPASS)"
    status = dict(re.findall(rf"{test} {results}", log))  # pytest -v
    status |= {n: r for r, n in re.findall(rf"{results} tests/test_zoo.py::{test}", log)}  # -n 2
    words = {"passed": "equal (bitwise)", "xfail": "expected failure (see below)"}
    seconds = dict(
        (n, float(t))
        for t, n in re.findall(r"([\d.]+)s call .*test_every_model_can_be_tapped\[(\S+)\]", log)
    )
    print("| model | path taken | train mode compared | result | seconds |")
    print("|---|---|---|---|---|")
    for name in ALL_MODELS:
        train = "no (see below)" if name in TRAIN_EXCLUDED else "yes"
        took = f"{seconds[name]:.1f}" if name in seconds else "-"
        result = status.get(name, "not run").lower()
        result = words.get(result, result)
        print(f"| {name} | {path_taken(name)} | {train} | {result} | {took} |")


if __name__ == "__main__":
    main(sys.argv[1:])
