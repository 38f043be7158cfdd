"""A catalogue of bad input: each case raises a typed fxtap error that names the input and the fix.

Every case checks the exception type, that it is also the builtin a torchvision user would
catch (``ValueError``, ``KeyError``, ``OSError``, ...), that the message shows the bad input
(its ``repr``, or the argument name where the input is a missing or empty value) and a fix
hint, and that neither the model nor the arguments were changed. docs/errors.md lists them.
"""

from __future__ import annotations

import copy
import random
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import fxtap
from fxtap import (
    DotNotFoundError,
    FxtapError,
    InputShapeError,
    InvalidArgumentError,
    LoadError,
    MistraceError,
    NodeNotFoundError,
    OutputPathError,
    ResourceError,
    TraceError,
)
from fxtap.cli import ModelSpecError
from support.checker import bitwise_equal
from support.models import Gate


class Opaque(nn.Module):
    """Made a leaf through ``leaf_modules``: nodes inside it cannot be requested."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x).relu()


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv_1 = nn.Linear(4, 4)
        self.bn = nn.BatchNorm1d(4)
        self.drop = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.bn(self.conv_1(x))).relu() + x


class Small(nn.Module):
    """A model in mixed modes: the root in eval, ``block`` in train."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(4, 4)
        self.block = Block()
        self.opaque = Opaque()
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        return self.head(self.opaque(self.block(self.stem(x))) * scale)


class DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.gate = Gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gate(self.lin(x))


class Jitter(nn.Module):
    """Python's ``random`` is baked into the graph as a constant: the trace computes otherwise."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * random.random()


class PythonRandom(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.jitter = Jitter()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.jitter(self.lin(x))


class PythonRandomAtRoot(nn.Module):
    """The same mis-trace in the root's own forward, outside any submodule."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x) * random.random()


def small() -> nn.Module:
    torch.manual_seed(0)
    model = Small().eval()
    model.block.train()
    return model


LEAF = {"leaf_modules": [Opaque]}
X = torch.randn(3, 4)
UNREADABLE = "20000000x20000000"  # 1.6 PB of float32: more than any address space


@dataclass(frozen=True)
class Case:
    """One bad input: the call, the error it must raise, and what its message must show."""

    id: str
    call: Callable[..., Any]
    kwargs: Callable[[nn.Module, Path], dict[str, Any]]
    error: type[FxtapError]
    builtin: type[BaseException]
    shows: tuple[str, ...]
    fix: str
    model: Callable[[], Any] = small
    marks: tuple[Any, ...] = field(default=())


def _extractor(model: nn.Module) -> fxtap.FeatureExtractor:
    return fxtap.create_feature_extractor(model, ["stem"])


