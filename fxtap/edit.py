"""Edit a traced graph: replace a node's value, for all of its users, by ``edit(value)``."""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Mapping
from typing import Any

from torch import fx, nn

from fxtap._fx import EDIT_KEY, union_root
from fxtap._query import normalize_return_nodes, resolve
from fxtap.edits import Input
from fxtap.errors import InvalidArgumentError, NodeNotFoundError, TraceError
from fxtap.extractor import MODES, ExtractorInfo, FeatureExtractor
from fxtap.prune import prune, unwrap_output
from fxtap.trace import NAME_KEY, Traced, check_model, is_root_failure, trace

__all__ = ["EDITS_PATH", "EDIT_KEY", "apply_edits", "check_edits", "edit"]

#: Attribute of an edited graph module holding its edit modules (``fxtap_edits.0``, ...).
EDITS_PATH = "fxtap_edits"
#: Suffix of an edit node's name: the edit of ``layer3.1.relu_1`` is ``layer3.1.relu_1.edit``,
#: so a query for the node (or a prefix of it) selects the edited value.
EDIT_SUFFIX = ".edit"

Edit = nn.Module | Callable[..., Any]


def edit(
    model: nn.Module,
    edits: Mapping[str, Edit],
    *,
    example_inputs: Any = None,
    tracer: str = "auto",
    tracer_kwargs: Mapping[str, Any] | None = None,
    concrete_args: Mapping[str, Any] | None = None,
    auto_leaf: bool = True,
) -> FeatureExtractor:
    """A graph module computing ``model`` with each named node's value replaced by an edit.

    Every user of an edited node (later ops, the model's output) gets ``edit(value)`` instead
    of the value: the edit is compiled into the graph, so it costs one op, needs no hook, and
    ``torch.export.export`` exports it. An ``Input(name)`` edit adds the keyword argument
    ``name`` to the edited module (``m(x, patch=cached)``); left out, the value is kept.

    Before (resnet18, ``edits={"layer3": Scale(0.5)}``)::

        layer3_1_relu_1 = getattr(self.layer3, "1").relu(add_5)
        layer4_0_conv1 = getattr(self.layer4, "0").conv1(layer3_1_relu_1)

    After::

        layer3_1_relu_1 = getattr(self.layer3, "1").relu(add_5)
        fxtap_edits_0 = getattr(self.fxtap_edits, "0")(layer3_1_relu_1)
        layer4_0_conv1 = getattr(self.layer4, "0").conv1(fxtap_edits_0)

    Args:
        model: the model; never modified (the edited module shares its parameters).
        edits: node query (``return_nodes`` syntax) -> edit: an ``fxtap.edits`` module, any
            ``nn.Module`` or a traceable function of the value. Several edits of one node
            apply in the order given. A node that one mode's graph lacks is edited in the
            mode that has it.
        example_inputs: as in ``create_feature_extractor`` (the export path's inputs).
        tracer: ``"auto"``, ``"fx"`` or ``"export"``.
        tracer_kwargs: ``NodePathTracer`` options.
        concrete_args: torch.fx's ``concrete_args``.
        auto_leaf: keep untraceable submodules opaque (nodes inside them cannot be edited).

    Returns:
        A ``FeatureExtractor`` (both modes) returning what ``model`` returns, edited.

    Raises:
        InvalidArgumentError: an edit that is no module or function, a repeated ``Input`` name.
        NodeNotFoundError: a query matches no node in either mode.
        TraceError: the model cannot be traced (the capture path cannot compile an edit:
            use ``create_feature_extractor(..., edits=...)``, docs/editing.md).

    >>> from fxtap.edits import Scale
    >>> m = edit(torchvision.models.resnet18(), {"layer3": Scale(0.5)})
    >>> m(torch.rand(1, 3, 64, 64)).shape
    torch.Size([1, 1000])
    """
    check_model(model)
    check_edits(edits)
    name = type(model).__name__
    graphs: dict[str, fx.GraphModule] = {}
    traces: dict[str, Traced] = {}
    for mode in MODES:
        try:
            traces[mode] = trace(
                model,
                training=mode == "train",
                tracer_kwargs=tracer_kwargs,
                concrete_args=concrete_args,
                auto_leaf=auto_leaf,
                example_inputs=example_inputs,
                tracer=tracer,
            )
        except TraceError as exc:
            if is_root_failure(exc):
                exc.add_note(
                    "fxtap.edit compiles edits into a graph; for a model only the capture path "
                    "runs, tap it with create_feature_extractor(model, return_nodes, edits=...), "
                    "which applies the edits with hooks (docs/editing.md)"
                )
            raise
    edited = apply_edits(traces, edits, model_name=name)
    for mode in MODES:
        output = edited[mode].graph_module.graph.output_node().args[0]
        graphs[mode] = prune(edited[mode], {"output": output}, class_name=name)
        unwrap_output(graphs[mode].graph, "output")
        graphs[mode].graph.lint()
        graphs[mode].recompile()
    info = ExtractorInfo(outputs={mode: {} for mode in MODES})
    return FeatureExtractor(
        union_root(graphs),
        {m: gm.graph for m, gm in graphs.items()},
        class_name=f"{name}Edited",
        training=model.training,
        info=info,
    )


