"""List node names (torchvision's API), match nodes across modes, build a node table."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

from fxtap._fx import module_type_name, owned_params, target_text
from fxtap._shapes import VALUE_KEY, describe_value, propagate_shapes
from fxtap.capture._islands import capture_rows
from fxtap.trace import NAME_KEY, SCOPE_KEY, SOURCE_KEY, Traced, TraceOptions, check_flags, route

__all__ = [
    "VALUE_KEY",
    "ModeDiff",
    "NodeInfo",
    "describe_value",
    "diff_modes",
    "get_graph_node_names",
    "node_key",
    "node_table",
    "propagate_shapes",
]


@dataclass(frozen=True)
class NodeInfo:
    """One row of the node table.

    Attributes:
        name: fxtap's dotted-path name (what ``return_nodes`` takes).
        op: torch.fx op (``placeholder``, ``call_module``, ``call_function``, ...).
        target: the op's target as text (module path, function or method name).
        module_type: class of the called module for ``call_module``, else of the enclosing one.
        num_params: parameters owned by the node (a leaf module's, or a ``get_attr``'s tensor).
        source: ``file:line`` of the user code that created the node, when recorded.
        shape: output shape when example inputs were given, else ``None``.
        dtype: output dtype as text when example inputs were given, else ``None``.
        opaque: the module was made a leaf by the automatic fallback.
        value: what the node returned when it is not one tensor (``'None'``, ``'int 224'``,
            ``'(1×197×768 float32, None)'``), when example inputs were given; else ``None``.
    """

    name: str
    op: str
    target: str
    module_type: str
    num_params: int
    source: str | None = None
    shape: tuple[int, ...] | None = None
    dtype: str | None = None
    opaque: bool = False
    value: str | None = None


@dataclass(frozen=True)
class ModeDiff:
    """Nodes present in one mode only, matched by module path, op, target and occurrence."""

    train_only: tuple[str, ...]
    eval_only: tuple[str, ...]

    def __bool__(self) -> bool:
        return bool(self.train_only or self.eval_only)

    def message(self) -> str:
        """A sentence saying which nodes exist in one mode only."""
        parts = []
        for label, names in (("train", self.train_only), ("eval", self.eval_only)):
            if names:
                shown = ", ".join(repr(n) for n in names[:8])
                more = f" and {len(names) - 8} more" if len(names) > 8 else ""
                parts.append(f"{len(names)} node(s) only in {label} mode: {shown}{more}")
        return "; ".join(parts)


def get_graph_node_names(
    model: nn.Module,
    tracer_kwargs: Mapping[str, Any] | None = None,
    suppress_diff_warning: bool = False,
    concrete_args: Mapping[str, Any] | None = None,
    *,
    auto_leaf: bool = True,
    tracer: str = "auto",
    example_inputs: Any = None,
) -> tuple[list[str], list[str]]:
    """Return the node names of ``model`` traced in train mode and in eval mode.

    Same signature and names as ``torchvision.models.feature_extraction.get_graph_node_names``,
    except that real attribute names ending in ``_<digits>`` are kept (see docs/node-names.md).

    Args:
        model: the model to trace; its training flags are restored.
        tracer_kwargs: ``NodePathTracer`` options (``leaf_modules``, ``autowrap_functions``, ...).
        suppress_diff_warning: do not warn when the two modes give different nodes.
        concrete_args: torch.fx's ``concrete_args``.
        auto_leaf: keep untraceable submodules and functions opaque, with a warning, instead
            of raising ``TraceError`` (docs/tracing.md).
        tracer: as in ``create_feature_extractor``: ``"auto"`` (torch.fx; torch.export when
            torch.fx cannot trace the root and ``example_inputs`` are given or implied by the
            model's config; else the capture path's names), ``"fx"`` or ``"export"``. The
            names are those the extractor built the same way takes (``fxtap.trace.route``).
        example_inputs: the inputs torch.export traces with (a tensor, a tuple, or a dict of
            keyword inputs); unused by torch.fx.

    Returns:
        ``(train_names, eval_names)`` in execution order.

    Raises:
        TraceError: the model cannot be traced.

    >>> train, eval_ = get_graph_node_names(nn.Sequential(nn.Linear(2, 2), nn.Dropout()))
    >>> train
    ['input', '0', '1']
    """
    options = TraceOptions(
        tracer, tracer_kwargs, concrete_args, auto_leaf, example_inputs, check=False
    )
    chosen = route(model, options, names_only=True)
    if chosen.error is not None:
        # NOTE: the capture path serves the traceable submodules' nodes and the other modules
        names = [[r.name for r in _capture_table(model, t, tracer_kwargs)] for t in (True, False)]
        return names[0], names[1]
    train, evaluated = chosen.names["train"], chosen.names["eval"]
    train_names = list(train.values())
    eval_names = list(evaluated.values())
    if not suppress_diff_warning and train_names != eval_names:
        diff = _diff_names(train, evaluated)
        detail = diff.message() if diff else "the same nodes appear in a different order"
        warnings.warn(
            f"{type(model).__name__} gives different nodes in train and eval mode: {detail}. "
            "Pass train_return_nodes and eval_return_nodes separately to create_feature_extractor "
            "(or suppress_diff_warning=True).",
            UserWarning,
            stacklevel=2,
        )
    return train_names, eval_names


def node_key(node: fx.Node, name: str) -> tuple[str, str, str]:
    """``(module path, op, target)`` of a node, independent of torch.fx's global numbering."""
    scope = node.meta.get(SCOPE_KEY, ("", None))[0]
    return (scope, node.op, target_text(node))


