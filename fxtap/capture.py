"""Capture path: serve nodes of a model whose root forward cannot be traced, during a real forward."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from fxtap._fx import clone_structure
from fxtap._query import MODEL_OUTPUT, Request, parse_query, resolve
from fxtap.errors import MistraceError, NodeNotFoundError, TraceError, close_matches, format_choices
from fxtap.prune import clone_tensors, prune
from fxtap.trace import (
    NodePathTracer,
    Traced,
    difference,
    is_root_failure,
    trace_with_fallback,
    tracer_options,
    user_stacklevel,
)

__all__ = ["CaptureExtractor", "Island", "build_capture_extractor", "find_islands"]


@dataclass
class Island:
    """A largest traceable submodule: its trace and, once requests are known, its pruned graph.

    Attributes:
        path: module path of the submodule in the model.
        traced: its full trace; node names are relative to ``path``.
        pruned: the graph returning the requested nodes inside it, by output key.
        checked: whether the full graph was compared with the eager output yet.
    """

    path: str
    traced: Traced
    pruned: fx.GraphModule | None = None
    checked: bool = False


class CaptureExtractor(nn.Module):
    """Runs the whole model and returns a dict of the requested values, captured on the way.

    Built by ``create_feature_extractor`` when the root forward of a model cannot be traced
    (a detection model iterating over its list of images). **Nothing is pruned**: every forward
    runs the whole model, exactly as it would run without fxtap, and its output is available
    under ``":output"``. Values are captured with forward hooks on a structural copy of the
    model (sharing parameters and buffers):

    - a module output (``"roi_heads"``) or input (``"rpn:input"``): the first call of that
      module in each forward;
    - a node inside one of the largest traceable submodules (``islands``), such as
      ``"backbone.body.layer2"``: the submodule's traced graph, pruned to the requested nodes,
      runs on the arguments of the submodule's first call (with the same RNG state, buffers
      restored), and its graph is compared with the eager output on the first forward of each
      mode (``MistraceError`` when they differ).

    Attributes:
        prunes: always ``False``: the whole model runs on every call.
        reason: why the root could not be traced.
        islands: by mode, the traced submodule paths.
        outputs: by mode, output key -> requested node name.
        opaque: module paths kept opaque inside the islands by the automatic fallback.
    """

    prunes = False

    def __init__(
        self,
        model: nn.Module,
        plans: Mapping[str, _Plan],
        *,
        reason: str,
        training: bool,
        opaque: tuple[str, ...],
    ) -> None:
        super().__init__()
        self.model = model
        self.reason = reason
        self.opaque = opaque
        self._plans = dict(plans)
        self.islands = {mode: tuple(p.islands) for mode, p in self._plans.items()}
        self.outputs = {mode: dict(p.outputs) for mode, p in self._plans.items()}
        self._store: dict[str, Any] | None = None
        self._replaying = False
        for mode, plan in self._plans.items():
            for path in plan.taps():
                module = model.get_submodule(path)
                module.register_forward_pre_hook(self._pre_hook(mode, path), with_kwargs=True)
                module.register_forward_hook(self._hook(mode, path, plan), with_kwargs=True)
        self.train(training)

    def forward(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        mode = "train" if self.training else "eval"
        plan = self._plans[mode]
        self._store = {}
        try:
            output = self.model(*args, **kwargs)
            store = self._store
        finally:
            self._store = None
        result: dict[str, Any] = {}
        for key, name in plan.outputs.items():
            if name == MODEL_OUTPUT:
                result[key] = output
            elif key in store:
                result[key] = store[key]
            else:
                raise RuntimeError(
                    f"node {name!r} (output key {key!r}) was not reached: its module was not "
                    f"called during this {mode}-mode forward of {self.model._get_name()}"
                )
        return result

    def node_names(self, mode: str) -> list[str]:
        """Names servable in ``mode``: nodes of the traced submodules, then every module path.

        Module outputs are reachable only for modules the forward really calls.
        """
        names = [
            f"{path}.{name}"
            for path, island in self._plans[mode].islands.items()
            for name in island.traced.names.values()
        ]
        seen = set(names)
        return names + [p for p, _ in self.model.named_modules() if p and p not in seen]

    def _pre_hook(self, mode: str, path: str) -> Any:
        def hook(_m: nn.Module, args: Any, kwargs: Any) -> None:
            if self._store is not None and not self._replaying and self._mode() == mode:
                self._store.setdefault(f"\0rng:{path}", torch.get_rng_state())

        return hook

    def _hook(self, mode: str, path: str, plan: _Plan) -> Any:
        def hook(module: nn.Module, args: Any, kwargs: Any, output: Any) -> Any:
            store = self._store
            if store is None or self._replaying or self._mode() != mode:
                return
            seen = f"\0done:{path}"
            if seen in store:
                return
            store[seen] = True
            for key in plan.module_inputs.get(path, ()):
                # NOTE: cloned because later model code may write into the input in place; the
                # input itself cannot be swapped, other code of the model may hold it.
                store[key] = _clone(args[0] if args else next(iter(kwargs.values()), None))
            island = plan.island_at.get(path)
            if island is not None:
                store.update(self._replay(island, module, args, kwargs, output, store, path))
            keys = plan.module_outputs.get(path, ())
            if not keys:
                return None
            if _aliases(output, (args, kwargs)):
                # the output shares memory with an input (an in-place module, Identity): a
                # later write through that input would reach it, so a copy is kept instead
                for key in keys:
                    store[key] = _clone(output)
                return None
            # NOTE: later model code may write into the output in place (``out += identity``);
            # the copy goes on as the module's output, so the tapped value stays as the call
            # returned it and on the autograd path to everything computed after it.
            for key in keys:
                store[key] = output
            return _clone(output)

        return hook

    def _replay(
        self,
        island: Island,
        module: nn.Module,
        args: Any,
        kwargs: Any,
        output: Any,
        store: dict[str, Any],
        path: str,
    ) -> dict[str, Any]:
        """Run the island's graph on the arguments its module just ran on, leaving no trace."""
        after = torch.get_rng_state()
        buffers = [(b, b.detach().clone()) for b in module.buffers()] if module.training else []
        self._replaying = True
        try:
            if not island.checked:
                torch.set_rng_state(store.get(f"\0rng:{path}", after))
                with torch.no_grad():
                    full = island.traced.graph_module(*args, **kwargs)
                diff = difference(_detach(full), _detach(output))
                if diff is not None:
                    raise MistraceError(
                        f"the traced graph of submodule {path!r} differs from its eager run "
                        f"({diff}) on the arguments it received; keep it opaque with "
                        f"tracer_kwargs={{'leaf_modules': [{path!r}]}} and request its output",
                        module_path=path,
                        reason=diff,
                    )
                island.checked = True
            if island.pruned is None:
                return {}
            torch.set_rng_state(store.get(f"\0rng:{path}", after))
            return dict(island.pruned(*args, **kwargs))
        finally:
            self._replaying = False
            torch.set_rng_state(after)
            with torch.no_grad():
                for b, saved in buffers:
                    b.copy_(saved)

    def _mode(self) -> str:
        return "train" if self.training else "eval"