def check_edits(edits: Any) -> None:
    """Raise ``InvalidArgumentError`` unless ``edits`` maps queries to modules or functions."""
    if not isinstance(edits, Mapping) or not edits:
        raise InvalidArgumentError(
            f"edits={edits!r:.60} is not a non-empty dict; pass node query -> edit, e.g. "
            "edits={'layer3': fxtap.edits.Scale(0.5)}"
        )
    names: dict[str, str] = {}
    for query, change in edits.items():
        if not isinstance(query, str):
            raise InvalidArgumentError(
                f"edits has the key {query!r:.60} ({type(query).__name__}); keys are node "
                "queries such as 'layer3' or 'layer1.0.add'"
            )
        if not callable(change):
            raise InvalidArgumentError(
                f"edits[{query!r}] is a {type(change).__name__}, not an edit; pass an "
                "fxtap.edits module (Zero, Scale, Add, Project, Replace, Input), another "
                "nn.Module, or a function of the value"
            )
        if isinstance(change, Input):
            if change.name in names:
                raise InvalidArgumentError(
                    f"edits[{query!r}] and edits[{names[change.name]!r}] are both "
                    f"Input({change.name!r}); give each Input its own name"
                )
            names[change.name] = query


def apply_edits(
    traces: Mapping[str, Traced], edits: Mapping[str, Edit], *, model_name: str
) -> dict[str, Traced]:
    """Each mode's trace with the edits inserted (new graph modules; the traces are unchanged).

    Guarantees: each edited node's users, the output included, read the edit's result; the
    edit node is named ``NAME.edit`` and marked with ``EDIT_KEY``; ``Input`` edits add one
    placeholder each (default ``None``), after the model's own; ``graph.lint()`` passes.

    Raises:
        NodeNotFoundError: a query matches no node in any mode.
    """
    requests = normalize_return_nodes(list(edits), argument="edits")
    found: dict[str, dict[str, fx.Node]] = {mode: {} for mode in traces}
    for req in requests:
        missing: NodeNotFoundError | None = None
        for mode, traced in traces.items():
            try:
                node = resolve([req], traced, model_name=model_name)[req.key]
            except NodeNotFoundError as exc:
                missing = exc
                continue
            if not isinstance(node, fx.Node):
                raise InvalidArgumentError(
                    f"edits[{req.query!r}] selects the model's output structure, not a node; "
                    "edit the node that computes it (List names with: fxtap nodes MODEL)"
                )
            found[mode][req.query] = node
        if missing is not None and not any(req.query in f for f in found.values()):
            raise missing
    return {mode: _edit_one(traced, found[mode], edits) for mode, traced in traces.items()}


def _edit_one(traced: Traced, targets: Mapping[str, fx.Node], edits: Mapping[str, Edit]) -> Traced:
    owner = traced.graph_module
    graph = fx.Graph()
    mapping: dict[fx.Node, fx.Node] = {}
    graph.output(graph.graph_copy(owner.graph, mapping), owner.graph.output_node().type)
    gm = fx.GraphModule(owner, graph, owner.__class__.__name__)
    container = nn.Module()
    gm.add_module(EDITS_PATH, container)
    names = {mapping[n]: name for n, name in traced.names.items() if n in mapping}
    replaced: dict[fx.Node, fx.Node] = {}
    last_input = [n for n in graph.nodes if n.op == "placeholder"][-1:]
    for i, (query, node) in enumerate(targets.items()):
        change = edits[query]
        current = replaced.get(mapping[node], mapping[node])
        name = names.get(mapping[node], mapping[node].name)
        label = name + EDIT_SUFFIX
        taken = set(names.values())
        count = 0
        while label in taken:  # a second edit of the same node
            count += 1
            label = f"{name}{EDIT_SUFFIX}_{count}"
        extra: tuple[fx.Node, ...] = ()
        if isinstance(change, Input):
            where = last_input[-1] if last_input else next(iter(graph.nodes))
            with graph.inserting_after(where):
                placeholder = graph.placeholder(change.name, default_value=None)
            names[placeholder] = change.name
            placeholder.meta[NAME_KEY] = change.name
            last_input.append(placeholder)
            extra = (placeholder,)
        with graph.inserting_after(current):
            if isinstance(change, nn.Module):
                container.add_module(str(i), change)
                new = graph.call_module(f"{EDITS_PATH}.{i}", (current, *extra))
            else:
                new = graph.call_function(change, (current, *extra))
        current.replace_all_uses_with(new, delete_user_cb=functools.partial(operator.is_not, new))
        new.meta[NAME_KEY] = names[new] = label
        new.meta[EDIT_KEY] = name
        replaced[mapping[node]] = new
    graph.lint()
    gm.recompile()
    order = {n: i for i, n in enumerate(graph.nodes)}
    ordered = dict(sorted(names.items(), key=lambda kv: order[kv[0]]))
    for node, name in ordered.items():
        node.meta[NAME_KEY] = name

    def moved(node: Any) -> Any:
        return fx.node.map_arg(node, lambda n: replaced.get(mapping[n], mapping[n]))

    return Traced(
        gm,
        ordered,
        traced.training,
        module_inputs={p: moved(n) for p, n in traced.module_inputs.items() if n in mapping},
        leaves=traced.leaves,
        wrapped=traced.wrapped,
        module_outputs={p: moved(v) for p, v in traced.module_outputs.items()},
    )
