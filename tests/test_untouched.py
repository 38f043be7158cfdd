"""No public fxtap call changes the user's model, whether it succeeds or fails.

The ``untouched`` fixture (tests/conftest.py) fingerprints the model before and after:
parameters and buffers (identity and bits), the ``training`` flag, class and attribute names of
every submodule, and its registered hooks. The models are in mixed modes (some submodules in
eval, others in train) so that a call which flattens the modes with ``model.train(flag)`` is
caught, and carry hooks, a tensor constant, in-place ops, batch norm, dropout and a submodule
called twice. Each public entry point is one line of ``ENTRY_POINTS``.

By design (as in torchvision) an extractor shares parameters and buffers with the model: a
forward pass of the extractor *in train mode* updates the batch-norm statistics the two share,
like a train-mode forward of the model would. Forward passes here run in eval mode; that the
extractor's ``.train()`` does not change the model's flags is checked.
"""

from __future__ import annotations

import copy
import inspect
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import fxtap
from fxtap import InputShapeError, InvalidArgumentError, NodeNotFoundError, TraceError
from support.models import Gate


class Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(self.lin(x).relu())


class Mixed(nn.Module):
    """Batch norm, dropout, an in-place ReLU and ``add_``, a tensor constant, a shared call."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(4, 4)
        self.bn = nn.BatchNorm1d(4)
        self.act = nn.ReLU(inplace=True)
        self.drop = nn.Dropout(0.25)
        self.twice = Twice()
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.drop(self.act(self.bn(self.stem(x))))
        y = self.twice(y + torch.tensor([0.5, -0.5, 1.0, 0.0]))
        y.add_(1.0)
        return self.head(y)


class Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = Mixed()
        self.gate = Gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gate(self.body(x))


class RootUntraceable(nn.Module):
    """The root forward itself branches on a tensor value: served by the capture path."""

    def __init__(self) -> None:
        super().__init__()
        self.body = Mixed()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        if y.sum() > 0:
            return y
        return -y


def _noop(*args: Any) -> None:
    return None


def _mixed_modes(model: nn.Module) -> nn.Module:
    """Root in train mode, some submodules in eval, hooks of every kind registered."""
    body = model.body if isinstance(model, (Untraceable, RootUntraceable)) else model
    model.train()
    body.bn.eval()
    body.twice.eval()
    body.twice.lin.train()
    body.stem.register_forward_hook(_noop)
    body.head.register_forward_pre_hook(_noop)
    # NOTE: on a leaf; see test_backward_hook_on_traced_module_is_quiet for a traced one.
    body.stem.register_full_backward_hook(_noop)
    body.bn.register_forward_hook(_noop, with_kwargs=True)
    return model


def mixed() -> nn.Module:
    torch.manual_seed(0)
    return _mixed_modes(Mixed())


def untraceable() -> nn.Module:
    torch.manual_seed(0)
    return _mixed_modes(Untraceable())


def root_untraceable() -> nn.Module:
    torch.manual_seed(0)
    return _mixed_modes(RootUntraceable())


X = torch.randn(3, 4)


@dataclass(frozen=True)
class EntryPoint:
    id: str
    call: Callable[[nn.Module, Path], Any]
    raises: type[BaseException] | None = None
    model: Callable[[], nn.Module] = mixed
    marks: tuple[Any, ...] = ()


def _extract_and_use(model: nn.Module, nodes: Any = ("stem", "twice", "bn")) -> Any:
    ex = fxtap.create_feature_extractor(model, list(nodes))
    ex.train()
    ex.eval()
    with torch.no_grad():
        out = ex(X)
    ex.train()
    ex.train(False)
    copy.deepcopy(ex)
    return out


def _render(model: nn.Module, folder: Path, **kwargs: Any) -> Any:
    from fxtap.render import render

    return render(model, out_dir=folder, **kwargs)


def _save_load(model: nn.Module, folder: Path, fmt: str = "fxtap") -> Any:
    from fxtap.save import load, save

    ex = fxtap.create_feature_extractor(model, {"twice": "t", ":output": "out"})
    loaded = load(save(ex, folder / "mixed.fxtap", fmt=fmt), trust=fmt == "pickle")
    with torch.no_grad():
        return loaded.eval()(X)


def _compare(model: nn.Module, nodes: list[str], inputs: Any = X, training: bool = False) -> Any:
    from fxtap.cost import compare

    return compare(
        model,
        nodes,
        inputs,
        training=training,
        rounds=1,
        min_run_time=0.01,
        warmup=0,
        node_repeats=1,
        noise_threshold=None,
        progress=False,
        threads=1,
    )


def _split_and_use(model: nn.Module) -> Any:
    """Cut the model, switch both halves' modes, run them in eval mode (a train-mode call
    updates the BatchNorm statistics the halves share with the model, as the model itself
    would), and copy them."""
    halves = fxtap.split(model, "twice")
    for half in halves:
        half.train()
        half.eval()
    with torch.no_grad():
        out = halves.tail(halves.head(X))
    copy.deepcopy(halves.tail)
    return out


def _edit_and_use(model: nn.Module) -> Any:
    """Scale a node, switch modes, run the edited module in eval mode and copy it."""
    edited = fxtap.edit(model, {"twice": fxtap.edits.Scale(2.0)})
    edited.train()
    edited.eval()
    with torch.no_grad():
        out = edited(X)
    copy.deepcopy(edited)
    return out


def _dataset_job(model: nn.Module, folder: Path) -> Any:
    """Run a dataset job over the model, then read the store back."""
    data = torch.utils.data.TensorDataset(torch.randn(4, *X.shape[1:]), torch.arange(4))
    fxtap.extract_dataset(
        model, data, folder / "store", return_nodes=["twice"], batch_size=2, progress=False
    )
    return fxtap.open_features(folder / "store")["twice"][:]


def _names_with_fallback(model: nn.Module) -> Any:
    with pytest.warns(UserWarning, match="opaque"):
        return fxtap.get_graph_node_names(model, suppress_diff_warning=True)


def _extract_with_fallback(model: nn.Module, nodes: Any = ("gate", "body.twice")) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return _extract_and_use(model, nodes)


names = fxtap.get_graph_node_names
table = fxtap.node_table

ENTRY_POINTS = [
    # --- successful calls --------------------------------------------------------------------
    EntryPoint("get_graph_node_names", lambda m, d: names(m, suppress_diff_warning=True)),
    EntryPoint("node_table", lambda m, d: table(m)),
    EntryPoint("node_table-train", lambda m, d: table(m, training=True)),
    EntryPoint("node_table-inputs", lambda m, d: table(m, example_inputs=(X,))),
    EntryPoint("node_table-train-inputs", lambda m, d: table(m, training=True, example_inputs=X)),
    EntryPoint("trace-train", lambda m, d: fxtap.trace(m, training=True)),
    EntryPoint("trace-eval", lambda m, d: fxtap.trace(m, training=False)),
    EntryPoint("trace-checked", lambda m, d: fxtap.trace(m, training=True, example_inputs=X)),
    EntryPoint("NodePathTracer.trace", lambda m, d: fxtap.NodePathTracer().trace(m)),
    EntryPoint("create_feature_extractor", lambda m, d: _extract_and_use(m)),
    EntryPoint("render-dot", lambda m, d: _render(m, d, fmt="dot", nodes=["twice.lin_1"])),
    EntryPoint(
        "render-module-prefix",
        lambda m, d: _render(m, d, fmt="dot", nodes=["twice"]),
    ),
    EntryPoint("render-svg-shapes", lambda m, d: _render(m, d, mode="eval", example_inputs=X)),
    EntryPoint("save-load", _save_load),
    EntryPoint("save-load-pickle", lambda m, d: _save_load(m, d, fmt="pickle")),
    EntryPoint(
        "render-extractor",
        lambda m, d: _render(
            fxtap.create_feature_extractor(m, ["bn"], keep_traces=True), d, fmt="dot"
        ),
    ),
    EntryPoint(
        "node_table-of-a-trace",
        lambda m, d: table(m, traced=fxtap.trace(m, training=True), example_inputs=X),
    ),
    EntryPoint("cost.compare", lambda m, d: _compare(m, ["twice"])),
    EntryPoint("cost.compare-train", lambda m, d: _compare(m, ["bn"], training=True)),
    EntryPoint("extract_dataset", _dataset_job),
    EntryPoint("split", lambda m, d: _split_and_use(m)),
    EntryPoint("edit", lambda m, d: _edit_and_use(m)),
    EntryPoint("names-fallback", lambda m, d: _names_with_fallback(m), model=untraceable),
    EntryPoint("extract-fallback", lambda m, d: _extract_with_fallback(m), model=untraceable),
    EntryPoint(
        "extract-capture-path",
        lambda m, d: _extract_with_fallback(m, ["body.twice", "body.stem"]),
        model=root_untraceable,
    ),
    # --- failing calls -----------------------------------------------------------------------
    EntryPoint(
        "extract-unknown-node", lambda m, d: _extract_and_use(m, ["stme"]), NodeNotFoundError
    ),
    EntryPoint(
        "extract-bad-tracer-kwargs",
        lambda m, d: fxtap.create_feature_extractor(m, ["stem"], tracer_kwargs={"leaf": 1}),
        InvalidArgumentError,
    ),
    EntryPoint(
        "names-bad-concrete-args",
        lambda m, d: names(m, concrete_args={"y": 1}),
        InvalidArgumentError,
    ),
    EntryPoint(
        "node_table-bad-shape",
        lambda m, d: table(m, example_inputs=torch.randn(3, 5)),
        InputShapeError,
    ),
    EntryPoint(
        "trace-checked-bad-shape",
        lambda m, d: fxtap.trace(m, training=True, example_inputs=torch.randn(3, 5)),
        InputShapeError,
    ),
    EntryPoint(
        "trace-untraceable", lambda m, d: fxtap.trace(m, training=True), TraceError, untraceable
    ),
    EntryPoint(
        "NodePathTracer.trace-untraceable",
        lambda m, d: fxtap.NodePathTracer().trace(m),
        torch.fx.proxy.TraceError,
        untraceable,
    ),
    EntryPoint(
        "render-unknown-node",
        lambda m, d: _render(m, d, fmt="dot", nodes=["nope"]),
        NodeNotFoundError,
    ),
    EntryPoint("cost-unknown-node", lambda m, d: _compare(m, ["nope"]), NodeNotFoundError),
    EntryPoint(
        "cost-bad-shape", lambda m, d: _compare(m, ["stem"], torch.randn(3, 5)), InputShapeError
    ),
]


@pytest.mark.parametrize("entry", [pytest.param(e, id=e.id, marks=e.marks) for e in ENTRY_POINTS])
def test_model_untouched(entry: EntryPoint, tmp_path: Path, untouched: Any) -> None:
    model = entry.model()
    flags = {name: m.training for name, m in model.named_modules()}
    assert len(set(flags.values())) == 2, "the model must be in mixed modes"
    with untouched(model):
        if entry.raises is None:
            entry.call(model, tmp_path)
        else:
            with pytest.raises(entry.raises):
                entry.call(model, tmp_path)


def test_hooks_on_the_extractor_stay_off_the_model(untouched: Any) -> None:
    model = mixed()
    ex = fxtap.create_feature_extractor(model, ["stem"])
    with untouched(model):
        ex.stem.register_forward_hook(lambda m, a, k, out: None, with_kwargs=True)


def test_fingerprint_notices_changes(untouched: Any) -> None:
    """The fixture itself catches each kind of change it claims to."""
    changes: list[Callable[[nn.Module], Any]] = [
        lambda m: m.train(),
        lambda m: m.stem.weight.data.add_(1.0),
        lambda m: m.bn.running_mean.add_(1.0),
        lambda m: setattr(m.stem, "weight", nn.Parameter(m.stem.weight.detach().clone())),
        lambda m: m.head.register_forward_hook(_noop),
        lambda m: setattr(m.twice, "_tensor_constant0", torch.zeros(1)),
        lambda m: m.stem.weight.requires_grad_(False),
    ]
    for change in changes:
        model = mixed()
        with pytest.raises(AssertionError), untouched(model):
            change(model)


def test_registry_covers_public_api() -> None:
    """Every public callable of fxtap has an entry point here (add one line when adding API)."""
    covered = {"get_graph_node_names", "node_table", "trace", "create_feature_extractor"}
    covered |= {"NodePathTracer", "FeatureExtractor", "save", "load", "render", "compare"}
    covered |= {"extract_dataset", "open_features", "split", "edit"}
    # fxtap.trace and fxtap.render are callable stage packages, so test callability.
    public = {
        n
        for n in fxtap.__all__
        if callable(getattr(fxtap, n)) and not inspect.isclass(getattr(fxtap, n))
    }
    public |= {"NodePathTracer", "FeatureExtractor"}
    assert public <= covered, f"no untouched entry point for {sorted(public - covered)}"


def test_backward_hook_on_traced_module_is_quiet(untouched: Any) -> None:
    model = mixed()
    model.twice.register_full_backward_hook(_noop)
    with untouched(model):
        fxtap.get_graph_node_names(model, suppress_diff_warning=True)
