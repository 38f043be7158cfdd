"""The tracer: one torch.fx trace of a model with a dotted-path name for every node."""

from __future__ import annotations

import copy
import fnmatch
import math
import sys
import types
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import fx, nn

from fxtap import _compat
from fxtap._fx import NAME_KEY, SCOPE_KEY, SOURCE_KEY
from fxtap.errors import InvalidArgumentError, TraceError
from fxtap.trace._code_names import check_code_names
from fxtap.trace._frames import (
    PACKAGE_DIR,
    failing_user_frame,
    plain_function_name,
    source_line,
    user_source,
)
from fxtap.trace._functions import calls_custom_function
from fxtap.trace._options import restore_training, trace_fixes
from fxtap.trace._private import is_private, patched_private

__all__ = [
    "NAME_KEY",
    "PACKAGE_DIR",
    "SCOPE_KEY",
    "SOURCE_KEY",
    "LeafSpec",
    "NodePathTracer",
    "Traced",
    "failing_user_frame",
    "trace_error",
    "trace_graph",
    "trace_with_options",
]


LeafSpec = type | str | Callable[[nn.Module, str], bool]

#: fxtap's own package folder: frames inside it are not the user's code.


@dataclass(frozen=True)
class Traced:
    """One traced graph and the dotted-path name of each of its named nodes.

    Attributes:
        graph_module: the traced ``fx.GraphModule``; its root shares every submodule,
            parameter and buffer with the model (nothing is copied).
        names: fxtap name of every node created through ``create_proxy``, in graph order.
            Tensor constants and the output node have no name (as in torchvision).
        training: the mode the graph was traced in.
        module_inputs: module path -> the node its first call received as first argument.
        leaves: qualified names of the modules that were kept as leaves by fallback.
        wrapped: qualified names of functions autowrapped by fallback.
        module_outputs: module path -> what its first call returned, with nodes for values.
    """

    graph_module: fx.GraphModule
    names: dict[fx.Node, str]
    training: bool
    module_inputs: dict[str, fx.Node] = field(default_factory=dict)
    leaves: tuple[str, ...] = field(default=())
    wrapped: tuple[str, ...] = field(default=())
    module_outputs: dict[str, Any] = field(default_factory=dict)

    @property
    def mode(self) -> str:
        """``'train'`` or ``'eval'``."""
        return "train" if self.training else "eval"


