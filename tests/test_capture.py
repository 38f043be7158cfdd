"""Tests of fxtap.capture: untraceable roots served during a real forward, per call, early exit."""

from __future__ import annotations

import copy
import pickle
import re
import threading
from typing import Any

import pytest
import torch
from torch import nn

import fxtap
from fxtap import NodeNotFoundError, create_feature_extractor
from fxtap.capture import CaptureExtractor
from support.capture_models import Block, Stack, Wav2Vec2Like
from support.checker import bitwise_equal, capture_reference, hook_gradient, preserved, tensor_grads
from support.models import ListRoot

# --- fixture models -------------------------------------------------------------------------------


def build(model: nn.Module, nodes: Any, match: str = "cannot trace the root", **kw: Any) -> Any:
    """``create_feature_extractor`` expecting the capture warning (tests run warnings as errors)."""
    with pytest.warns(UserWarning, match=match) as record:
        ex = create_feature_extractor(model, nodes, **kw)
    assert all(w.filename == __file__ for w in record)
    return ex


def block_reference(model: Stack, image: torch.Tensor, index: int) -> dict[str, Any]:
    """Values inside block ``index`` in an eager run of ``model`` on ``image`` (no mask)."""
    with torch.no_grad():
        x = model.embed(image)
        for block in list(model.blocks)[:index]:
            x = block(x)
        block = model.blocks[index]
        relu = block.fc1(block.norm(x)).relu()
        return {"relu": relu, "add": x + block.fc2(relu)}


# --- untraceable root: capture during a normal forward --------------------------------------------


def test_list_iterating_root_is_served_by_capture() -> None:
    torch.manual_seed(0)
    model = ListRoot()
    images = [torch.randn(3, 8, 8), torch.randn(3, 6, 6)]
    nodes = {"body.bn": "bn", "body.relu": "relu", "body.conv2": "conv2", "head": "head"}
    nodes |= {"body:input": "body_in", ":output": "out"}
    ex = build(model, nodes, r"cannot trace the root ListRoot\.forward.*nothing is pruned")
    assert isinstance(ex, CaptureExtractor)
    assert ex.prunes is False
    assert ex.islands == {"train": ("body",), "eval": ("body",)}
    for training in (True, False):
        ex.train(training)
        with preserved(model):
            torch.manual_seed(0)
            outputs = ex(images)
        # the first call of each module: ``body`` on the first image
        reference, body_out = capture_reference(model.body, [images[0][None]], training=training)
        with preserved(model), torch.no_grad():
            model.train(training)
            expected_out = model(images)
        assert bitwise_equal(outputs["bn"], reference["bn"])
        assert bitwise_equal(outputs["relu"], reference["relu"])
        assert bitwise_equal(outputs["conv2"], reference["conv2"])
        assert bitwise_equal(outputs["body_in"], images[0][None])
        assert bitwise_equal(outputs["head"], expected_out[0])
        assert bitwise_equal(outputs["out"], expected_out)
        assert bitwise_equal(model.body(images[0][None]).detach(), body_out)