def _saved(model: nn.Module, folder: Path, damage: Callable[[Path], None] | None = None) -> Path:
    from fxtap.save import save

    path = save(_extractor(model), folder / "small.fxtap")
    if damage is not None:
        damage(path)
    return path


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _corrupt(path: Path) -> None:
    """Garble the stored manifest bytes while keeping the zip directory readable."""
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    members["fxtap.json"] = b'{"format": "fxtap-extractor", "version": 1, "modes": [1, 2'
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def _foreign_zip(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("hello.txt", "not an extractor")


def _pickled(model: nn.Module, folder: Path) -> Path:
    from fxtap.save import save

    return save(_extractor(model), folder / "small.pt.fxtap", fmt="pickle")


def _file(folder: Path) -> Path:
    path = folder / "a_file"
    path.write_text("x")
    return path


def _save(**kwargs: Any) -> Any:
    from fxtap.save import save

    return save(**kwargs)


def _load(**kwargs: Any) -> Any:
    from fxtap.save import load

    return load(**kwargs)


def _load_model(**kwargs: Any) -> Any:
    from fxtap.cli._models import load_model

    return load_model(**kwargs)


def _make_inputs(**kwargs: Any) -> Any:
    from fxtap.cli._models import make_inputs, parse_input

    return make_inputs([parse_input(kwargs["shape"])])


def _render(**kwargs: Any) -> Any:
    from fxtap.render import render

    return render(**kwargs)


def _compare(**kwargs: Any) -> Any:
    from fxtap.cost import compare

    return compare(**kwargs, rounds=1, min_run_time=0.01, warmup=0, node_repeats=0, progress=False)


create = fxtap.create_feature_extractor


def _graph_for(*, extractor: fxtap.FeatureExtractor, mode: str) -> Any:
    return extractor.graph_for(mode)


names = fxtap.get_graph_node_names

CASES = [
    # --- the model ---------------------------------------------------------------------------
    Case(
        "model-not-a-module",
        create,
        lambda m, d: {"model": "resnet18", "return_nodes": ["layer4"]},
        InvalidArgumentError,
        ValueError,
        ("'resnet18'",),
        "expected a torch.nn.Module",
    ),
    Case(
        "names-of-a-function",
        names,
        lambda m, d: {"model": torch.relu},
        InvalidArgumentError,
        ValueError,
        ("relu",),
        "Wrap a function in a module",
    ),
    # --- return_nodes ------------------------------------------------------------------------
    Case(
        "return-nodes-empty-list",
        create,
        lambda m, d: {"model": m, "return_nodes": []},
        InvalidArgumentError,
        ValueError,
        ("return_nodes is empty",),
        "get_graph_node_names",
    ),
    Case(
        "return-nodes-empty-dict",
        create,
        lambda m, d: {"model": m, "return_nodes": {}},
        InvalidArgumentError,
        ValueError,
        ("return_nodes is empty",),
        "request at least one node",
    ),
    Case(
        "return-nodes-none",
        create,
        lambda m, d: {"model": m, "return_nodes": None},
        InvalidArgumentError,
        ValueError,
        ("return_nodes is None",),
        "return_nodes=['layer4']",
    ),
    Case(
        "return-nodes-not-a-list",
        create,
        lambda m, d: {"model": m, "return_nodes": 5},
        InvalidArgumentError,
        ValueError,
        ("return_nodes 5",),
        "{'layer4': 'feat'}",
    ),
    Case(
        "unknown-node",
        create,
        lambda m, d: {"model": m, "return_nodes": ["block.conv1"]},
        NodeNotFoundError,
        KeyError,
        ("'block.conv1'", "'block.conv_1'"),
        "get_graph_node_names",
    ),
    Case(
        "unknown-node-dict",
        create,
        lambda m, d: {"model": m, "return_nodes": {"stem": "a", "haed": "b"}},
        NodeNotFoundError,
        ValueError,
        ("'haed'", "'head'"),
        "fxtap nodes MODEL",
    ),
    Case(
        "unknown-module-input",
        create,
        lambda m, d: {"model": m, "return_nodes": ["block.conv:input"]},
        NodeNotFoundError,
        KeyError,
        ("'block.conv:input'", "'block.conv_1:input'"),
        "get_graph_node_names",
    ),
    Case(
        "duplicate-output-keys",
        create,
        lambda m, d: {"model": m, "return_nodes": {"stem": "feat", "head": "feat"}},
        InvalidArgumentError,
        ValueError,
        ("'feat'", "'stem'", "'head'"),
        "give each requested node its own key",
    ),
    Case(
        "non-string-node",
        create,
        lambda m, d: {"model": m, "return_nodes": ["stem", 3.5]},
        InvalidArgumentError,
        ValueError,
        ("3.5 (float)",),
        "node names are strings",
    ),
    Case(
        "non-string-key",
        create,
        lambda m, d: {"model": m, "return_nodes": {"stem": ("a", 1)}},
        InvalidArgumentError,
        ValueError,
        ("('a', 1)",),
        "output keys must be strings",
    ),
    Case(
        "return-nodes-with-train-nodes",
        create,
        lambda m, d: {"model": m, "return_nodes": ["stem"], "train_return_nodes": ["head"]},
        InvalidArgumentError,
        ValueError,
        ("return_nodes", "train_return_nodes"),
        "pass either return_nodes",
    ),
    Case(
        "only-train-nodes",
        create,
        lambda m, d: {"model": m, "train_return_nodes": ["stem"]},
        InvalidArgumentError,
        ValueError,
        ("only train_return_nodes",),
        "pass eval_return_nodes too",
    ),
    Case(
        "only-eval-nodes",
        create,
        lambda m, d: {"model": m, "eval_return_nodes": {"stem": "s"}},
        InvalidArgumentError,
        ValueError,
        ("only eval_return_nodes",),
        "pass train_return_nodes too",
    ),
    Case(
        "node-inside-leaf-module",
        create,
        lambda m, d: {"model": m, "return_nodes": ["opaque.inner"], "tracer_kwargs": LEAF},
        NodeNotFoundError,
        KeyError,
        ("'opaque.inner'", "'opaque'"),
        "removing it from tracer_kwargs['leaf_modules']",
    ),
    Case(
        "node-inside-builtin-leaf",
        create,
        lambda m, d: {"model": m, "return_nodes": ["stem.weight"]},
        NodeNotFoundError,
        KeyError,
        ("'stem.weight'", "'stem'"),
        "request 'stem' itself",
    ),
    # --- concrete_args and tracer_kwargs -----------------------------------------------------
    Case(
        "concrete-args-not-an-argument",
        create,
        lambda m, d: {"model": m, "return_nodes": ["stem"], "concrete_args": {"scal": 2.0}},
        InvalidArgumentError,
        ValueError,
        ("'scal'", "'scale'"),
        "Expected one of 'x', 'scale'",
    ),
    Case(
        "concrete-args-not-a-dict",
        names,
        lambda m, d: {"model": m, "concrete_args": [("scale", 2.0)]},
        InvalidArgumentError,
        ValueError,
        ("[('scale', 2.0)]",),
        "expected a dict mapping forward() argument names",
    ),
    Case(
        "tracer-kwargs-unknown-key",
        create,
        lambda m, d: {"model": m, "return_nodes": ["stem"], "tracer_kwargs": {"leaf_module": []}},
        InvalidArgumentError,
        ValueError,
        ("'leaf_module'",),
        "closest: 'leaf_modules'",
    ),
    Case(
        "tracer-kwargs-not-a-dict",
        names,
        lambda m, d: {"model": m, "tracer_kwargs": ["leaf_modules"]},
        InvalidArgumentError,
        ValueError,
        ("['leaf_modules']",),
        "expected a dict with keys among",
    ),
    Case(
        "tracer-kwargs-leaf-modules-a-string",
        names,
        lambda m, d: {"model": m, "tracer_kwargs": {"leaf_modules": "opaque"}},
        InvalidArgumentError,
        ValueError,
        ("'opaque'",),
        "expected a list or tuple",
    ),
    Case(
        "tracer-kwargs-leaf-module-item",
        names,
        lambda m, d: {"model": m, "tracer_kwargs": {"leaf_modules": [3.5]}},
        InvalidArgumentError,
        ValueError,
        ("3.5",),
        "expected a module class, a qualified-name pattern",
    ),
    Case(
        "tracer-kwargs-autowrap-not-callable",
        create,
        lambda m, d: {
            "model": m,
            "return_nodes": ["stem"],
            "tracer_kwargs": {"autowrap_functions": ["torch.relu"]},
        },
        InvalidArgumentError,
        ValueError,
        ("'torch.relu'",),
        "expected functions such as",
    ),
    Case(
        "tracer-kwargs-autowrap-module-not-a-module",
        names,
        lambda m, d: {"model": m, "tracer_kwargs": {"autowrap_modules": ["math"]}},
        InvalidArgumentError,
        ValueError,
        ("'math'",),
        "expected modules such as math",
    ),
    # --- tracing -----------------------------------------------------------------------------
    Case(
        "untraceable-model",
        fxtap.trace,
        lambda m, d: {"model": m, "training": False},
        TraceError,
        ValueError,
        ("'gate'", "DataDependent", "if x.sum() > 0:"),
        "tracer_kwargs={'leaf_modules': ['gate']}",
        model=DataDependent,
    ),
    Case(
        "mistraced-model",
        fxtap.trace,
        lambda m, d: {"model": m, "training": False, "example_inputs": (X,)},
        MistraceError,
        ValueError,
        ("PythonRandom", "'jitter'"),
        "leaf",
        model=PythonRandom,
    ),
    Case(
        "mistraced-root-forward",
        fxtap.trace,
        lambda m, d: {"model": m, "training": False, "example_inputs": (X,)},
        MistraceError,
        ValueError,
        ("PythonRandomAtRoot",),
        "",
        model=PythonRandomAtRoot,
    ),
    # --- example inputs ----------------------------------------------------------------------
    Case(
        "input-shape-does-not-fit",
        fxtap.node_table,
        lambda m, d: {"model": m, "example_inputs": (torch.randn(2, 7),)},
        InputShapeError,
        ValueError,
        ("2x7",),
        "Pass example_inputs of the shape the model expects, e.g. (torch.randn(1, 4),)",
    ),
    Case(
        "input-not-a-tensor",
        fxtap.node_table,
        lambda m, d: {"model": m, "example_inputs": 3},
        InvalidArgumentError,
        ValueError,
        ("example_inputs 3",),
        "expected a tensor or a tuple of tensors",
    ),
    Case(
        "input-unparsable-shape",
        _make_inputs,
        lambda m, d: {"shape": "1x3xfoo"},
        InvalidArgumentError,
        ValueError,
        ("'1x3xfoo'",),
        "positive integers separated by 'x'",
    ),
    Case(
        "input-needs-more-memory-than-exists",
        _make_inputs,
        lambda m, d: {"shape": UNREADABLE},
        ResourceError,
        MemoryError,
        (repr(UNREADABLE),),
        "smaller",
    ),
    # --- rendering ---------------------------------------------------------------------------
    Case(
        "render-dot-missing",
        _render,
        lambda m, d: {"model": m, "out_dir": d, "dot": "/nonexistent/bin/dot"},
        DotNotFoundError,
        FileNotFoundError,
        ("'/nonexistent/bin/dot'", ".dot"),
        "install",
    ),
    Case(
        "render-out-dir-is-a-file",
        _render,
        lambda m, d: {"model": m, "out_dir": _file(d) / "sub", "fmt": "dot"},
        OutputPathError,
        OSError,
        ("a_file/sub'",),
        "Pass a writable folder with out_dir=",
    ),
    Case(
        "render-unknown-node",
        _render,
        lambda m, d: {"model": m, "out_dir": d, "fmt": "dot", "nodes": ["stme"]},
        NodeNotFoundError,
        KeyError,
        ("'stme'", "'stem'"),
        "fxtap nodes MODEL",
    ),
    Case(
        "render-bad-mode",
        _render,
        lambda m, d: {"model": m, "out_dir": d, "fmt": "dot", "mode": "evaluation"},
        InvalidArgumentError,
        ValueError,
        ("'evaluation'",),
        "'eval'",
    ),
    Case(
        "render-bad-format",
        _render,
        lambda m, d: {"model": m, "out_dir": d, "fmt": "jpeg"},
        InvalidArgumentError,
        ValueError,
        ("'jpeg'",),
        "'svg'",
    ),
    # --- saving and loading ------------------------------------------------------------------
    Case(
        "save-path-in-a-file",
        _save,
        lambda m, d: {"extractor": _extractor(m), "path": _file(d) / "x.fxtap"},
        OutputPathError,
        OSError,
        ("a_file/x.fxtap'",),
        "Pick a path in a folder that exists",
    ),
    Case(
        "save-not-an-extractor",
        _save,
        lambda m, d: {"extractor": m, "path": d / "x.fxtap"},
        InvalidArgumentError,
        ValueError,
        ("Small",),
        "create_feature_extractor",
    ),
    Case(
        "load-missing-file",
        _load,
        lambda m, d: {"path": d / "nothing.fxtap"},
        LoadError,
        ValueError,
        ("nothing.fxtap'",),
        "fxtap.save(extractor, PATH)",
    ),
    Case(
        "load-truncated-file",
        _load,
        lambda m, d: {"path": _saved(m, d, _truncate)},
        LoadError,
        ValueError,
        ("small.fxtap'",),
        "save",
    ),
    Case(
        "load-corrupted-file",
        _load,
        lambda m, d: {"path": _saved(m, d, _corrupt)},
        LoadError,
        ValueError,
        ("small.fxtap'",),
        "save",
    ),
    Case(
        "load-foreign-zip",
        _load,
        lambda m, d: {"path": _saved(m, d, _foreign_zip)},
        LoadError,
        ValueError,
        ("small.fxtap'",),
        "fxtap.save(extractor, PATH)",
    ),
    Case(
        "load-pickle-without-trust",
        _load,
        lambda m, d: {"path": _pickled(m, d)},
        LoadError,
        ValueError,
        ("small.pt.fxtap'",),
        "trust=True",
    ),
    Case(
        "load-trust-not-a-bool",
        _load,
        lambda m, d: {"path": _saved(m, d), "trust": "false"},
        InvalidArgumentError,
        ValueError,
        ("trust='false'",),
        "trust=False",
    ),
    Case(
        "load-path-none",
        _load,
        lambda m, d: {"path": None},
        InvalidArgumentError,
        ValueError,
        ("path=None",),
        "path='resnet18.fxtap'",
    ),
    Case(
        "load-path-an-int",
        _load,
        lambda m, d: {"path": 123},
        InvalidArgumentError,
        ValueError,
        ("path=123",),
        "str or os.PathLike",
    ),
    Case(
        "load-a-folder",
        _load,
        lambda m, d: {"path": d},
        LoadError,
        ValueError,
        ("it is a folder",),
        "fxtap.save(extractor, PATH)",
    ),
    Case(
        "save-path-none",
        _save,
        lambda m, d: {"extractor": _extractor(m), "path": None},
        InvalidArgumentError,
        ValueError,
        ("path=None",),
        "path='resnet18.fxtap'",
    ),
    Case(
        "save-path-an-int",
        _save,
        lambda m, d: {"extractor": _extractor(m), "path": 123},
        InvalidArgumentError,
        ValueError,
        ("path=123",),
        "str or os.PathLike",
    ),
    # --- model specs -------------------------------------------------------------------------
    Case(
        "model-spec-unknown-torchvision-name",
        _load_model,
        lambda m, d: {"spec": "torchvision:resnet19"},
        ModelSpecError,
        ValueError,
        ("resnet19",),
        "resnet18",
    ),
    Case(
        "model-spec-without-source",
        _load_model,
        lambda m, d: {"spec": "resnet18"},
        ModelSpecError,
        ValueError,
        ("'resnet18'",),
        "torchvision:resnet18",
    ),
    Case(
        "model-spec-missing-module",
        _load_model,
        lambda m, d: {"spec": "no_such_package_fxtap:build"},
        ModelSpecError,
        ValueError,
        ("'no_such_package_fxtap'",),
        "Expected torchvision:NAME",
    ),
    # --- cost --------------------------------------------------------------------------------
    Case(
        "cost-unknown-node",
        _compare,
        lambda m, d: {"model": m, "return_nodes": ["blok"], "example_inputs": X},
        NodeNotFoundError,
        KeyError,
        ("'blok'", "'block"),
        "get_graph_node_names",
    ),
    Case(
        "cost-bad-threads",
        _compare,
        lambda m, d: {"model": m, "return_nodes": ["stem"], "example_inputs": X, "threads": 0},
        InvalidArgumentError,
        ValueError,
        ("threads=0",),
        "threads=2",
    ),
    Case(
        "cost-no-inputs",
        _compare,
        lambda m, d: {"model": m, "return_nodes": ["stem"], "example_inputs": None},
        InvalidArgumentError,
        ValueError,
        ("example_inputs None",),
        "example_inputs=(torch.randn(1, 3, 224, 224),)",
    ),
    # --- flags, modes and scripted models ----------------------------------------------------
    Case(
        "node-table-training-not-a-bool",
        fxtap.node_table,
        lambda m, d: {"model": m, "training": "yes"},
        InvalidArgumentError,
        ValueError,
        ("training='yes'",),
        "training=True or training=False",
    ),
    Case(
        "auto-leaf-not-a-bool",
        create,
        lambda m, d: {"model": m, "return_nodes": ["stem"], "auto_leaf": "no"},
        InvalidArgumentError,
        ValueError,
        ("auto_leaf='no'",),
        "auto_leaf=True or auto_leaf=False",
    ),
    Case(
        "graph-for-unknown-mode",
        _graph_for,
        lambda m, d: {"extractor": _extractor(m), "mode": "evaluation"},
        InvalidArgumentError,
        ValueError,
        ("'evaluation'", "closest: 'eval'"),
        "ex.graph_for('eval')",
    ),
    Case(
        "scripted-model",
        create,
        lambda m, d: {"model": torch.jit.script(m), "return_nodes": ["stem"]},
        InvalidArgumentError,
        ValueError,
        ("TorchScript", "torch.jit.script"),
        "Pass the eager nn.Module",
        model=lambda: nn.Sequential(nn.Linear(4, 4)),
    ),
    Case(
        "scripted-model-names",
        fxtap.get_graph_node_names,
        lambda m, d: {"model": torch.jit.script(m)},
        InvalidArgumentError,
        ValueError,
        ("TorchScript",),
        "Pass the eager nn.Module",
        model=lambda: nn.Sequential(nn.Linear(4, 4)),
    ),
    Case(
        "node-in-another-case",
        create,
        lambda m, d: {"model": m, "return_nodes": ["Stem"]},
        NodeNotFoundError,
        KeyError,
        ("'Stem'", "closest: 'stem'"),
        "fxtap nodes MODEL",
    ),
]


def _plain(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The arguments that are not modules (those are fingerprinted), deep-copied."""
    return {k: copy.deepcopy(v) for k, v in kwargs.items() if not isinstance(v, nn.Module)}


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
def test_bad_input(case: Case, tmp_path: Path, untouched: Any) -> None:
    model = case.model()
    kwargs = case.kwargs(model, tmp_path)
    before = _plain(kwargs)
    with untouched(model, *kwargs.values()), pytest.raises(case.error) as info:
        case.call(**kwargs)
    error = info.value
    assert isinstance(error, FxtapError)
    assert isinstance(error, case.builtin)
    message = str(error)
    for shown in case.shows:
        assert shown in message, f"{shown!r} not in {message!r}"
    assert case.fix in message, f"fix hint {case.fix!r} not in {message!r}"
    assert "\n" not in message.strip() or case.error is TraceError
    after = _plain(kwargs)
    assert after.keys() == before.keys()
    for key in before:
        assert bitwise_equal(before[key], after[key]), f"argument {key} was changed"


def test_integer_keys_as_torchvision() -> None:
    """``{"layer1": 0}`` gives key ``0``, as ``IntermediateLayerGetter`` does (torchvision's
    ``create_feature_extractor`` gives ``"0"``), with torchvision's values."""
    from torchvision.models import resnet18
    from torchvision.models.feature_extraction import create_feature_extractor as tv_create

    torch.manual_seed(0)
    model = resnet18().eval()
    x = torch.rand(1, 3, 32, 32)
    want = tv_create(model, {"layer1": 0, "layer2": 1})(x)
    got = fxtap.create_feature_extractor(model, {"layer1": 0, "layer2": 1})(x)
    assert list(want) == ["0", "1"] and list(got) == [0, 1]
    assert all(torch.equal(got[int(k)], want[k]) for k in want)


def test_close_matches_by_structure() -> None:
    """ConvNeXt's stages are ``features.N``: ``stages.2`` suggests ``features.2``."""
    from torchvision.models import convnext_tiny

    with pytest.raises(NodeNotFoundError) as info:
        fxtap.create_feature_extractor(convnext_tiny(), ["stages.2"])
    assert "closest: 'features.2'" in str(info.value)


def test_catalogue_size() -> None:
    assert len(CASES) >= 25
    assert len({c.id for c in CASES}) == len(CASES)


# --- the command line: exit 1 with one line on stderr (2 for bad usage), nothing written -----

MODEL_FILE = """
from torch import nn


def build():
    return nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
"""


def _model_spec(folder: Path) -> str:
    path = folder / "tiny_model.py"
    path.write_text(MODEL_FILE)
    return f"{path}:build"


CLI_CASES = [
    # (id, argv with {model} and {dir}, exit code, what stderr shows)
    (
        "cli-unknown-node",
        ["extract", "{model}", "--input", "2x4", "--nodes", "3", "-o", "{dir}/x.fxtap"],
        1,
        ("'3'", "fxtap nodes MODEL"),
    ),
    (
        "cli-output-in-a-file",
        ["extract", "{model}", "--input", "2x4", "--nodes", "0", "-o", "{dir}/a_file/x.fxtap"],
        1,
        ("a_file/x.fxtap",),
    ),
    ("cli-model-spec", ["nodes", "torchvision:resnet19"], 1, ("resnet19", "resnet18")),
    ("cli-bad-input-shape", ["nodes", "{model}", "--input", "2xfoo"], 2, ("'2xfoo'",)),
    ("cli-input-shape-does-not-fit", ["nodes", "{model}", "--input", "2x7"], 1, ("2x7",)),
    ("cli-load-missing-file", ["nodes", "{dir}/missing.fxtap"], 1, ("missing.fxtap",)),
    (
        "cli-input-needs-too-much-memory",
        ["extract", "{model}", "--input", UNREADABLE, "--nodes", "0", "-o", "{dir}/x.fxtap"],
        1,
        ("memory",),
    ),
]


@pytest.mark.parametrize(
    ("argv", "code", "shows"), [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES]
)
def test_cli_bad_input(
    argv: list[str], code: int, shows: tuple[str, ...], tmp_path: Path, capsys: Any
) -> None:
    from fxtap.cli import main

    _file(tmp_path)
    model = _model_spec(tmp_path)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    args = [a.format(model=model, dir=tmp_path) for a in argv]
    assert main(args) == code
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("fxtap: error: ")]
    if code == 1:
        # Progress lines may come first on a slow machine; the error is one line, the last.
        assert len(errors) == 1 and err.rstrip().endswith(errors[0]), err
    for shown in shows:
        assert shown in err, f"{shown!r} not in {err!r}"
    after = sorted(p.name for p in tmp_path.rglob("*") if p.name != "__pycache__")
    assert after == [n for n in before if n != "__pycache__"], "a file was written"


def test_render_without_dot_on_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, untouched: Any
) -> None:
    """No ``dot`` anywhere on PATH: DotNotFoundError, and the DOT text is still written."""
    from fxtap.render import render

    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    model = small()
    with untouched(model), pytest.raises(DotNotFoundError) as info:
        render(model, out_dir=tmp_path, mode="eval")
    assert isinstance(info.value, FileNotFoundError)
    message = str(info.value)
    assert "'dot'" in message and "Install Graphviz" in message and "fmt='dot'" in message
    assert (tmp_path / "Small.eval.dot").read_text().startswith("digraph")
