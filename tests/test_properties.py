"""Property tests: random module trees, random requested nodes, bitwise values and gradients.

Hypothesis draws a *spec* (a tree of tuples) and ``build`` turns it into an ``nn.Module`` whose
``forward`` interprets the spec. The trees nest several levels and mix: residual adds (some
``add_`` in place), a submodule called twice, functional ops, in-place ops (``relu_``,
``ReLU(inplace=True)``, ``add_``), dropout (module and functional) and batch norm,
``if self.training:`` branches, a module taking two inputs, children returning tuples or
dicts, a leaf module returning a tuple, and attribute names ending in digits (``conv_1``,
``stage_10``, ``relu_1``, ``add_1``: the last two collide with torch.fx's own suffixes).
Control flow depends only on the spec and on ``self.training``, never on tensor values, so
every generated model traces.

For each model, in train and in eval mode, a random set of requested nodes (names from
``fxtap.get_graph_node_names`` and dotted module prefixes) must give an extractor whose
outputs equal bitwise the values of those nodes in an independent full run of the unmodified
model (``tests/support/checker.py``), whose graph lints with no dead node, and whose every kept
parameter gets a gradient. Names must be unique and stable across traces.

Dropout in train mode: an extractor legitimately drops a dropout that no requested node needs,
and then every later dropout draws from a shifted RNG stream. Dropouts are drawn with
``p=0.5`` as often as ``p=0.0``. In train mode a requested value is compared bitwise when the
dropouts the extractor kept are a prefix of the model's dropouts (in execution order) or when
the value depends on no kept dropout past the first pruned one; otherwise (the RNG stream is
shifted for it) only its shape and dtype are compared. Eval mode, and train mode with ``p=0``,
is always compared bitwise.

Profiles (``FXTAP_HYPOTHESIS_PROFILE``): ``ci`` (default: derandomized, no example database,
300 examples for the extractor property) and ``thorough`` (5000 examples, same settings), e.g.
``FXTAP_HYPOTHESIS_PROFILE=thorough .venv/bin/python -m pytest tests/test_properties.py``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from torch import fx, nn

import fxtap
from fxtap.trace import NAME_KEY
from support.checker import bitwise_equal, capture_reference, preserved

FEATURES = 4
BATCH = 3

settings.register_profile(
    "ci",
    max_examples=300,
    derandomize=True,
    database=None,
    print_blob=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("thorough", settings.get_profile("ci"), max_examples=5000)
settings.register_profile("quick", settings.get_profile("ci"), max_examples=30)
PROFILE = settings.get_profile(os.environ.get("FXTAP_HYPOTHESIS_PROFILE", "ci"))

# Attribute names: digits at the end, and names torch.fx would generate for functional ops.
ATTRIBUTE_NAMES = (
    "conv_1", "stage_10", "block", "layer1", "relu", "relu_1", "add", "add_1", "body_2",
    "m_0", "tanh_1", "head",
)  # fmt: skip
FUNCTIONS = ("relu", "tanh", "sigmoid", "affine", "center", "cat_slice", "gelu")


# --- the modules a spec is built from --------------------------------------------------------


class Functional(nn.Module):
    """One functional (non-module) op, named by the spec."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "relu":
            return F.relu(x)
        if self.kind == "tanh":
            return torch.tanh(x)
        if self.kind == "sigmoid":
            return x.sigmoid()
        if self.kind == "affine":
            return x * 0.5 + 1.0
        if self.kind == "center":
            return x - x.mean(-1, keepdim=True)
        if self.kind == "cat_slice":
            return torch.cat([x, x * 2.0], dim=1)[:, 1 : 1 + FEATURES]
        return F.gelu(x)


class LinearInplaceMethod(nn.Module):
    """``self.lin(x).relu_()``: the linear output is overwritten in place."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(FEATURES, FEATURES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x).relu_()


class LinearInplaceModule(nn.Module):
    """A linear layer then ``nn.ReLU(inplace=True)``."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(FEATURES, FEATURES)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.lin(x))