class InplaceAfterCall(ListRoot):
    """Writes into a submodule's output in place after the call."""

    def forward(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        outs = []
        for img in images:
            y = self.body(img[None])
            y += 1
            outs.append(self.head(y.mean((2, 3))))
        return outs


def test_capture_returns_the_value_of_the_call_despite_later_inplace_writes() -> None:
    model = InplaceAfterCall().eval()
    ex = build(model, ["body", "body.relu_1"], "cannot trace the root").eval()
    image = torch.randn(3, 8, 8)
    with torch.no_grad():
        outputs = ex([image])
        expected = model.body(image[None])
    assert bitwise_equal(outputs["body"], expected)
    assert bitwise_equal(outputs["body.relu_1"], expected)


def test_capture_leaves_the_model_and_its_state_alone() -> None:
    model = ListRoot().train()
    ex = build(model, ["body.relu"], "cannot trace the root")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ex.eval()
    assert model.training and model.body.bn.training
    ex.train()
    ex([torch.randn(3, 8, 8)])
    after = model.state_dict()
    # one real forward updates BatchNorm once, as the model alone would; replays leave no trace
    with torch.no_grad():
        reference = ListRoot()
        reference.load_state_dict(before)
        reference([torch.randn(3, 8, 8)])
    assert int(after["body.bn.num_batches_tracked"]) == 1
    assert not model.body._forward_hooks


def test_capture_rejects_nodes_of_the_root_code_and_says_why() -> None:
    message = (
        r"node 'mean' cannot be served in train mode: torch.fx cannot trace the root "
        r"ListRoot\.forward .* nodes inside the traceable submodules 'body'"
    )
    with pytest.raises(NodeNotFoundError, match=message):
        create_feature_extractor(ListRoot(), ["mean"])


def test_capture_gradients_reach_traced_submodules() -> None:
    model = ListRoot()
    ex = build(model, ["body.conv2"], "cannot trace the root")
    ex.eval()
    ex([torch.randn(3, 8, 8)])["body.conv2"].sum().backward()
    assert model.body.conv2.weight.grad is not None
    assert model.body.conv1.weight.grad is not None


# --- per-call state: threads, reentrancy -----------------------------------------------------------


def test_threads_get_exactly_the_serial_results() -> None:
    torch.manual_seed(0)
    model = Stack().eval()
    ex = build(model, {"blocks.1.fc1": "a", "blocks.3": "b", "heads.cls": "c"}).eval()
    images = [[torch.randn(5, 4)] for _ in range(200)]
    with torch.no_grad():
        serial = [ex(imgs) for imgs in images]
    results: dict[int, list[Any]] = {}
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            with torch.no_grad():
                # each thread walks the inputs from its own offset, so calls interleave
                order = [(i + 25 * worker) % len(images) for i in range(len(images))]
                results[worker] = [(i, ex(images[i])) for i in order]
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert sum(len(r) for r in results.values()) == 8 * 200
    for got in results.values():
        for i, out in got:
            assert bitwise_equal(out, serial[i]), i


class CallsItself(nn.Module):
    """A root whose forward calls the extractor built on it again, on the other images."""

    def __init__(self) -> None:
        super().__init__()
        self.extractor: list[Any] = []  # not a submodule: filled in after the build
        self.lin = nn.Linear(4, 4)

    def forward(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        y = self.lin(images[0])
        if len(images) > 1:
            y = y + self.extractor[0](images[1:])["lin"].sum()
        return [y]


def test_a_call_inside_a_call_sees_only_itself() -> None:
    torch.manual_seed(0)
    model = CallsItself().eval()
    ex = build(model, {"lin": "lin", ":output": "out"}).eval()
    model.extractor.append(ex)
    a, b, c = (torch.randn(5, 4) for _ in range(3))
    with torch.no_grad():
        out = ex([a, b, c])
        # the inner call returns its own first call of lin: lin(b)
        expected = model.lin(a) + model.lin(b).sum()
    assert bitwise_equal(out["lin"], model.lin(a))
    assert bitwise_equal(out["out"][0], expected)


# --- islands inside layer stacks, None arguments, early exit --------------------------------------


def test_islands_are_found_inside_module_lists_and_dicts() -> None:
    model = Stack(depth=3)
    ex = build(model, ["blocks.1.fc1"])
    # embed and heads.cls are torch.nn leaves: their outputs are served by hooks
    assert ex.islands["eval"] == ("blocks.0", "blocks.1", "blocks.2")
    names = ex.node_names("eval")
    assert "blocks.1.fc1" in names and "blocks.1.add" in names
    assert "blocks" not in names and "heads" not in names


@pytest.mark.parametrize("training", [False, True])
def test_nodes_of_a_block_called_with_none_equal_the_reference(training: bool) -> None:
    torch.manual_seed(0)
    model = Stack(depth=3).train(training)
    ex = build(model, {"blocks.1.relu": "relu", "blocks.2.add": "add"}).train(training)
    image = torch.randn(5, 4)
    with torch.no_grad():
        out = ex([image])
    assert bitwise_equal(out["relu"], block_reference(model, image, 1)["relu"])
    assert bitwise_equal(out["add"], block_reference(model, image, 2)["add"])


class CachedBlock(Block):
    """A block whose forward takes ``**kwargs`` and writes a cache only when given one (bloom's
    attention: ``if layer_past is not None: layer_past.update(...)``)."""

    def forward(self, x: torch.Tensor, cache: Any = None, **kwargs: Any) -> torch.Tensor:
        h = self.fc2(self.fc1(self.norm(x)).relu())
        if cache is not None:
            h = cache.update(h)
        return x + h


class CachedStack(Stack):
    def __init__(self) -> None:
        super().__init__(depth=2)
        self.blocks = nn.ModuleList(CachedBlock(8) for _ in range(2))

    def forward(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        outs = []
        for img in images:
            x = self.embed(img)
            for block in self.blocks:
                x = block(x, cache=None)
            outs.append(self.heads["cls"](x.mean(0)))
        return outs


def test_an_island_taking_kwargs_is_traced_with_its_none_arguments_fixed() -> None:
    torch.manual_seed(0)
    model = CachedStack()
    ex = build(model, {"blocks.1.relu": "relu"})
    image = torch.randn(5, 4)
    with torch.no_grad():
        out = ex([image])  # the graph traced with a cache proxy called None.update
        want = model.blocks[1].fc1(model.blocks[1].norm(model.blocks[0](model.embed(image))))
    assert bitwise_equal(out["relu"], want.relu())


def test_forward_stops_after_the_last_tap() -> None:
    model = Stack(depth=6).eval()
    calls: list[str] = []
    for path, module in model.named_modules():
        if path:
            module.register_forward_pre_hook(lambda *_a, path=path: calls.append(path))
    ex = build(model, ["blocks.1.fc2"]).eval()
    with torch.no_grad():
        ex([torch.randn(5, 4), torch.randn(5, 4)])
    assert "blocks.1" in calls and "blocks.2" not in calls and "heads.cls" not in calls
    calls.clear()
    ex = build(model, ["blocks.1.fc2", ":output"]).eval()
    with torch.no_grad():
        out = ex([torch.randn(5, 4), torch.randn(5, 4)])
    assert calls.count("heads.cls") == 2 and len(out[":output"]) == 2


def test_island_taps_are_on_the_autograd_path() -> None:
    torch.manual_seed(0)
    model = Stack(depth=3).eval()
    ex = build(model, {"blocks.1": "tap", ":output": "out"}).eval()
    images = [torch.randn(5, 4)]

    def score(out: Any) -> torch.Tensor:
        return out[0][1]

    value, expected = hook_gradient(model, "blocks.1", [images], score)
    out = ex(images)
    got = tensor_grads(score(out["out"]), out["tap"])
    assert bitwise_equal(out["tap"], value)
    assert got[0] is not None and bitwise_equal(got, expected)
    # a node inside an island, too
    ex = build(model, {"blocks.1.fc1": "tap", ":output": "out"}).eval()
    out = ex(images)
    (grad,) = tensor_grads(score(out["out"]), out["tap"])
    assert grad is not None and grad.abs().sum() > 0


# --- copies, pickles and saves --------------------------------------------------------------------


def test_deepcopy_and_pickle_give_independent_working_extractors() -> None:
    torch.manual_seed(0)
    model = Stack(depth=3).eval()
    ex = build(model, {"blocks.1.fc1": "a", "blocks.2": "b", "embed:input": "c"}).eval()
    images = [torch.randn(5, 4)]
    with torch.no_grad():
        expected = ex(images)
        for other in (copy.deepcopy(ex), pickle.loads(pickle.dumps(ex))):
            assert isinstance(other, CaptureExtractor)
            assert bitwise_equal(other(images), expected)
            assert other.model.embed.weight is not ex.model.embed.weight
            assert bitwise_equal(ex(images), expected)
            with torch.no_grad():
                other.model.embed.weight.add_(1)
            assert not bitwise_equal(other(images)["a"], expected["a"])
            assert bitwise_equal(ex(images), expected)


# --- node listings for untraceable roots -----------------------------------------------------------


def test_node_names_of_an_untraceable_root_list_island_nodes_under_full_paths() -> None:
    model = Stack(depth=2)
    train, evaluated = fxtap.get_graph_node_names(model)
    assert train == evaluated
    assert evaluated == [
        "embed",
        # the mask is a placeholder of each block's own trace: ``h * mask`` is a node
        "blocks.0.norm", "blocks.0.fc1", "blocks.0.relu", "blocks.0.fc2", "blocks.0.mul",
        "blocks.0.add",
        "blocks.1.norm", "blocks.1.fc1", "blocks.1.relu", "blocks.1.fc2", "blocks.1.mul",
        "blocks.1.add",
        "heads.cls",
    ]  # fmt: skip
    rows = fxtap.node_table(model)
    assert [r.name for r in rows] == evaluated
    assert rows[2].op == "call_module" and rows[2].module_type == "Linear"
    # every listed name can be requested
    ex = build(model, evaluated)
    assert set(ex.outputs["eval"].values()) == set(evaluated)


def test_unknown_node_of_an_untraceable_root_gets_close_matches() -> None:
    with pytest.raises(NodeNotFoundError, match=r"blocks\.1\.fc1"):
        create_feature_extractor(Stack(depth=2), ["blocks.1.fc"])


def test_preserved_state_after_many_calls() -> None:
    model = Stack(depth=2).train()
    ex = build(model, ["blocks.0.fc1"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with preserved(model):
        ex([torch.randn(5, 4)])
    assert all(bitwise_equal(before[k], v) for k, v in model.state_dict().items())


# --- parametrized modules (wav2vec2's weight-norm positional convolution) -------------------------


def _hooked(model: nn.Module, paths: list[str], args: list[Any]) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def record(path: str) -> Any:
        def hook(_m: nn.Module, _a: Any, out: Any) -> None:  # returns None: output unchanged
            seen.setdefault(path, out.detach().clone())

        return hook

    handles = [model.get_submodule(p).register_forward_hook(record(p)) for p in paths]
    try:
        with preserved(model), torch.no_grad():
            model(*args)
    finally:
        for h in handles:
            h.remove()
    return seen


@pytest.mark.parametrize("lists", [False, True], ids=["traced-root", "capture"])
def test_parametrized_modules_build_prune_copy_and_leave_the_model_alone(lists: bool) -> None:
    torch.manual_seed(0)
    model = Wav2Vec2Like(lists).eval()
    paths = ["pos.conv", "proj", "out"]
    wav = torch.randn(2, 1, 100)
    args = [[w for w in wav]] if lists else [wav]
    if lists:
        ex = build(model, paths)
        assert isinstance(ex, CaptureExtractor)
    else:
        ex = create_feature_extractor(model, ["pos.conv", "proj"])
        assert "out" not in dict(ex.named_children())  # pruned
        paths = ["pos.conv", "proj"]
    expected = _hooked(model, paths, args)
    for other in (ex, copy.deepcopy(ex)):
        with torch.no_grad():
            got = other.eval()(*args)
        for p in paths:
            assert bitwise_equal(got[p], expected[p]), p
    assert nn.utils.parametrize.is_parametrized(model.pos.conv)
    assert not model.pos.conv._forward_hooks


# --- the command line on a detection model ---------------------------------------------------------

DETECTION = [
    "torchvision:fasterrcnn_mobilenet_v3_large_320_fpn",
    *("--model-arg", "weights_backbone=None", "--model-arg", "min_size=96"),
    *("--model-arg", "max_size=128", "--input", "1x3x96x128"),
]


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    lines = [e for e in capsys.readouterr().err.strip().splitlines() if not e.endswith(" ...")]
    return lines[-1]


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_cli_on_a_detection_model(capsys: pytest.CaptureFixture[str], tmp_path: Any) -> None:
    from fxtap.cli import main

    assert main(["nodes", *DETECTION]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]]
    assert "backbone.body.1.add" in names and "roi_heads" in names
    out = tmp_path / "det.fxtap"
    # the safe format stores the module tree and the requests; loading needs no trust
    assert main(["extract", *DETECTION, "--nodes", "backbone.body", "-o", str(out)]) == 0
    assert "format fxtap" in capsys.readouterr().out
    safe = fxtap.load(out)
    assert isinstance(safe, CaptureExtractor) and safe.outputs["eval"] == {
        "backbone.body": "backbone.body"
    }
    argv = ["extract", *DETECTION, "--nodes", "backbone.body", "-o", str(out), "--format", "pickle"]
    assert main(argv) == 0
    assert "captures" in capsys.readouterr().out
    loaded = fxtap.load(out, trust=True)
    assert isinstance(loaded, CaptureExtractor) and loaded.outputs["eval"] == {
        "backbone.body": "backbone.body"
    }
    # bench and render run the capture extractor itself: real runs instead of graphs
    argv = ["bench", *DETECTION, "--nodes", "backbone", "--rounds", "1", "--min-run-time", "0.01"]
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "capture extractor" in table and re.search(r"extractor\s+\S+ M \(\d+\.\d%\)", table)
    assert main(["render", *DETECTION, "--nodes", "backbone", "-o", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert "could not be drawn in train mode" in captured.err and "--mode eval" in captured.err
    dot = (tmp_path / "FasterRCNN.eval.dot").read_text(encoding="utf-8")
    assert (tmp_path / "FasterRCNN.eval.svg").is_file()
    assert 'subgraph "cluster_backbone"' in dot and "traced island" in dot
    for call in ("transform", "rpn.anchor_generator", "roi_heads.box_roi_pool"):
        assert re.search(rf'"{call}" \[[^\n]*untraced: forward not traceable', dot), call
    assert re.search(r'"backbone.output" \[[^\n]*penwidth="3"', dot)  # the tap
    assert re.search(r'"roi_heads.box_predictor.cls_score" \[[^\n]*not run: after the early', dot)


def test_both_kinds_implement_the_extractor_protocol_and_capture_says_what_works() -> None:
    from fxtap.errors import InvalidArgumentError

    capture = build(ListRoot(), ["body.relu"], r"cannot trace the root ListRoot\.forward")
    pruning = create_feature_extractor(Block(), ["relu"])
    for ex in (capture, pruning):
        assert isinstance(ex, fxtap.Extractor)
    assert capture.fallback() is True and pruning.fallback() is False
    assert capture.traced_code("eval") == ""
    assert "def forward" in pruning.traced_code("eval")
    with pytest.raises(InvalidArgumentError, match=r"graph_for\('eval'\) needs an extractor with "
                       r"traced graphs.*read its values by calling it.*'body'"):  # fmt: skip
        capture.graph_for("eval")

    class Partial(fxtap.Extractor):
        def node_names(self, mode: str) -> list[str]:
            return []

    # an abstract base: a kind that leaves out a stage's method cannot be built
    with pytest.raises(TypeError, match="abstract"):
        Partial()