@dataclass
class _Plan:
    """How one mode serves its requests."""

    islands: dict[str, Island]
    outputs: dict[str, str] = field(default_factory=dict)
    module_outputs: dict[str, list[str]] = field(default_factory=dict)
    module_inputs: dict[str, list[str]] = field(default_factory=dict)
    island_at: dict[str, Island] = field(default_factory=dict)

    def taps(self) -> list[str]:
        return list(dict.fromkeys([*self.module_outputs, *self.module_inputs, *self.island_at]))


def build_capture_extractor(
    model: nn.Module,
    requests: Mapping[str, list[Request]],
    *,
    error: TraceError,
    tracer_kwargs: Mapping[str, Any] | None = None,
) -> CaptureExtractor:
    """Build a ``CaptureExtractor`` for a model whose root forward raised ``error``.

    Raises:
        NodeNotFoundError: a request is neither a module nor a node inside a traceable
            submodule; the message says why and what can be requested instead.
    """

    clone = clone_structure(model, {})
    plans: dict[str, _Plan] = {}
    opaque: dict[str, None] = {}
    name = type(model).__name__
    for mode in ("train", "eval"):
        islands = find_islands(clone, training=mode == "train", tracer_kwargs=tracer_kwargs)
        for island in islands.values():
            for leaf in island.traced.leaves:
                opaque[f"{island.path}.{leaf}"] = None
        plans[mode] = _plan(clone, requests[mode], islands, error, name, mode)
    ex = CaptureExtractor(
        clone, plans, reason=error.reason, training=model.training, opaque=tuple(opaque)
    )
    islands_text = format_choices(ex.islands["eval"]) if ex.islands["eval"] else "none"
    kept = f"; inside them, kept opaque: {format_choices(opaque)}" if opaque else ""
    warnings.warn(
        f"torch.fx cannot trace the root {name}.forward ({_first_line(error.reason)}); fxtap "
        f"serves the requested values by capturing them during a normal forward of the whole "
        f"model (CaptureExtractor: nothing is pruned, the whole model runs on every call). "
        f"Traced submodules: {islands_text}{kept}. Pass auto_leaf=False to get the TraceError.",
        UserWarning,
        stacklevel=user_stacklevel(),
    )
    return ex