def diff_modes(train: Traced, evaluated: Traced) -> ModeDiff:
    """Match two traces by module path, op, target and occurrence within the module.

    One extra op in train mode renumbers every later torch.fx node name; matching by this key
    does not, so only the really extra nodes are reported.
    """
    return _diff_names(train.names, evaluated.names)


def _diff_names(train: Mapping[fx.Node, str], evaluated: Mapping[fx.Node, str]) -> ModeDiff:
    train_keys = _occurrence_keys(train)
    eval_keys = _occurrence_keys(evaluated)
    return ModeDiff(
        train_only=tuple(n for k, n in train_keys.items() if k not in eval_keys),
        eval_only=tuple(n for k, n in eval_keys.items() if k not in train_keys),
    )


def node_table(
    model: nn.Module,
    *,
    training: bool = False,
    example_inputs: Sequence[torch.Tensor] | Mapping[str, Any] | None = None,
    tracer_kwargs: Mapping[str, Any] | None = None,
    concrete_args: Mapping[str, Any] | None = None,
    traced: Traced | None = None,
    tracer: str = "auto",
    auto_leaf: bool = True,
) -> list[NodeInfo]:
    """Describe every named node of ``model``: name, op, target, module type, size, source.

    Args:
        model: the model to trace (left unchanged).
        training: describe the train-mode graph instead of the eval-mode one.
        example_inputs: when given, output shape and dtype of each node are filled in
            (``torch.fx.passes.shape_prop``, on fake tensors where possible). They are also
            what torch.export traces with (a dict of keyword inputs is allowed there).
        tracer_kwargs: ``NodePathTracer`` options.
        concrete_args: torch.fx's ``concrete_args``.
        traced: an existing trace to describe instead of tracing again.
        tracer: ``"auto"`` (torch.fx; torch.export when torch.fx cannot trace the root and
            ``example_inputs`` are given or implied; else the capture path's modules), ``"fx"``
            or ``"export"``, as in ``create_feature_extractor`` (``fxtap.trace.route``).
        auto_leaf: keep untraceable submodules and functions opaque, with a warning, and list
            the capture path's modules when the root forward cannot be traced, as
            ``create_feature_extractor`` does; ``False`` raises ``TraceError`` instead.

    Returns:
        One ``NodeInfo`` per named node, in execution order.

    Raises:
        InvalidArgumentError: ``training`` is not a bool, or a bad model or tracer option.
        InputShapeError: ``example_inputs`` do not fit the model.
    """
    check_flags(training=training)
    if traced is None:
        options = TraceOptions(
            tracer, tracer_kwargs, concrete_args, auto_leaf, example_inputs, check=False
        )
        mode = "train" if training else "eval"
        chosen = route(model, options.recording_source(), modes=(mode,))
        if chosen.error is not None:
            return _capture_table(model, training, tracer_kwargs)
        traced = chosen.traces[mode]
    gm = traced.graph_module
    if example_inputs is not None:
        propagate_shapes(
            gm, example_inputs, model_name=type(model).__name__, training=traced.training
        )
    opaque = set(traced.leaves)
    rows = []
    for node, name in traced.names.items():
        meta: Any = node.meta.get("tensor_meta")
        shape = _concrete(meta.shape) if hasattr(meta, "shape") else None
        dtype = str(meta.dtype).removeprefix("torch.") if hasattr(meta, "dtype") else None
        rows.append(
            NodeInfo(
                name=name,
                op=node.op,
                target=target_text(node),
                module_type=module_type_name(gm, node),
                num_params=_params(gm, node, traced.names),
                source=node.meta.get(SOURCE_KEY),
                shape=shape,
                dtype=dtype,
                opaque=node.op == "call_module" and node.target in opaque,
                value=node.meta.get(VALUE_KEY) if shape is None else None,
            )
        )
    return rows


