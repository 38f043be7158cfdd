"""Capture path: serve nodes of a model whose root forward cannot be traced, during a real forward."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from fxtap._fx import clone_structure
from fxtap._parametrized import dumps, is_parametrized, loads
from fxtap._protocol import CostJob, DrawRequest, Extractor, Payload, require_graphs
from fxtap._query import MODEL_OUTPUT, OutputKey, Request, parse_query, resolve
from fxtap.capture._calls import Call, Channel, InputTap, OutputTap, Stop, running
from fxtap.capture._edits import hook_edits
from fxtap.capture._islands import (
    Island,
    IslandForward,
    IslandRun,
    capture_rows,
    find_islands,
    listing,
)
from fxtap.capture._reach import Dropped, drop_after_probe
from fxtap.errors import (
    NodeNotFoundError,
    NotReachedError,
    TraceError,
    close_matches,
    format_choices,
)
from fxtap.trace import export_notes, first_line, warn_capture

__all__ = [
    "CaptureExtractor",
    "Dropped",
    "Island",
    "build_capture_extractor",
    "capture_rows",
    "find_islands",
]


class CaptureExtractor(Extractor):
    """Runs the model and returns a dict of the requested values, captured on the way.

    Built by ``create_feature_extractor`` when the root forward of a model cannot be traced
    (a detection model iterating over its list of images). **Nothing is pruned**: the model
    runs exactly as it would without fxtap, on a structural copy (sharing parameters and
    buffers), until every requested value is captured; with ``":output"`` requested it runs to
    the end and its output is returned under that key.

    - a module output (``"roi_heads"``) or input (``"rpn:input"``): the first call of that
      module in each forward, kept by a hook; the output is handed on as a copy, so the kept
      tensor stays on the autograd path of everything after it;
    - a node inside one of the largest traceable submodules (``islands``), such as
      ``"backbone.body.layer2"``: on the submodule's first call, its traced graph with the
      requested nodes as extra outputs runs instead of its forward (gradients flow through the
      tapped nodes); on the first call of each mode it is compared with the eager forward
      (``MistraceError`` when they differ).

    When every mode stops early (``":output"`` not requested) and ``example_inputs=`` were
    given, one probe forward per mode runs at build time, and each largest subtree that no
    probe called (a detection model's heads, when only its backbone is tapped) is replaced by
    a ``Dropped`` stub: the extractor keeps only the parameters the taps need. A later call
    that reaches a stub (its control flow differs from the probe's) raises
    ``DroppedModuleError``.

    Each call keeps its own state: the extractor may be called from many threads at once, and
    from inside one of its own calls. It can be deep-copied and pickled.

    Attributes:
        prunes: always ``False``: nothing is pruned, the model runs up to the last tap.
        reason: why the root could not be traced.
        islands: by mode, the traced submodule paths.
        outputs: by mode, output key -> requested node name.
        opaque: module paths kept opaque inside the islands by the automatic fallback.
        dropped: module paths replaced by ``Dropped`` stubs after the build-time probe.
        edited: module paths whose outputs edits change (forward hooks; docs/editing.md).
        tracer_kwargs: the tracer options the islands were traced with (a copy).
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
        tracer_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.tracer_kwargs = dict(tracer_kwargs or {})
        self.reason = reason
        self.opaque = opaque
        self.dropped: tuple[str, ...] = ()
        self.edited: tuple[str, ...] = ()
        self._plans = dict(plans)
        self._channel = Channel()
        self.islands = {mode: tuple(p.names) for mode, p in self._plans.items()}
        self.outputs = {mode: dict(p.outputs) for mode, p in self._plans.items()}
        runs: dict[str, dict[str, IslandRun]] = {}
        for mode, plan in self._plans.items():
            for path, keys in plan.module_inputs.items():
                tap = InputTap(self._channel, mode, path, tuple(keys))
                model.get_submodule(path).register_forward_pre_hook(tap, with_kwargs=True)
            for path, keys in plan.module_outputs.items():
                hook = OutputTap(self._channel, mode, path, tuple(keys))
                model.get_submodule(path).register_forward_hook(hook, with_kwargs=True)
            for path, run in plan.runs.items():
                runs.setdefault(path, {})[mode] = run
        for path, by_mode in runs.items():
            module = model.get_submodule(path)
            module.forward = IslandForward(self._channel, module, by_mode)
        self.train(training)

    def forward(self, *args: Any, **kwargs: Any) -> dict[OutputKey, Any]:
        mode = "train" if self.training else "eval"
        plan = self._plans[mode]
        wanted = frozenset(k for k, n in plan.outputs.items() if n != MODEL_OUTPUT)
        call = Call(self._channel, mode, wanted, stop_early=len(wanted) == len(plan.outputs))
        output: Any = None
        # NOTE: ``Stop`` ends the forward once every requested value is captured
        with running(call), contextlib.suppress(Stop):
            output = self.model(*args, **kwargs)
        store = call.store
        result: dict[OutputKey, Any] = {}
        for key, name in plan.outputs.items():
            if name == MODEL_OUTPUT:
                result[key] = output
            elif key in store:
                result[key] = store[key]
            else:
                raise NotReachedError(
                    f"node {name!r} (output key {key!r}) was not reached: its module was not "
                    f"called during this {mode}-mode forward of {type(self.model).__name__}, so "
                    "a branch of the model's code skipped it on these inputs. Request nodes "
                    "that this input reaches, or pass inputs that take that branch"
                )
        return result

    def __reduce_ex__(self, protocol: Any) -> Any:
        if not any(is_parametrized(m) for m in self.modules()):
            return super().__reduce_ex__(protocol)
        # NOTE: torch refuses to pickle parametrized modules; they go as descriptions
        return (loads, (dumps(self),))

    def node_names(self, mode: str) -> list[str]:
        """Names servable in ``mode``: island nodes under their full paths, other modules."""
        names = self._plans[mode].names
        return listing(
            self.model,
            {p: p for p in names},
            lambda path, _module: path,
            lambda path: [f"{path}.{n}" for n in names[path]],
        )

    # --- the extractor protocol (fxtap._protocol): what the later stages ask of it ----------

    def graph_for(self, mode: str) -> Any:
        """A capture extractor has no graphs: raises ``InvalidArgumentError`` saying what works."""
        require_graphs(
            self,
            action=f"graph_for({mode!r})",
            instead="read its values by calling it, or build an extractor of a traced submodule",
        )

    def node_rows(
        self, *, training: bool, example_inputs: Any = None, tracer: str = "auto"
    ) -> list[Any]:
        """Module rows, and island nodes under their full paths (``node_table``'s capture rows)."""
        from fxtap.names import node_table

        return node_table(self, training=training, example_inputs=example_inputs, tracer=tracer)

    def views(self, request: DrawRequest) -> tuple[dict[str, Any], list[str]]:
        """The module calls of a probe run per mode (``fxtap.capture._draw``)."""
        from fxtap.capture._draw import capture_views

        return capture_views(self, request)

    def measure(self, job: CostJob) -> Any:
        """Real runs instead of graphs (``fxtap.cost._capture``)."""
        from fxtap.cost._capture import measure_capture

        return measure_capture(self, job)

    def payload(self, tensors: Any) -> Payload:
        """Its model's module tree and its requests (``fxtap.save._pack``)."""
        from fxtap.save._pack import describe_capture

        return Payload(describe_capture(self, tensors))

    def traced_code(self, mode: str) -> str:
        """No traced code: the model's own forward runs."""
        return ""

    def fallback(self) -> bool:
        """Always ``True``: built because the root forward could not be traced."""
        return True


@dataclass
class _Plan:
    """How one mode serves its requests.

    Attributes:
        names: island path -> names of its nodes (relative to the island).
        outputs: output key -> query.
        module_outputs: module path -> output keys of its output.
        module_inputs: module path -> output keys of its first argument.
        runs: island path -> the graph run with the requested nodes inside it.
    """

    names: dict[str, tuple[str, ...]]
    outputs: dict[OutputKey, str] = field(default_factory=dict)
    module_outputs: dict[str, list[OutputKey]] = field(default_factory=dict)
    module_inputs: dict[str, list[OutputKey]] = field(default_factory=dict)
    runs: dict[str, IslandRun] = field(default_factory=dict)


def build_capture_extractor(
    model: nn.Module,
    requests: Mapping[str, list[Request]],
    *,
    error: TraceError,
    tracer_kwargs: Mapping[str, Any] | None = None,
    example_inputs: Any = None,
    warn: bool = True,
    edits: Mapping[str, Any] | None = None,
) -> CaptureExtractor:
    """Build a ``CaptureExtractor`` for a model whose root forward raised ``error``.

    With ``example_inputs`` and no ``":output"`` request, the modules no probe run on them
    reaches are dropped (``CaptureExtractor.dropped``). ``warn=False`` (a saved extractor
    being loaded) skips the warning that says capture is used. ``edits`` change module
    outputs with forward hooks on the extractor's own copy of the module tree
    (``fxtap.capture._edits``); they are listed in ``ex.edited``.

    Raises:
        NodeNotFoundError: a request is neither a module nor a node inside a traceable
            submodule; the message says why and what can be requested instead.
    """
    clone = clone_structure(model, {})
    # NOTE: before the extractor's own hooks, so that its taps see the edited values
    edited = hook_edits(clone, edits, model_name=type(model).__name__) if edits else ()
    plans: dict[str, _Plan] = {}
    opaque: dict[str, None] = {}
    name = type(model).__name__
    for mode in ("train", "eval"):
        islands = find_islands(clone, training=mode == "train", tracer_kwargs=tracer_kwargs)
        for island in islands.values():
            for leaf in island.traced.leaves:
                opaque[f"{island.path}.{leaf}"] = None
        plans[mode] = _plan(clone, requests[mode], islands, error, name, mode, tracer_kwargs)
    ex = CaptureExtractor(
        clone,
        plans,
        reason=error.reason,
        training=model.training,
        opaque=tuple(opaque),
        tracer_kwargs=tracer_kwargs,
    )
    ex.edited = edited
    dropping = drop_after_probe(ex, example_inputs, name)
    if not warn:
        return ex
    islands_text = format_choices(ex.islands["eval"]) if ex.islands["eval"] else "none"
    kept = f"; inside them, kept opaque: {format_choices(opaque)}" if opaque else ""
    warn_capture(name, error, f"Traced submodules: {islands_text}{kept}. {dropping}")
    return ex


def _names(island: Island) -> tuple[str, ...]:
    return tuple(n for node, n in island.traced.names.items() if node.op != "placeholder")


def _plan(
    model: nn.Module,
    requests: list[Request],
    islands: Mapping[str, Island],
    error: TraceError,
    model_name: str,
    mode: str,
    tracer_kwargs: Mapping[str, Any] | None,
) -> _Plan:
    plan = _Plan({p: _names(i) for p, i in islands.items()})
    paths = {p for p, _ in model.named_modules() if p}
    by_island: dict[str, dict[OutputKey, Any]] = {}
    queries: dict[str, dict[OutputKey, str]] = {}
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
            except NodeNotFoundError as exc:
                if base not in paths and parsed.port != "input":
                    pool = [f"{island.path}.{n}" for n in _names(island)]
                    raise NodeNotFoundError(
                        f"node {query!r} not found in the {mode} graph of the traced submodule "
                        f"{island.path!r} of {model_name}; closest: "
                        f"{format_choices(close_matches(query, pool))}. List names with "
                        "fxtap.get_graph_node_names(model) or: fxtap nodes MODEL"
                    ) from exc
            else:
                by_island.setdefault(island.path, {}).update(found)
                queries.setdefault(island.path, {})[req.key] = local.query
                continue
        if parsed.port == "node" and parsed.path in paths:
            plan.module_outputs.setdefault(parsed.path, []).append(req.key)
        elif parsed.port == "input" and parsed.path in paths:
            plan.module_inputs.setdefault(parsed.path, []).append(req.key)
        else:
            raise _unservable(query, model_name, mode, error, islands, paths)
    for path, selected in by_island.items():
        plan.runs[path] = IslandRun(islands[path], selected, queries[path], tracer_kwargs)
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
    message = (
        f"node {query!r} cannot be served in {mode} mode: torch.fx cannot trace the root "
        f"{model_name}.forward ({first_line(error.reason)}), so fxtap captures values during a "
        "normal forward, which reaches only module outputs ('NAME' or 'NAME:input' for any "
        f"module) and nodes inside the traceable submodules {format_choices(islands)}. "
        f"Closest: {format_choices(hint)}. To reach code of the root itself, make it traceable "
        f"(concrete_args=, or move the failing code into a submodule). {export_notes(error)}"
    )
    return NodeNotFoundError(message.rstrip())