class NodePathTracer(fx.Tracer):
    """A ``torch.fx.Tracer`` that names every node by its dotted module path.

    A leaf-module call is named by its module path (``layer1.0.conv1``); any other op by its
    enclosing module path plus its op name (``layer1.0.add``). Repeats within one scope get
    ``_1``, ``_2``, ... suffixes counted per scope, as torchvision does; real attribute names
    that end in ``_<digits>`` are kept as they are. Naming costs O(1) per node.

    Args:
        leaf_modules: modules not traced through. Each item is a module class, a
            qualified-name glob (``"encoder.layers.*"``) or a predicate
            ``(module, qualname) -> bool``.
        autowrap_modules: modules whose functions are recorded as single ``call_function``
            nodes (torch.fx's argument).
        autowrap_functions: functions recorded as single nodes (torch.fx's argument); unlike
            torch.fx, names starting with ``_`` are recorded too (``_private``).
        param_shapes_constant, proxy_buffer_attributes: torch.fx's (buffers read as proxies).
        record_source: record the user's ``file:line`` for each node in ``node.meta``.

    >>> tracer = NodePathTracer()
    >>> graph = tracer.trace(nn.Sequential(nn.Linear(2, 2), nn.ReLU()))
    >>> list(tracer.node_to_qualname.values())
    ['input', '0', '1']
    """

    def __init__(
        self,
        leaf_modules: Iterable[LeafSpec] = (),
        autowrap_modules: Iterable[types.ModuleType] = (math,),
        autowrap_functions: Iterable[Callable[..., Any]] = (),
        param_shapes_constant: bool = False,
        record_source: bool = False,
        proxy_buffer_attributes: bool = False,
    ) -> None:
        autowrap_functions = tuple(autowrap_functions)
        super().__init__(
            autowrap_modules=tuple(autowrap_modules),  # type: ignore[arg-type]
            autowrap_functions=autowrap_functions,
            param_shapes_constant=param_shapes_constant,
        )
        self.leaf_types: tuple[type, ...] = ()
        self.leaf_patterns: tuple[str, ...] = ()
        self.leaf_predicates: tuple[Callable[[nn.Module, str], bool], ...] = ()
        self._split_leaf_specs(leaf_modules)
        self.record_source = record_source
        self.proxy_buffer_attributes = proxy_buffer_attributes
        self._private = tuple(fn for fn in autowrap_functions if is_private(fn))
        self.node_to_qualname: dict[fx.Node, str] = {}
        self.module_inputs: dict[str, fx.Node] = {}
        self.failed_module: tuple[str, type] | None = None
        self.module_outputs: dict[str, Any] = {}
        self._failure: BaseException | None = None
        self._reserved: set[str] = set()
        self._used: set[str] = set()
        self._pending: list[tuple[fx.Node, str, bool]] = []
        self._concrete: set[str] = set()
        self._next: dict[str, int] = {}
        self._op_names: dict[Any, str] = {}
        self._scopes: dict[tuple[str, Any], tuple[str, Any]] = {}

    def _split_leaf_specs(self, specs: Iterable[LeafSpec]) -> None:
        types_, patterns, predicates = [], [], []
        for spec in specs:
            if isinstance(spec, type):
                types_.append(spec)
            elif isinstance(spec, str):
                patterns.append(spec)
            elif callable(spec):
                predicates.append(spec)
            else:
                raise InvalidArgumentError(
                    f"leaf_modules item {spec!r} is a {type(spec).__name__}; expected a module "
                    "class, a qualified-name pattern such as 'encoder.layers.*', or a predicate "
                    "(module, qualname) -> bool"
                )
        self.leaf_types, self.leaf_patterns = tuple(types_), tuple(patterns)
        self.leaf_predicates = tuple(predicates)

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        """A module is a leaf if listed in ``leaf_modules``, a torch.nn built-in, or one whose
        ``forward`` applies an autograd Function with its own backward (traced through, the
        graph would keep the Function's forward ops and lose its backward)."""
        if self.leaf_types and isinstance(m, self.leaf_types):
            return True
        if module_qualified_name and calls_custom_function(m):
            return True
        if any(fnmatch.fnmatchcase(module_qualified_name, p) for p in self.leaf_patterns):
            return True
        if any(pred(m, module_qualified_name) for pred in self.leaf_predicates):
            return True
        return super().is_leaf_module(m, module_qualified_name)

    def trace(self, root: Any, concrete_args: dict[str, Any] | None = None) -> fx.Graph:
        """Trace ``root``; afterwards ``node_to_qualname`` maps each named node to its name.

        ``root`` itself is never changed: torch.fx stores tensor constants on the traced root
        with ``setattr``, so a module is traced through a shallow copy (``self.root``).
        """
        self.node_to_qualname = {}
        self.module_inputs = {}
        self.module_outputs = {}
        self.failed_module = self._failure = None
        self._pending = []
        self._op_names = {}
        self._scopes = {}
        self._concrete = set(concrete_args or ())
        if isinstance(root, nn.Module):
            root = copy.copy(root)
        with warnings.catch_warnings():
            # NOTE: torch warns on every trace through a module with a full backward hook,
            # because a Proxy is not a Tensor; the hook itself is irrelevant to tracing.
            warnings.filterwarnings(
                "ignore", message="For backward hooks to be called", category=UserWarning
            )
            with patched_private(self._private, root):
                graph = super().trace(root, concrete_args)
        self._assign_names()
        return graph

    def _assign_names(self) -> None:
        """Name every recorded node, in graph order, once the whole graph is known.

        Paths of the leaf modules actually called are reserved, so a generated ``relu_1``
        never takes the name of a submodule really called ``relu_1``; unused submodules
        reserve nothing (torchvision's quantizable models keep a few).
        """
        self._used = set()
        self._next = {}
        self._reserved = {base for _, base, real in self._pending if real}
        for node, base, real in self._pending:
            qualname = self._unique(base, real=real)
            self.node_to_qualname[node] = qualname
            node.meta[NAME_KEY] = qualname
        self._pending = []

    def call_module(
        self,
        m: nn.Module,
        forward: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        if args and isinstance(args[0], fx.Proxy):
            self.module_inputs.setdefault(self.path_of_module(m), args[0].node)
        try:
            out = super().call_module(m, forward, args, kwargs)
        except Exception as exc:
            # The innermost module sees the exception first: remember it, not its parents. A
            # different exception means model code caught the first one and failed again.
            if self._failure is not exc:
                self._failure = exc
                self.failed_module = (self.path_of_module(m), type(m))
            raise
        self.module_outputs.setdefault(self.path_of_module(m), out)
        return out

    def create_proxy(
        self,
        kind: str,
        target: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        name: str | None = None,
        type_expr: Any | None = None,
        proxy_factory_fn: Callable[[fx.Node], fx.Proxy] | None = None,
    ) -> fx.Proxy:
        proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr, proxy_factory_fn)
        node = proxy.node
        scope = self.scope.module_path
        if kind == "call_module":
            base = target
        else:
            op = self._op_name(kind, target, name)
            base = f"{scope}.{op}" if scope else op
        self._pending.append((node, base, kind == "call_module"))
        key = (scope, self.scope.module_type)
        node.meta[SCOPE_KEY] = self._scopes.setdefault(key, key)  # shared: less for gc to scan
        if self.record_source:
            node.meta[SOURCE_KEY] = user_source(sys._getframe(1))
        return proxy

    def _op_name(self, kind: str, target: Any, name: str | None) -> str:
        """The op part of a name: what torch.fx names the node before its global suffix."""
        key = (kind, target, name)
        try:
            return self._op_names[key]
        except KeyError:
            pass
        except TypeError:  # unhashable target
            return _sanitize(_compat.target_to_str(self.graph, target))
        op = _sanitize(name if name is not None else _compat.target_to_str(self.graph, target))
        if kind == "placeholder" and op not in self._concrete:
            # NOTE: torch.fx names the placeholder of a concrete argument ``ARG_1``; it is ARG.
            stem, _, number = op.rpartition("_")
            if stem in self._concrete and number.isdigit():
                op = stem
        self._op_names[key] = op
        return op

    def _unique(self, base: str, *, real: bool = False) -> str:
        """``base`` itself the first time, then ``base_1``, ``base_2``, ... skipping taken names.

        ``real`` marks a module path: it owns its reserved name on its first call.
        """
        n = self._next.get(base)
        if n is None and base not in self._used and (real or base not in self._reserved):
            self._next[base] = 1
            self._used.add(base)
            return base
        n = n or 1
        candidate = f"{base}_{n}"
        while candidate in self._used or candidate in self._reserved:
            n += 1
            candidate = f"{base}_{n}"
        self._next[base] = n + 1
        self._used.add(candidate)
        return candidate


