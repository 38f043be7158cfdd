"""Node queries: parse ``NAME``, ``NAME:input``, ``NAME:output`` and ``:output``, and resolve them.

One parser and one resolver for every stage: the extractor, the capture path, the renderer and
the cost report all read requests through ``normalize_return_nodes`` and ``parse_query``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from torch import fx

from fxtap.errors import InvalidArgumentError, NodeNotFoundError, close_matches, format_choices
from fxtap.trace import Traced

__all__ = [
    "INPUT_SUFFIX",
    "MODEL_OUTPUT",
    "OUTPUT_SUFFIX",
    "OutputKey",
    "Query",
    "Request",
    "normalize_return_nodes",
    "output_name",
    "parse_query",
    "requests_by_mode",
    "resolve",
    "resolve_in_mode",
]

#: Query suffix selecting the first argument a module receives: ``"layer4.1.conv2:input"``.
INPUT_SUFFIX = ":input"


#: Query selecting the model's own output: ``{"layer4": "feat", ":output": "logits"}``.
MODEL_OUTPUT = ":output"


#: A key of the output dict: the user's string, or integer, kept as given.
OutputKey = str | int


@dataclass(frozen=True)
class Request:
    """One requested output: a query and the key it gets in the output dict."""

    query: str
    key: OutputKey


#: Query suffix naming a module's own output, the same as the bare name: ``"layer4:output"``.
OUTPUT_SUFFIX = ":output"


@dataclass(frozen=True)
class Query:
    """A parsed node query.

    Attributes:
        path: the node or module name; empty for the model's output.
        port: ``"node"`` (``NAME`` or ``NAME:output``), ``"input"`` (``NAME:input``) or
            ``"model"`` (``:output``).
    """

    path: str
    port: Literal["node", "input", "model"]


def parse_query(text: str) -> Query:
    """Split a query into its name and what it selects.

    >>> parse_query("layer4.1.conv2:input")
    Query(path='layer4.1.conv2', port='input')
    >>> parse_query(":output")
    Query(path='', port='model')
    """
    if text == MODEL_OUTPUT:
        return Query("", "model")
    if text.endswith(INPUT_SUFFIX):
        return Query(text[: -len(INPUT_SUFFIX)], "input")
    return Query(text.removesuffix(OUTPUT_SUFFIX), "node")


def normalize_return_nodes(return_nodes: Any, *, argument: str) -> list[Request]:
    """Validate a list or dict of node queries and return them as ``Request``s.

    Raises:
        InvalidArgumentError: empty, wrong type, queries or keys that are neither strings nor
            integers, duplicate keys.

    Integer keys stay integers, as torchvision's ``IntermediateLayerGetter`` keeps them
    (``{"layer1": 0}`` returns key ``0``); an integer node name becomes its decimal string.

    >>> normalize_return_nodes({"layer1": 0}, argument="return_nodes")
    [Request(query='layer1', key=0)]
    """
    if isinstance(return_nodes, str):
        return_nodes = [return_nodes]
    if isinstance(return_nodes, Mapping):
        pairs = list(return_nodes.items())
    elif isinstance(return_nodes, Iterable):
        pairs = [(q, q) for q in return_nodes]
    else:
        raise InvalidArgumentError(
            f"{argument} {return_nodes!r:.80} is a {type(return_nodes).__name__}; expected a list "
            "of node names or a dict mapping node names to output keys, e.g. "
            "['layer2', 'layer4'] or {'layer4': 'feat'}"
        )
    if not pairs:
        raise InvalidArgumentError(
            f"{argument} is empty; request at least one node, e.g. ['layer4']. "
            "List names with fxtap.get_graph_node_names(model) or: fxtap nodes MODEL"
        )
    requests: list[Request] = []
    seen: dict[OutputKey, str] = {}
    for raw_query, raw_key in pairs:
        query = _as_name(raw_query)
        key = raw_key if _is_int(raw_key) else _as_name(raw_key)
        if query is None:
            raise InvalidArgumentError(
                f"{argument} has a non-string node name {raw_query!r} ({type(raw_query).__name__}); "
                "node names are strings such as 'layer1.0.relu'"
            )
        if key is None:
            raise InvalidArgumentError(
                f"{argument}[{query!r}] maps to {raw_key!r} ({type(raw_key).__name__}); output keys "
                "must be strings or integers"
            )
        if key in seen:
            raise InvalidArgumentError(
                f"{argument} gives output key {key!r} twice (for {seen[key]!r} and {query!r}); "
                "give each requested node its own key"
            )
        seen[key] = query
        requests.append(Request(query, key))
    return requests


def resolve(requests: list[Request], traced: Traced, *, model_name: str) -> dict[OutputKey, Any]:
    """Map each request's key to the node (or output structure) it selects.

    A query selects the node of that exact name, or else the last node in execution order
    whose name has the query as a dotted prefix. Each query is resolved on its own, so
    overlapping queries (``layer4`` and ``layer4.1``) never take each other's nodes.

    Raises:
        NodeNotFoundError: a query matches nothing; lists the closest names and the mode.
    """
    last_under = _prefix_index(traced.names)
    inputs = _module_inputs(traced)
    output_node = traced.graph_module.graph.output_node()
    selected: dict[OutputKey, Any] = {}
    for req in requests:
        query = parse_query(req.query)
        if query.port == "model":
            selected[req.key] = output_node.args[0]
        elif query.port == "node" and query.path in last_under:
            selected[req.key] = last_under[query.path]
        elif query.port == "input" and query.path in inputs:
            selected[req.key] = inputs[query.path]
        else:
            raise _not_found(req.query, traced, model_name, inputs)
    return selected


def requests_by_mode(
    return_nodes: Any, train_nodes: Any, eval_nodes: Any
) -> dict[str, list[Request]]:
    """``create_feature_extractor``'s three node arguments as each mode's ``Request`` list.

    Raises:
        InvalidArgumentError: both kinds given, one mode's list alone, or none at all.
    """
    if return_nodes is not None and (train_nodes is not None or eval_nodes is not None):
        raise InvalidArgumentError(
            "return_nodes was given together with train_return_nodes/eval_return_nodes; pass "
            "either return_nodes (both modes) or both train_return_nodes and eval_return_nodes"
        )
    if return_nodes is None:
        if train_nodes is None and eval_nodes is None:
            raise InvalidArgumentError(
                "no nodes requested: return_nodes is None; pass return_nodes=['layer4'] (or "
                "both train_return_nodes and eval_return_nodes). List names with "
                "fxtap.get_graph_node_names(model)"
            )
        if train_nodes is None or eval_nodes is None:
            given = "train_return_nodes" if eval_nodes is None else "eval_return_nodes"
            missing = "eval_return_nodes" if eval_nodes is None else "train_return_nodes"
            raise InvalidArgumentError(
                f"only {given} was given; pass {missing} too, or use return_nodes for both modes"
            )
        return {
            "train": normalize_return_nodes(train_nodes, argument="train_return_nodes"),
            "eval": normalize_return_nodes(eval_nodes, argument="eval_return_nodes"),
        }
    both = normalize_return_nodes(return_nodes, argument="return_nodes")
    return {"train": both, "eval": both}


def resolve_in_mode(
    requests: Mapping[str, list[Request]],
    traces: Mapping[str, Traced],
    mode: str,
    *,
    model_name: str,
) -> dict[OutputKey, Any]:
    """``resolve`` in ``mode``; a node that only the other mode's graph has says so.

    Raises:
        NodeNotFoundError: a query matches nothing in ``mode``; when the other mode's graph
            has it (GoogLeNet's ``aux1`` in train mode), the message says how to ask per mode.
    """
    try:
        return resolve(requests[mode], traces[mode], model_name=model_name)
    except NodeNotFoundError:
        other = "eval" if mode == "train" else "train"
        for req in requests[mode]:
            if not _resolves(req, traces[mode]) and _resolves(req, traces[other]):
                raise NodeNotFoundError(
                    f"node {req.query!r} not found in the {mode} graph of {model_name}, but the "
                    f"{other} graph has it: it exists in {other} mode only. Ask for it in that "
                    f"mode alone: {other}_return_nodes=[{req.query!r}] together with "
                    f"{mode}_return_nodes= for the {mode} outputs (return_nodes= asks both modes)"
                ) from None
        raise


def _resolves(request: Request, traced: Traced) -> bool:
    try:
        resolve([request], traced, model_name="")
    except NodeNotFoundError:
        return False
    return True


def _as_name(value: Any) -> str | None:
    """A query or key as a string: strings as they are, integers (not bools) in decimal."""
    if isinstance(value, str):
        return value
    if _is_int(value):
        return str(value)
    return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _prefix_index(names: Mapping[fx.Node, str]) -> dict[str, fx.Node]:
    """Every dotted prefix of every name -> last node (execution order) under that prefix."""
    index: dict[str, fx.Node] = {}
    for node, name in names.items():
        end = name.find(".")
        while end != -1:
            index[name[:end]] = node
            end = name.find(".", end + 1)
        index[name] = node
    return index


def _module_inputs(traced: Traced) -> dict[str, fx.Node]:
    """Module path -> first node its first call received, for ``:input`` queries."""
    inputs: dict[str, fx.Node] = {}
    for node in traced.graph_module.graph.nodes:
        if node.op == "call_module" and node.args and isinstance(node.args[0], fx.Node):
            inputs.setdefault(str(node.target), node.args[0])
    for path, first in traced.module_inputs.items():
        inputs.setdefault(path, first)
    return inputs


def _not_found(
    query: str, traced: Traced, model_name: str, inputs: Mapping[str, fx.Node]
) -> NodeNotFoundError:
    names = list(traced.names.values())
    leaf = _enclosing_leaf(query, traced)
    if leaf is not None:
        return NodeNotFoundError(
            f"node {query!r} is inside leaf module {leaf!r} of {model_name}, which the "
            f"{traced.mode} graph holds as one node; request {leaf!r} itself, or trace through it "
            f"by removing it from tracer_kwargs['leaf_modules']"
        )
    spelling = ""
    if ":" in query:
        # NOTE: only module paths take a suffix, so compare against 'path:input' spellings.
        pool = [p + INPUT_SUFFIX for p in inputs] + [p + MODEL_OUTPUT for p in inputs]
        hint = close_matches(query, pool)
        spelling = f" (suffixes are {INPUT_SUFFIX!r} and {MODEL_OUTPUT!r})"
    else:
        # Names under the same top-level module come first: 'layer1.relu' means layer1's.
        head = query.split(".", 1)[0] + "."
        hint = close_matches(query, [n for n in names if n.startswith(head)])
        # Module paths of the query's depth count too: 'Layer4' -> 'layer4', 'stages.2' ->
        # 'features.2' (whole names alone would offer only nodes deep inside them).
        depth = query.count(".") + 1
        paths = [".".join(n.split(".")[:depth]) for n in names if n.count(".") + 1 >= depth]
        hint += [h for h in close_matches(query, paths + names) if h not in hint][: 3 - len(hint)]
    return NodeNotFoundError(
        f"node {query!r} not found in the {traced.mode} graph of {model_name}{spelling}; "
        f"closest: {format_choices(hint)}. List names with fxtap.get_graph_node_names(model) "
        "or: fxtap nodes MODEL"
    )


def _enclosing_leaf(query: str, traced: Traced) -> str | None:
    leaves = {str(n.target) for n in traced.graph_module.graph.nodes if n.op == "call_module"}
    parts = query.split(".")
    for i in range(len(parts) - 1, 0, -1):
        prefix = ".".join(parts[:i])
        if prefix in leaves:
            return prefix
    return None


def output_name(value: Any, traced: Traced) -> str:
    """The name a resolved request reports in ``outputs``: the node's, or ``":output"``."""
    if isinstance(value, fx.Node):
        return traced.names.get(value, value.name)
    return ":output"
