"""The export path: trace with ``torch.export`` and turn the program into a named ``Traced``.

For models whose root forward torch.fx cannot trace (Hugging Face transformers, detection
models), ``torch.export.export(model, args, kwargs, strict=False)`` records ATen ops. The
exported program's parameter and buffer placeholders become ``get_attr`` nodes of the model's
own tensors (nothing is copied), its inputs become one placeholder per forward argument, and
every node is named by NodePathTracer's rules (``fxtap.trace._export_names``).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Mapping
from typing import Any

import torch
from torch import fx, nn
from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind, OutputKind

from fxtap._compat import pytree
from fxtap._fx import BUFFER_WRITE_KEY, aten_alias_arg, inplace_arg
from fxtap.errors import InvalidArgumentError, TraceError
from fxtap.trace._code_names import check_code_names
from fxtap.trace._export_check import (
    check_export,
    check_higher_order_ops,
    exact_on_example,
)
from fxtap.trace._export_inputs import UserInputs, check_batch
from fxtap.trace._export_marks import Marks, take_marks
from fxtap.trace._export_modes import (
    FlagReads,
    SharedExport,
    remember_export,
    shared_export,
)
from fxtap.trace._export_names import ModuleCalls, assign_names
from fxtap.trace._export_passthrough import settle_aliases
from fxtap.trace._export_probe import check_at_second_shape
from fxtap.trace._export_regions import copy_node
from fxtap.trace._export_run import run_export
from fxtap.trace._export_shapes import dynamic_shapes_for, given_shapes
from fxtap.trace._functions import check_custom_functions
from fxtap.trace._options import tracer_options
from fxtap.trace._tracer import NodePathTracer, Traced

try:
    import numpy as np
except ImportError:  # pragma: no cover - torch runs without numpy
    np = None  # type: ignore[assignment]

__all__ = ["check_batch", "export_trace", "rebuild_output", "split_example_inputs"]


def export_trace(
    model: nn.Module,
    *,
    training: bool,
    example_inputs: Any,
    tracer_kwargs: Mapping[str, Any] | None = None,
    dynamic_shapes: Any = None,
) -> Traced:
    """Trace ``model`` in one mode with ``torch.export``; the model is left as it was.

    Args:
        model: the model to trace.
        training: trace in train mode (``True``) or eval mode (``False``).
        example_inputs: a tensor, a tuple of positional inputs, or a dict of keyword inputs.
            Non-tensor keyword inputs are fixed at build time. ``use_cache=False`` is added
            when ``forward`` takes ``use_cache``, by name or through ``**kwargs`` of a model
            whose config caches (caches are not pytrees).
        tracer_kwargs: ``NodePathTracer`` options; ``leaf_modules`` decides which module
            calls are named by their module path.
        dynamic_shapes: torch.export's ``dynamic_shapes``, keyed as ``example_inputs`` are
            (a dict for keyword inputs, a tuple for positional ones); by default every
            dimension of every tensor input is ``Dim.AUTO`` (``dynamic_shapes_for``).

    Returns:
        A ``Traced`` whose graph module holds the model's own parameters and buffers, with
        one placeholder per forward argument; every dimension is dynamic where the model
        allows it, and the inputs' shapes are checked first (``check_shapes``).

    Raises:
        InvalidArgumentError: ``example_inputs`` is missing or of the wrong type.
        TraceError: ``torch.export`` could not trace the model, its program holds a
            higher-order op, or the graph differs from the model on ``example_inputs`` at
            either of two seeds (``check_export``).
    """
    options = tracer_options(tracer_kwargs)
    shared = shared_export(model)
    if shared is not None:
        # NOTE: the other mode's graph, checked in that mode, serves this one too: the
        # model's code ran the same while exporting in either mode (_export_modes); every
        # stage copies a trace before it changes it, so the graph module is shared
        return dataclasses.replace(shared.traced, training=training)
    args, kwargs = split_example_inputs(model, example_inputs)
    given = None if dynamic_shapes is None else given_shapes(model, args, kwargs, dynamic_shapes)
    build = functools.partial(_build, model, args, kwargs, given, training, options)
    traced, flags, asked = build(eager=False)
    if asked and not exact_on_example(model, traced, args, kwargs):
        # NOTE: the model asked torch.compiler.is_exporting() and its export branch rounds
        # otherwise than its eager self: the eager branch, when it exports and is exact
        try:
            other, other_flags, _ = build(eager=True)
        except TraceError:
            other = None
        if other is not None and exact_on_example(model, other, args, kwargs):
            traced, flags = other, other_flags
    if flags.mode_independent:
        remember_export(model, SharedExport(traced))
    return traced


def _build(
    model: nn.Module,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    given: Any,
    training: bool,
    options: Mapping[str, Any],
    *,
    eager: bool,
) -> tuple[Traced, FlagReads, list[str]]:
    """One checked graph: exported (``eager``: the model's eager branches), then checked at a
    second shape and, where a dimension is wrong there, exported again with it static."""
    leaf = NodePathTracer(**options).is_leaf_module
    ep, flags, marks, asked, narrowed = run_export(
        model, args, kwargs, training=training, dynamic_shapes=given, is_leaf=leaf, eager=eager
    )
    traced = _unchecked(model, ep, marks, args, kwargs, options, training)
    # NOTE: with Dim.AUTO, a branch export took without a guard shows at a second shape; a
    # graph right there is checked (the example shape is only checked when it is not)
    fixed = None if given is not None else check_at_second_shape(model, traced, ep, args, kwargs)
    if fixed is not None:
        check_export(model, traced, args, kwargs)
    if fixed:
        static = dynamic_shapes_for(model, args, kwargs, static=fixed, batch_only=narrowed)
        ep, flags, marks, more, _ = run_export(
            model, args, kwargs, training=training, dynamic_shapes=static, is_leaf=leaf,
            eager=eager,
        )  # fmt: skip
        asked += more
        traced = _unchecked(model, ep, marks, args, kwargs, options, training)
        check_export(model, traced, args, kwargs)
    return traced, flags, asked


def _unchecked(
    model: nn.Module,
    ep: ExportedProgram,
    marks: Marks,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    options: Mapping[str, Any],
    training: bool,
) -> Traced:
    """The program as a ``Traced``; refused when it holds a higher-order op or the ops of an
    autograd Function with a backward of its own."""
    check_higher_order_ops(ep, model, "train" if training else "eval")
    check_custom_functions(ep, model, "train" if training else "eval")
    return _to_traced(model, ep, marks, args, kwargs, options=options, training=training)


def split_example_inputs(model: nn.Module, example_inputs: Any) -> tuple[tuple[Any, ...], dict]:
    """``(args, kwargs)`` for ``torch.export`` from the ``example_inputs`` a user gave."""
    if example_inputs is None:
        raise InvalidArgumentError(
            f"the export path needs example inputs to trace {type(model).__name__}, and "
            "example_inputs is None; pass example_inputs=(tensor, ...) or a dict of keyword "
            "inputs such as example_inputs={'input_ids': ids} (on the command line: --input)"
        )
    if isinstance(example_inputs, torch.Tensor):
        args: tuple[Any, ...] = (example_inputs,)
        kwargs: dict[str, Any] = {}
    elif isinstance(example_inputs, Mapping):
        args, kwargs = (), dict(example_inputs)
    elif isinstance(example_inputs, (tuple, list)):
        args, kwargs = tuple(example_inputs), {}
    else:
        raise InvalidArgumentError(
            f"example_inputs {example_inputs!r:.80} is a {type(example_inputs).__name__}; "
            "expected a tensor, a tuple of forward() inputs or a dict of keyword inputs"
        )
    if _takes_use_cache(model) and "use_cache" not in kwargs:
        # NOTE: transformers' caches (DynamicCache) are not pytrees, so export cannot return
        # them; the extractor never needs them.
        kwargs["use_cache"] = False
    return args, kwargs


def rebuild_output(spec: str, leaves: list[Any]) -> Any:
    """The model's output structure (a ``ModelOutput``, a dataclass...) from its leaves."""
    proxy = next((v for v in leaves if isinstance(v, fx.Proxy)), None)
    if proxy is not None:  # re-traced when unpickled: stay one node
        return proxy.tracer.create_proxy("call_function", rebuild_output, (spec, leaves), {})
    return pytree.tree_unflatten(leaves, _load_spec(spec))


@functools.lru_cache(maxsize=64)
def _load_spec(spec: str) -> pytree.TreeSpec:
    return pytree.treespec_loads(spec)


def _takes_use_cache(model: nn.Module) -> bool:
    """Whether ``forward`` takes ``use_cache``: by name, or through ``**kwargs`` of a model
    whose config (or text config) turns the cache on (transformers' newer multimodal models)."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtin forwards
        return False
    if "use_cache" in params:
        return True
    config = getattr(model, "config", None)
    configs = (config, getattr(config, "text_config", None))
    return any(p.kind is p.VAR_KEYWORD for p in params.values()) and any(
        getattr(c, "use_cache", None) is True for c in configs
    )


def _to_traced(
    model: nn.Module,
    ep: ExportedProgram,
    marks: Marks,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    options: Mapping[str, Any],
    training: bool,
) -> Traced:
    """Rebuild the exported program as a ``Traced`` over the model's own tensors."""
    sig = ep.graph_signature
    specs = {spec.arg.name: spec for spec in sig.input_specs if hasattr(spec.arg, "name")}
    params = dict(model.named_parameters(remove_duplicate=False))
    buffers = dict(model.named_buffers(remove_duplicate=False))
    graph = fx.Graph()
    attrs: dict[str, Any] = {}
    env: dict[fx.Node, Any] = {}
    user = UserInputs(graph, model, args, kwargs, ep)
    skip: set[fx.Node] = set(user.extra)
    for node in ep.graph.nodes:
        if node.op == "placeholder":
            spec = specs[node.name]
            if spec.kind is InputKind.USER_INPUT:
                env[node] = user.next()
                continue
            target = _attr_target(spec, params, buffers, ep, attrs)
            env[node] = graph.get_attr(target)
        elif node.op == "output":
            _write_output(graph, node, env, ep, model)
        else:
            env[node] = copy_node(graph, node, env, ep.graph_module)
    skip |= user.checks
    marked = take_marks(graph, marks, rebuild_output)
    _mark_buffer_writes(graph, buffers)
    modules = dict(model.named_modules(remove_duplicate=False))
    tracer = NodePathTracer(**options)
    calls = ModuleCalls(graph, modules, tracer.is_leaf_module)
    erased = settle_aliases(graph, marks.passed, modules, calls.leaf_call)
    calls.forget(erased)
    marked = {path: erased.get(node, node) for path, node in marked.items()}
    graph.lint()
    check_code_names(graph, type(model).__name__)
    gm = fx.GraphModule(attrs, graph, type(model).__name__)
    names = assign_names(gm.graph, calls, modules, tracer, skip=skip)
    return Traced(
        gm,
        names,
        training,
        {**calls.first_inputs(), **marked},
        module_outputs=dict(calls.first_outputs()),
    )


def _mark_buffer_writes(graph: fx.Graph, buffers: Mapping[str, torch.Tensor]) -> None:
    """Mark each op that writes into a buffer (``BUFFER_WRITE_KEY``: the owning module's path).

    torch.export records a module's buffer updates as in-place ops (``add_`` on BatchNorm's
    ``num_batches_tracked``) or as buffer mutations written back by ``_write_output``; nothing
    reads the result, so the pruner would drop them. Marked, they run whenever their module
    does, as on the fx path, where a BatchNorm call updates all its buffers.
    """
    for node in graph.nodes:
        written = inplace_arg(node, None) if node.op == "call_function" else None
        while written is not None and written.op != "get_attr":
            written = aten_alias_arg(written)  # a write into a view of the buffer
        if written is not None and str(written.target) in buffers:
            node.meta[BUFFER_WRITE_KEY] = str(written.target).rpartition(".")[0]


def _attr_target(
    spec: Any,
    params: Mapping[str, nn.Parameter],
    buffers: Mapping[str, torch.Tensor],
    ep: ExportedProgram,
    attrs: dict[str, Any],
) -> str:
    target = str(spec.target)
    if spec.kind is InputKind.PARAMETER:
        attrs[target] = params[target]
    elif spec.kind is InputKind.BUFFER:
        attrs[target] = buffers[target]
    elif spec.kind is InputKind.CONSTANT_TENSOR:
        # NOTE: the extractor stores ``_tensor_constant*`` attributes as non-persistent buffers
        target = f"_tensor_constant{sum(k.startswith('_tensor_constant') for k in attrs)}"
        attrs[target] = ep.constants[str(spec.target)]
    else:
        raise TraceError(
            f"torch.export gave an input of kind {spec.kind.name} ({spec.target!r}), which the "
            "export path does not support; use tracer='fx' to take the capture path",
            reason=spec.kind.name,
        )
    return target


def _write_output(
    graph: fx.Graph, node: fx.Node, env: Mapping[fx.Node, Any], ep: ExportedProgram, model: Any
) -> None:
    """Write mutated buffers back in place and return the user outputs in their structure."""
    values = list(node.args[0])  # type: ignore[arg-type]
    leaves = []
    for spec, value in zip(ep.graph_signature.output_specs, values):
        mapped = env[value] if isinstance(value, fx.Node) else value
        if spec.kind is OutputKind.USER_OUTPUT:
            leaves.append(mapped)
        elif spec.kind is OutputKind.BUFFER_MUTATION:
            buf = graph.get_attr(str(spec.target))
            graph.call_function(torch.ops.aten.copy_.default, (buf, mapped))
        elif spec.kind is OutputKind.USER_INPUT_MUTATION:
            raise TraceError(
                f"{type(model).__name__} writes into its input {spec.target!r} in place; the "
                "export path cannot tap it. Use tracer='fx'",
                reason="input mutation",
            )
    out_spec = ep.call_spec.out_spec
    assert out_spec is not None
    if _builtin_only(out_spec):
        graph.output(pytree.tree_unflatten(leaves, out_spec))
        return
    try:
        text = pytree.treespec_dumps(out_spec)
    except Exception:
        graph.output(tuple(leaves))
        return
    graph.output(graph.call_function(rebuild_output, (text, leaves)))


def _builtin_only(spec: pytree.TreeSpec) -> bool:
    if spec.type not in (None, tuple, list, dict) and not spec.is_leaf():
        return False
    return all(_builtin_only(child) for child in spec.children())
