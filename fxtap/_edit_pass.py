"""The edit pass: insert edits into traced graphs, each replacing a node's value for its users.

``fxtap.edit`` (a module returning the model's output) and ``create_feature_extractor(edits=)``
(taps of the edited model) both run it.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Mapping
from typing import Any

from torch import fx, nn

from fxtap._compat import fx_reserved_globals
from fxtap._fx import EDIT_KEY, NAME_KEY
from fxtap._query import normalize_return_nodes, resolve
from fxtap.edits import Input
from fxtap.errors import InvalidArgumentError, NodeNotFoundError
from fxtap.trace import Traced

__all__ = ["EDITS_PATH", "EDIT_SUFFIX", "Edit", "apply_edits", "check_edits"]

#: Attribute of an edited graph module holding its edit modules (``fxtap_edits.0``, ...).
EDITS_PATH = "fxtap_edits"
#: Suffix of an edit node's name: the edit of ``layer3.1.relu_1`` is ``layer3.1.relu_1.edit``,
#: so a query for the node (or a prefix of it) selects the edited value.
EDIT_SUFFIX = ".edit"

Edit = nn.Module | Callable[..., Any]


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
            _check_free(change.name, graph, query)
            where = last_input[-1] if last_input else next(iter(graph.nodes))
            with graph.inserting_after(where):
                placeholder = graph.placeholder(change.name, default_value=None)
            names[placeholder] = change.name
            placeholder.meta[NAME_KEY] = change.name
            last_input.append(placeholder)
            extra = (placeholder,)
        # NOTE: an edit of a model input goes after every placeholder, its own Input's too
        after = last_input[-1] if current.op == "placeholder" else current
        with graph.inserting_after(after):
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


def _check_free(name: str, graph: fx.Graph, query: str) -> None:
    """Refuse an ``Input`` name the generated ``forward`` already has or reserves."""
    arguments = {str(n.target) for n in graph.nodes if n.op == "placeholder"}
    if name in arguments or name == "self" or name in fx_reserved_globals():
        raise InvalidArgumentError(
            f"edits[{query!r}] is Input({name!r}), but {name!r} is "
            + ("already an argument of the model's forward" if name in arguments else
               "a name the generated forward reserves")
            + "; give the Input another name, e.g. Input('patch')"
        )  # fmt: skip