def find_islands(
    model: nn.Module, *, training: bool, tracer_kwargs: Mapping[str, Any] | None = None
) -> dict[str, Island]:
    """The largest submodules that trace (with the automatic fallback), outermost first.

    Walks down from the root's children: a module that traces is an island and its subtree
    is not visited; one whose own forward fails is replaced by its children. Leaf modules
    (``nn.Conv2d``...) need no graph: their outputs are captured by hooks.
    """
    options = tracer_options(tracer_kwargs)
    judge = NodePathTracer(leaf_modules=options["leaf_modules"])
    islands: dict[str, Island] = {}
    todo = [(n, m) for n, m in model.named_children()]
    while todo:
        path, module = todo.pop(0)
        if judge.is_leaf_module(module, path):
            continue
        try:
            traced = trace_with_fallback(
                module,
                training=training,
                options=options,
                concrete_args=None,
                auto_leaf=True,
                warn=False,
            )
        except TraceError as exc:
            if not is_root_failure(exc):
                raise
            todo[0:0] = [(f"{path}.{n}", m) for n, m in module.named_children()]
            continue
        islands[path] = Island(path, traced)
    return islands


def _plan(
    model: nn.Module,
    requests: list[Request],
    islands: Mapping[str, Island],
    error: TraceError,
    model_name: str,
    mode: str,
) -> _Plan:
    plan = _Plan(dict(islands))
    paths = {p for p, _ in model.named_modules() if p}
    by_island: dict[str, dict[str, Any]] = {}
    for req in requests:
        query = req.query
        plan.outputs[req.key] = query
        parsed = parse_query(query)
        if parsed.port == "model":
            continue
        base = parsed.path if parsed.port == "node" else query
        island = _island_of(base, islands)
        if island is not None:
            local = Request(base[len(island.path) + 1 :], req.key)
            try:
                found = resolve([local], island.traced, model_name=f"{model_name}.{island.path}")
            except NodeNotFoundError:
                if base not in paths and parsed.port != "input":
                    raise
            else:
                by_island.setdefault(island.path, {}).update(found)
                continue
        if parsed.port == "node" and parsed.path in paths:
            plan.module_outputs.setdefault(parsed.path, []).append(req.key)
        elif parsed.port == "input" and parsed.path in paths:
            plan.module_inputs.setdefault(parsed.path, []).append(req.key)
        else:
            raise _unservable(query, model_name, mode, error, islands, paths)
    for path, selected in by_island.items():
        island = islands[path]
        island.pruned = prune(
            island.traced, selected, class_name=type(island.traced.graph_module).__name__
        )
        plan.island_at[path] = island
    return plan


def _island_of(query: str, islands: Mapping[str, Island]) -> Island | None:
    parts = query.split(".")
    for i in range(len(parts) - 1, 0, -1):
        island = islands.get(".".join(parts[:i]))
        if island is not None:
            return island
    return None


def _unservable(
    query: str,
    model_name: str,
    mode: str,
    error: TraceError,
    islands: Mapping[str, Island],
    paths: set[str],
) -> NodeNotFoundError:
    pool = [f"{i.path}.{n}" for i in islands.values() for n in i.traced.names.values()]
    hint = close_matches(query, [*pool, *sorted(paths)])
    return NodeNotFoundError(
        f"node {query!r} cannot be served in {mode} mode: torch.fx cannot trace the root "
        f"{model_name}.forward ({_first_line(error.reason)}), so fxtap captures values during a "
        "normal forward, which reaches only module outputs ('NAME' or 'NAME:input' for any "
        f"module) and nodes inside the traceable submodules {format_choices(islands)}. "
        f"Closest: {format_choices(hint)}. To reach code of the root itself, make it traceable "
        "(concrete_args=, or move the failing code into a submodule)."
    )


def _first_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= 120 else line[:117] + "..."


def _detach(value: Any) -> Any:
    return fx.node.map_aggregate(value, lambda v: v.detach() if isinstance(v, torch.Tensor) else v)


def _aliases(output: Any, inputs: Any) -> bool:
    """True when a tensor of ``output`` shares memory with a tensor of ``inputs``."""
    seen = {
        t.untyped_storage().data_ptr()
        for t in torch.utils._pytree.tree_leaves(inputs)
        if isinstance(t, torch.Tensor) and t.layout == torch.strided
    }
    return any(
        isinstance(t, torch.Tensor)
        and t.layout == torch.strided
        and t.untyped_storage().data_ptr() in seen
        for t in torch.utils._pytree.tree_leaves(output)
    )


def _clone(value: Any) -> Any:
    return clone_tensors(value)