def trace_with_options(
    model: nn.Module,
    *,
    training: bool,
    options: Mapping[str, Any],
    concrete_args: dict[str, Any] | None,
) -> Traced:
    """One trace with options already checked by ``tracer_options``; no fallback."""
    tracer = trace_graph(model, training=training, options=options, concrete_args=concrete_args)
    check_code_names(tracer.graph, type(model).__name__)
    gm = fx.GraphModule(tracer.root, tracer.graph, type(model).__name__)
    outputs = {
        path: fx.node.map_aggregate(out, lambda a: a.node if isinstance(a, fx.Proxy) else a)
        for path, out in tracer.module_outputs.items()
    }
    names, inputs = dict(tracer.node_to_qualname), dict(tracer.module_inputs)
    return Traced(gm, names, training, inputs, module_outputs=outputs)


def trace_graph(
    model: nn.Module,
    *,
    training: bool,
    options: Mapping[str, Any],
    concrete_args: dict[str, Any] | None,
) -> NodePathTracer:
    """``trace_with_options`` without the ``GraphModule`` (a third of the cost); no fallback."""
    tracer = NodePathTracer(**options)
    # NOTE: torch.fx stores tensor constants on the root with setattr; tracing a shallow copy
    # keeps them off the user's model.
    with restore_training(model):
        model.train(training)
        try:
            tracer.trace(model, concrete_args)
        except TraceError:
            raise
        except Exception as exc:
            raise trace_error(model, tracer, exc) from exc
    return tracer


def trace_error(model: nn.Module, tracer: NodePathTracer, exc: BaseException) -> TraceError:
    """Turn a raw torch.fx failure into a ``TraceError`` naming module, source line and fix."""
    path, mtype = tracer.failed_module or ("", type(model))
    frame = failing_user_frame(exc.__traceback__)
    source = code = function = None
    if frame is not None:
        source = f"{frame.f_code.co_filename}:{frame.f_lineno}"
        code = source_line(frame.f_code.co_filename, frame.f_lineno)
        function = plain_function_name(frame)
    where = f"module {path!r} ({mtype.__name__})" if path else f"the root {mtype.__name__}.forward"
    parts = [f"torch.fx could not trace {type(model).__name__}: it failed in {where}"]
    if source:
        parts.append(f" at {source}" + (f" `{code}`" if code else ""))
    reason = f"{type(exc).__name__}: {exc}".strip()
    parts.append(f": {reason}.")
    fixes = trace_fixes(path, mtype.__name__, function, reason)
    parts.append(" Fix: " + "; or ".join(fixes) + ".")
    return TraceError(
        "".join(parts), module_path=path, source=source, reason=reason, function=function
    )


def _sanitize(op: str) -> str:
    """Make ``op`` a Python identifier as torch.fx does (without its numeric suffix rule)."""
    if op.isidentifier():
        return op
    out = "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in op) or "_unnamed"
    return f"_{out}" if out[0].isdigit() else out
