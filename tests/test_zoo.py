"""Every torchvision model can be tapped: values equal an independent run of the model.

For each of the 121 builders of ``torchvision.models.list_models()`` (no weights; small heads
and inputs where the builder allows), 10 random nodes per mode (fixed seed), a middle node and
the last node are extracted and compared bitwise with the shared checker's independent capture
(``tests/support/checker.py``), in eval mode and in train mode.

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

import dataclasses
import sys
import warnings
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
from support.checker import (
    bitwise_equal,
    capture_reference,
    check_tap_gradient,
    preserved,
)
from support.zoo import (
    ALL_MODELS,
    DETECTION,
    FLOW,
    SEGMENTATION,
    VIDEO,
    build,
    builder_kwargs,
    check_mode,
    pick,
    quiet,
)

pytestmark = pytest.mark.slow

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