class ViewThenInplace(nn.Module):
    """A view of a tensor that is then overwritten in place: the view sees the write."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(FEATURES, FEATURES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.lin(x)
        half = y[:, : FEATURES // 2]
        y.relu_()
        return torch.cat([half * 2.0, y[:, FEATURES // 2 :]], dim=1)


class Constants(nn.Module):
    """A raw parameter and a buffer (``get_attr`` nodes) and a tensor constant per mode."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(FEATURES, FEATURES) / FEATURES)
        self.register_buffer("shift", torch.linspace(-1.0, 1.0, FEATURES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            scale = torch.full((FEATURES,), 0.5)
        else:
            scale = torch.arange(FEATURES, dtype=torch.float32)
        return (x @ self.weight + self.shift) * scale


class FunctionalDropout(nn.Module):
    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(x, self.p, self.training)


class TrainBranch(nn.Module):
    """Different ops in train and eval mode."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return x * 0.5
        return (x + 1.0).tanh()


class TupleLeaf(nn.Module):
    """A leaf module (through ``leaf_modules``) whose output is a tuple."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x * 2.0, x - 1.0


class UsesTupleLeaf(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pair = TupleLeaf()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first, second = self.pair(x)
        return first * second


class Chain(nn.Module):
    """Children under drawn attribute names, applied in order."""

    def __init__(self, children: Sequence[tuple[str, nn.Module]]) -> None:
        super().__init__()
        self.order = [name for name, _ in children]
        for name, child in children:
            self.add_module(name, child)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in self.order:
            x = getattr(self, name)(x)
        return x


class Residual(nn.Module):
    """``proj(body(x)) + x``, the add out of place or in place (``add_``)."""

    def __init__(self, body: nn.Module, inplace: bool) -> None:
        super().__init__()
        self.body = body
        self.proj = nn.Linear(FEATURES, FEATURES)
        self.inplace = inplace

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.proj(self.body(x))
        if self.inplace:
            return y.add_(x)
        return y + x


class Twice(nn.Module):
    """The same submodule called twice."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(self.inner(x))


class Split(nn.Module):
    """Two children on the same input, returned as a tuple or a dict."""

    def __init__(self, left: nn.Module, right: nn.Module, as_dict: bool) -> None:
        super().__init__()
        self.left = left
        self.right = right
        self.as_dict = as_dict

    def forward(self, x: torch.Tensor) -> Any:
        if self.as_dict:
            return {"a": self.left(x), "b": self.right(x)}
        return self.left(x), self.right(x)


class Merge(nn.Module):
    """Consumes a ``Split``'s tuple or dict output."""

    def __init__(self, split: Split) -> None:
        super().__init__()
        self.split = split

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.split(x)
        if self.split.as_dict:
            return out["a"] - out["b"]
        return out[0] + out[1]


class TwoInputs(nn.Module):
    """A module with two tensor inputs and a keyword default."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor, gate: torch.Tensor, scale: float = 0.5) -> torch.Tensor:
        return self.inner(x) + gate * scale


class Gated(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.gate = nn.Linear(FEATURES, FEATURES)
        self.both = TwoInputs(inner)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.both(x, torch.sigmoid(self.gate(x)))


class Root(nn.Module):
    """A linear stem keeps in-place ops off the input tensor; then the drawn body."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.stem = nn.Linear(FEATURES, FEATURES)
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.stem(x))


TRACER_KWARGS = {"leaf_modules": [TupleLeaf]}


def build(spec: tuple[Any, ...]) -> nn.Module:
    """Turn a drawn spec into a module (see ``specs``)."""
    builder = _BUILDERS.get(spec[0])
    if builder is None:
        raise AssertionError(f"unknown spec {spec!r}")
    return builder(spec)


#: Spec kind -> the module it draws; ``spec[1:]`` are its arguments (child specs built too).
_BUILDERS: dict[str, Callable[[tuple[Any, ...]], nn.Module]] = {
    "linear": lambda _: nn.Linear(FEATURES, FEATURES),
    "relu_module": lambda _: nn.ReLU(),
    "relu_inplace_module": lambda _: LinearInplaceModule(),
    "relu_inplace_method": lambda _: LinearInplaceMethod(),
    "view_then_inplace": lambda _: ViewThenInplace(),
    "constants": lambda _: Constants(),
    "batch_norm": lambda _: nn.BatchNorm1d(FEATURES),
    "dropout": lambda spec: nn.Dropout(spec[1]),
    "functional_dropout": lambda spec: FunctionalDropout(spec[1]),
    "function": lambda spec: Functional(spec[1]),
    "train_branch": lambda _: TrainBranch(),
    "tuple_leaf": lambda _: UsesTupleLeaf(),
    "chain": lambda spec: Chain([(name, build(child)) for name, child in zip(spec[1], spec[2])]),
    "sequential": lambda spec: nn.Sequential(*(build(child) for child in spec[1])),
    "residual": lambda spec: Residual(build(spec[1]), inplace=spec[2]),
    "twice": lambda spec: Twice(build(spec[1])),
    "split": lambda spec: Merge(Split(build(spec[1]), build(spec[2]), as_dict=spec[3])),
    "gated": lambda spec: Gated(build(spec[1])),
}


def _atoms() -> st.SearchStrategy[tuple[Any, ...]]:
    p = st.sampled_from([0.0, 0.5])
    return st.one_of(
        st.sampled_from(
            [
                ("linear",),
                ("relu_module",),
                ("relu_inplace_module",),
                ("relu_inplace_method",),
                ("batch_norm",),
                ("train_branch",),
                ("tuple_leaf",),
                ("view_then_inplace",),
                ("constants",),
            ]
        ),
        st.tuples(st.just("dropout"), p),
        st.tuples(st.just("functional_dropout"), p),
        st.tuples(st.just("function"), st.sampled_from(FUNCTIONS)),
    )


@st.composite
def _chain(draw: st.DrawFn, children: st.SearchStrategy[tuple[Any, ...]]) -> tuple[Any, ...]:
    items = draw(st.lists(children, min_size=1, max_size=3))
    names = draw(
        st.lists(
            st.sampled_from(ATTRIBUTE_NAMES),
            min_size=len(items),
            max_size=len(items),
            unique=True,
        )
    )
    return ("chain", tuple(names), tuple(items))


def _extend(children: st.SearchStrategy[tuple[Any, ...]]) -> st.SearchStrategy[tuple[Any, ...]]:
    return st.one_of(
        _chain(children),
        st.tuples(st.just("sequential"), st.lists(children, min_size=1, max_size=3).map(tuple)),
        st.tuples(st.just("residual"), children, st.booleans()),
        st.tuples(st.just("twice"), children),
        st.tuples(st.just("split"), children, children, st.booleans()),
        st.tuples(st.just("gated"), children),
    )


def specs() -> st.SearchStrategy[tuple[Any, ...]]:
    """Trees of blocks, up to about four levels deep."""
    return st.recursive(_atoms(), _extend, max_leaves=8)


# --- checks ----------------------------------------------------------------------------------


def _names(model: nn.Module) -> tuple[list[str], list[str]]:
    return fxtap.get_graph_node_names(
        model, tracer_kwargs=TRACER_KWARGS, suppress_diff_warning=True
    )


def _queries(draw: st.DrawFn, names: list[str]) -> list[str]:
    """A few node names, sometimes with a dotted module prefix (selects its last node)."""
    chosen = draw(st.lists(st.sampled_from(names), min_size=1, max_size=4, unique=True))
    prefixes = sorted({n.rsplit(".", 1)[0] for n in names if "." in n} - set(names))
    if prefixes and draw(st.booleans()):
        extra = draw(st.sampled_from(prefixes))
        if extra not in chosen:
            chosen.append(extra)
    return chosen


def _is_random(node: fx.Node, gm: fx.GraphModule, training: bool) -> bool:
    """True for a node that draws from the RNG (dropout with p > 0 in train mode)."""
    if node.op == "call_module":
        # NOTE: the trace shares submodules with the model, whose own flags may differ from
        # the mode the graph was traced in.
        module = gm.get_submodule(str(node.target))
        return isinstance(module, nn.modules.dropout._DropoutNd) and training and module.p > 0
    if node.op == "call_function" and node.target is F.dropout:
        p = node.args[1] if len(node.args) > 1 else node.kwargs.get("p", 0.5)
        training = node.args[2] if len(node.args) > 2 else node.kwargs.get("training", True)
        return bool(training) and p > 0
    return False


def _rng_shifted(ex: fxtap.FeatureExtractor, mode: str) -> set[str]:
    """Names of kept nodes whose value rests on a dropout drawing from a shifted RNG stream."""
    full = ex.full[mode]
    gm = full.graph_module
    kept = ex.kept[mode]
    randoms = [n for n in gm.graph.nodes if _is_random(n, gm, full.training)]
    pruned_at = next((i for i, n in enumerate(randoms) if full.names[n] not in kept), None)
    if pruned_at is None:
        return set()
    shifted = {n for n in randoms[pruned_at:] if full.names[n] in kept}
    tainted: set[fx.Node] = set()
    for node in gm.graph.nodes:
        if node in shifted or any(a in tainted for a in node.all_input_nodes):
            tainted.add(node)
    return {full.names[n] for n in tainted if n in full.names}


def _check_mode(
    ex: fxtap.FeatureExtractor, model: nn.Module, mode: str, inputs: Sequence[torch.Tensor]
) -> int:
    """Assert lint, no dead node, bitwise values and gradients; return values compared."""
    training = mode == "train"
    ex.train(training)
    graph = ex.graph
    _lint(ex)
    for node in graph.nodes:
        if node.op in ("placeholder", "output") or node.users:
            continue
        written = node.op == "call_method" and str(node.target).endswith("_")
        written = written or (
            node.op == "call_module" and getattr(ex.get_submodule(str(node.target)), "inplace", 0)
        )
        assert written, f"dead node {node.format_node()} left in the {mode} graph"
    reference, _ = capture_reference(model, inputs, training=training, tracer_kwargs=TRACER_KWARGS)
    with preserved(model):
        torch.manual_seed(0)
        with torch.no_grad():
            outputs = ex(*inputs)
    assert set(outputs) == set(ex.outputs[mode])
    shifted = _rng_shifted(ex, mode)
    if shifted & set(ex.outputs[mode].values()):
        event(f"{mode}: some values after a pruned dropout compared by shape only")
    compared = 0
    for key, name in ex.outputs[mode].items():
        expected = reference[name]
        if name in shifted:
            assert _shapes(outputs[key]) == _shapes(expected), (mode, key, name)
            continue
        assert bitwise_equal(outputs[key], expected), (
            f"{mode} output {key!r} (node {name!r}) differs from the full model's value"
        )
        compared += 1
    _check_grads(ex, model, inputs)
    return compared


def _lint(ex: fxtap.FeatureExtractor) -> None:
    """``graph.lint()`` against the extractor itself, whatever the graph's ``owning_module``.

    NOTE: see ``test_mode_graphs_owned_by_the_extractor``: the graph of the mode the
    extractor was not built in still names an intermediate module as its owner.
    """
    copy = fx.Graph(owning_module=ex)
    copy.output(copy.graph_copy(ex.graph, {}))
    copy.lint()


def _shapes(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return (tuple(value.shape), value.dtype)
    if isinstance(value, (list, tuple)):
        return [_shapes(v) for v in value]
    return value


def _check_grads(ex: fxtap.FeatureExtractor, model: nn.Module, inputs: Sequence[Any]) -> None:
    """Every parameter the current mode's graph uses gets a gradient."""
    used = _graph_parameters(ex)
    with preserved(model):
        for p in ex.parameters():
            p.grad = None
        torch.manual_seed(0)
        outputs = ex(*inputs)
        leaves = [
            t
            for t in torch.utils._pytree.tree_leaves(outputs)
            if isinstance(t, torch.Tensor) and t.requires_grad
        ]
        if not leaves:
            assert not used, f"parameters {sorted(used)} kept although no output needs them"
            return
        sum(t.sum() for t in leaves).backward()
        missing = [name for name, p in used.items() if p.grad is None]
        assert not missing, f"kept parameters got no gradient: {missing}"
        for p in ex.parameters():
            p.grad = None


def _graph_parameters(ex: fxtap.FeatureExtractor) -> dict[str, nn.Parameter]:
    found: dict[str, nn.Parameter] = {}
    for node in ex.graph.nodes:
        if node.op == "call_module":
            module = ex.get_submodule(str(node.target))
            found.update(module.named_parameters(prefix=str(node.target)))
        elif node.op == "get_attr":
            value = ex.get_parameter(str(node.target)) if _is_parameter(ex, node) else None
            if value is not None:
                found[str(node.target)] = value
    return found


def _is_parameter(ex: fxtap.FeatureExtractor, node: fx.Node) -> bool:
    try:
        ex.get_parameter(str(node.target))
    except AttributeError:
        return False
    return True


def _requests(queries: list[str], as_dict: bool) -> list[str] | dict[str, str]:
    if as_dict:
        return {q: f"out{i}" for i, q in enumerate(queries)}
    return queries


# --- properties ------------------------------------------------------------------------------


@settings(PROFILE)
@given(spec=specs(), data=st.data())
def test_extractor_matches_full_run(spec: tuple[Any, ...], data: st.DataObject) -> None:
    torch.manual_seed(0)
    model = Root(build(spec))
    mixed = data.draw(st.booleans(), label="model in eval mode")
    model.train(not mixed)
    inputs = (torch.randn(BATCH, FEATURES),)
    train_names, eval_names = _names(model)
    as_dict = data.draw(st.booleans(), label="dict return_nodes")
    common = [n for n in train_names if n in set(eval_names)]
    if data.draw(st.booleans(), label="one request for both modes"):
        queries = data.draw(_query_strategy(common), label="queries")
        ex = fxtap.create_feature_extractor(
            model, _requests(queries, as_dict), tracer_kwargs=TRACER_KWARGS, keep_traces=True
        )
    else:
        train_q = data.draw(_query_strategy(train_names), label="train queries")
        eval_q = data.draw(_query_strategy(eval_names), label="eval queries")
        ex = fxtap.create_feature_extractor(
            model,
            train_return_nodes=_requests(train_q, as_dict),
            eval_return_nodes=_requests(eval_q, as_dict),
            tracer_kwargs=TRACER_KWARGS,
            keep_traces=True,
        )
    assert ex.training == model.training
    event(f"model depth {_depth(spec)}")
    for mode in ("train", "eval"):
        _check_mode(ex, model, mode, inputs)


def _depth(spec: tuple[Any, ...]) -> int:
    """Levels of module nesting in a spec (an atom is 1)."""
    kind = spec[0]
    if kind == "chain":
        children = list(spec[2])
    elif kind == "sequential":
        children = list(spec[1])
    elif kind == "split":
        children = [spec[1], spec[2]]
    elif kind in ("residual", "twice", "gated"):
        children = [spec[1]]
    else:
        children = []
    return 1 + max((_depth(c) for c in children), default=0)


def _query_strategy(names: list[str]) -> st.SearchStrategy[list[str]]:
    return st.composite(lambda draw: _queries(draw, names))()


@settings(PROFILE, max_examples=max(PROFILE.max_examples // 3, 50))
@given(spec=specs())
def test_names_unique_and_stable(spec: tuple[Any, ...]) -> None:
    model = Root(build(spec))
    first = _names(model)
    second = _names(model)
    assert first == second, "two traces of the same model gave different names"
    for names in first:
        assert len(names) == len(set(names)), "duplicate node names"
        assert names[0] == "x"
    traced = fxtap.trace(model, training=False, tracer_kwargs=TRACER_KWARGS)
    calls: dict[str, int] = {}
    for node, name in traced.names.items():
        assert node.meta[NAME_KEY] == name
        if node.op == "call_module":
            # The first call of a leaf module is named by its path, later calls path_1, ...
            n = calls.get(node.target, 0)
            assert name == (node.target if n == 0 else f"{node.target}_{n}"), (name, n)
            calls[node.target] = n + 1


def test_profiles_documented() -> None:
    """The default profile runs at least 300 examples, derandomized, without a database."""
    ci = settings.get_profile("ci")
    assert ci.max_examples >= 300
    assert ci.derandomize and ci.database is None
    assert settings.get_profile("thorough").max_examples >= 5000


def test_mode_graphs_owned_by_the_extractor() -> None:
    # A tensor constant that differs per mode is renamed in the eval graph (_union_root).
    model = Root(build(("constants",)))
    ex = fxtap.create_feature_extractor(model, ["body"])
    for training in (True, False):
        ex.train(training)
        assert ex.graph.owning_module is ex
        ex.graph.lint()