def graph_rows(extractor: Any, *, training: bool, example_inputs: Any = None) -> list[NodeInfo]:
    """A pruning extractor's node table: its own ``mode`` graph, not traced again."""
    extractor.train(training)
    graph = extractor.graph_for("train" if training else "eval")
    # NOTE: a node without fxtap's name (added by a graph pass) shows torch.fx's name.
    names = {n: n.meta.get(NAME_KEY, n.name) for n in graph.nodes if n.op != "output"}
    traced = Traced(extractor, names, training)
    return node_table(extractor, training=training, example_inputs=example_inputs, traced=traced)


def _concrete(shape: Sequence[Any]) -> tuple[int, ...] | None:
    """A shape of plain ints, or ``None`` for a symbolic one (export's dynamic batch)."""
    if not all(isinstance(d, int) for d in shape):
        return None
    return tuple(shape)


def _params(gm: nn.Module, node: fx.Node, names: Mapping[fx.Node, str]) -> int:
    """A node's own parameters, and those of unnamed ``get_attr`` inputs (export's leaf ops)."""
    own = owned_params(gm, node)
    if node.op != "call_function":
        return own
    return own + sum(
        owned_params(gm, arg)
        for arg in dict.fromkeys(node.all_input_nodes)
        if arg.op == "get_attr" and arg not in names
    )


def _capture_table(
    model: nn.Module, training: bool, tracer_kwargs: Mapping[str, Any] | None
) -> list[NodeInfo]:
    """Node table of an untraceable root: island nodes under full paths, other modules (no shapes)."""
    return capture_rows(
        model,
        training=training,
        tracer_kwargs=tracer_kwargs,
        module_row=lambda path, m: NodeInfo(
            path, "call_module", path, type(m).__name__, sum(p.numel() for p in m.parameters(False))
        ),
        island_rows=lambda island: [
            dataclasses.replace(row, name=f"{island.path}.{row.name}")
            for row in node_table(island.traced.graph_module, traced=island.traced)
            if row.op != "placeholder"
        ],
    )


def _occurrence_keys(names: Mapping[fx.Node, str]) -> dict[tuple[Any, ...], str]:
    seen: dict[tuple[str, str, str], int] = {}
    keys: dict[tuple[Any, ...], str] = {}
    for node, name in names.items():
        key = node_key(node, name)
        i = seen.get(key, 0)
        seen[key] = i + 1
        keys[(*key, i)] = name
    return keys
