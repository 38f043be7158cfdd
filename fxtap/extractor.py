"""Build a feature extractor holding one pruned graph per mode."""

from __future__ import annotations

import copy
import dataclasses
import threading
from collections.abc import Mapping
from typing import Any

from torch import fx, nn

from fxtap import _compat
from fxtap._call_errors import explain_call_failure
from fxtap._edit_pass import apply_edits, check_edits
from fxtap._extractor_info import ExtractorInfo
from fxtap._fixed_to_none import FixedState, FixedToNone, mode_forwards, prune_fixed_to_none
from fxtap._fx import detach_submodules, set_training, union_root
from fxtap._graph_state import GraphState, graph_state, rebuild_graph
from fxtap._parametrized import picklable
from fxtap._protocol import CostJob, DrawRequest, Extractor, Payload
from fxtap._query import OutputKey, Request, output_name, requests_by_mode, resolve_in_mode
from fxtap.capture import CaptureExtractor, build_capture_extractor
from fxtap.errors import InvalidArgumentError, unknown_choice
from fxtap.prune import prune
from fxtap.trace import MODES, NAME_KEY, Traced, TraceOptions, check_model, route

__all__ = [
    "MODES",
    "ExtractorInfo",
    "FeatureExtractor",
    "build_extractor",
    "create_feature_extractor",
]

# NOTE: one lock for every extractor's mode switch: the flags and the selected graph change
# together, so switches racing from many threads leave each extractor in one consistent mode.
# A module-level lock, since torch.jit.script cannot hold a lock attribute.
_MODE_SWITCH = threading.RLock()


class FeatureExtractor(fx.GraphModule, Extractor):
    """A ``GraphModule`` with one pruned graph per mode; its forward returns a dict.

    ``.train()`` and ``.eval()`` select the graph traced in that mode without regenerating
    code: each mode's code is compiled once, when the extractor is built.

    It keeps no reference to what it pruned: parameters, buffers and modules outside its
    graphs are freed with the model.

    Attributes:
        prunes: always ``True``: only what the requested nodes need runs.
        full: the unpruned traces, by mode, when built with ``keep_traces=True``; else empty.
        outputs: by mode, output key -> resolved node name (``":output"`` for the model's).
        opaque: module paths made opaque leaves by the automatic fallback.
        fixed_to_none: root arguments that default to ``None`` and that the graphs read: a
            call that leaves all of them out (or passes ``None``) runs a second graph, traced
            with them fixed to ``None`` (``graph_for(mode, fixed_to_none=True)``); empty when
            there is no such argument.
    """

    prunes = True
    # NOTE: GraphModule's list comes first in the bases, so the shared one is named here
    __jit_unused_properties__ = Extractor.__jit_unused_properties__

    def __init__(
        self,
        root: nn.Module,
        graphs: Mapping[str, fx.Graph],
        *,
        class_name: str,
        training: bool,
        info: ExtractorInfo | None = None,
    ) -> None:
        first = graphs["train" if training else "eval"]
        super().__init__(root, first, class_name)
        # NOTE: GraphModule made a class of its own for this instance; its call wrapper now
        # explains calls that fail on their inputs (recompile keeps a wrapper already there)
        _compat.explain_calls(self, explain_call_failure)
        info = info or ExtractorInfo()
        fixed = info.fixed_to_none
        others = [
            graphs["eval" if training else "train"],
            *(fixed.graphs.values() if fixed else ()),
        ]
        for node in (n for graph in others for n in graph.nodes):
            if node.op in ("call_module", "get_attr"):
                _compat.copy_attr(root, self, str(node.target))
        detach_submodules(self)
        for name, buf in list(self.named_buffers()):
            if name.rsplit(".", 1)[-1].startswith("_tensor_constant"):
                owner = self.get_submodule(name.rpartition(".")[0])
                owner.register_buffer(name.rsplit(".", 1)[-1], buf, persistent=False)
        self._fxtap_fixed = fixed
        # by training flag, the forward that picks its graph per call (when there are two)
        self._fxtap_pick = mode_forwards(self, graphs, fixed) if fixed is not None else {}
        self._fxtap_modes = {}
        for flag, mode in ((True, "train"), (False, "eval")):
            # Both graphs belong to this module, so fx passes on either see the right owner.
            self.graph = graphs[mode]  # sets owning_module and recompiles
            self._fxtap_modes[flag] = _compat.save_mode_code(self)
        # NOTE: the same dict, not a copy: a deep copy shares the traces with its original
        self.full = info.full
        self.outputs = {mode: dict(outs) for mode, outs in info.outputs.items()}
        self.opaque = tuple(info.opaque)
        self.fixed_to_none = fixed.args if fixed is not None else ()
        self.train(training)

    @property
    def kept(self) -> dict[str, frozenset[str]]:
        """By mode, names of the nodes kept after pruning (read from the graphs)."""
        return {m: frozenset(self.node_names(m)) for m in MODES}

    def node_names(self, mode: str) -> list[str]:
        """Names of the nodes the ``mode`` graph kept, in execution order."""
        return [n.meta[NAME_KEY] for n in self.graph_for(mode).nodes if NAME_KEY in n.meta]

    def pruned_traces(self) -> dict[str, Traced]:
        """Each mode's pruned graph as a ``Traced`` of its own: what is drawn without ``full``."""
        traces = {}
        for mode in MODES:
            graph = fx.Graph()
            graph.output(graph.graph_copy(self.graph_for(mode), {}))
            gm = fx.GraphModule(self, graph, type(self).__name__)
            names = {n: n.meta[NAME_KEY] for n in gm.graph.nodes if NAME_KEY in n.meta}
            traces[mode] = Traced(gm, names, mode == "train")
        return traces

    def train(self, mode: bool = True) -> FeatureExtractor:
        """Set the mode and select that mode's graph (no code is regenerated).

        Switches from many threads at once leave the extractor in one consistent mode (the
        last switch's flags and graph). As with any ``nn.Module``, a switch while another
        thread's call is running changes the mode of the leaf modules that call still runs.
        """
        if not isinstance(mode, bool):
            raise InvalidArgumentError(f"training mode {mode!r} is not a bool; pass True or False")
        with _MODE_SWITCH:
            set_training(self, mode)
            cached = getattr(self, "_fxtap_modes", None)
            if cached is not None:
                _compat.restore_mode_code(self, cached[mode])
            pick = getattr(self, "_fxtap_pick", {}).get(mode)
            if pick is not None:
                type(self).forward = pick
        return self

    def graph_for(self, mode: str, *, fixed_to_none: bool = False) -> fx.Graph:
        """The pruned graph of ``mode`` (``'train'`` or ``'eval'``); with ``fixed_to_none``,
        the one for calls that leave out every argument of ``ex.fixed_to_none``.

        Raises:
            InvalidArgumentError: ``mode`` is neither (names the closest), or there is no
                graph with arguments fixed to ``None``.
        """
        if mode not in MODES:
            raise unknown_choice("mode", mode, MODES, fix="Pass a mode, e.g. ex.graph_for('eval').")
        if not fixed_to_none:
            return self._fxtap_modes[mode == "train"][0]
        if self._fxtap_fixed is None:
            raise InvalidArgumentError(
                f"{type(self).__name__} has no graph with arguments fixed to None: its graphs "
                "read no root argument that defaults to None. Call graph_for(mode) instead"
            )
        return self._fxtap_fixed.graphs[mode]

    # --- the extractor protocol (fxtap._protocol): what the later stages ask of it ----------

    def node_rows(
        self, *, training: bool, example_inputs: Any = None, tracer: str = "auto"
    ) -> list[Any]:
        """The ``mode`` graph's own nodes as ``NodeInfo`` rows (``fxtap.names.graph_rows``)."""
        from fxtap.names import graph_rows

        return graph_rows(self, training=training, example_inputs=example_inputs)

    def views(self, request: DrawRequest) -> tuple[dict[str, Any], list[str]]:
        """Each mode's full trace (or pruned graph), its kept nodes marked (``render``)."""
        from fxtap.render._graphs import pruned_views

        return pruned_views(self, request), []

    def measure(self, job: CostJob) -> Any:
        """The pruned graph counted and timed against the full trace (``fxtap.cost._graphs``)."""
        from fxtap.cost._graphs import measure_graphs

        return measure_graphs(self, job)

    def payload(self, tensors: Any) -> Payload:
        """Its graphs and what they use (``fxtap.save._pack``)."""
        from fxtap.save._pack import describe_graphs

        return describe_graphs(self, tensors)

    def traced_code(self, mode: str) -> str:
        """The Python code torch.fx generates for the ``mode`` graph (for reading only)."""
        return self.graph_for(mode).python_code(root_module="self").src

    def fallback(self) -> bool:
        """Always ``False``: its graphs were traced."""
        return False

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ):  # type: ignore[override]
        """Load a checkpoint of the original model: keys of pruned parts are ignored.

        Keys the extractor needs must be present when ``strict`` (missing keys raise).
        """
        own = set(self.state_dict().keys())
        subset = {k: v for k, v in state_dict.items() if k in own}
        return super().load_state_dict(subset, strict=strict, assign=assign)

    def __reduce__(self) -> tuple[Any, ...]:
        # NOTE: not torch.fx's pickle (generated source traced again on load): tracing again
        # folds constant-only calls into attributes the source lacks and renames later nodes.
        graphs = {mode: graph_state(self.graph_for(mode)) for mode in MODES}
        state = {
            "modules": picklable(self._modules),
            "parameters": dict(self._parameters),
            "buffers": dict(self._buffers),
            "non_persistent": set(self._non_persistent_buffers_set),
        }
        info = ExtractorInfo(outputs=self.outputs, opaque=self.opaque)
        return (
            _rebuild,
            (
                graphs,
                state,
                info,
                self.training,
                type(self).__name__,
                self._fxtap_fixed and self._fxtap_fixed.state(),
            ),
        )

    def __deepcopy__(self, memo: dict[int, Any]) -> FeatureExtractor:
        root = nn.Module()
        root._modules = copy.deepcopy(self._modules, memo)
        root._parameters = copy.deepcopy(self._parameters, memo)
        root._buffers = copy.deepcopy(self._buffers, memo)
        graphs = {m: copy.deepcopy(self.graph_for(m), memo) for m in MODES}
        fixed = self._fxtap_fixed and self._fxtap_fixed.copy(memo)
        info = ExtractorInfo(copy.deepcopy(self.outputs), self.opaque, self.full, fixed)
        return FeatureExtractor(
            root, graphs, class_name=type(self).__name__, training=self.training, info=info
        )


def create_feature_extractor(  # noqa: PLR0913 - torchvision's keyword options, and fxtap's
    model: nn.Module,
    return_nodes: list[str] | dict[str, str] | None = None,
    train_return_nodes: list[str] | dict[str, str] | None = None,
    eval_return_nodes: list[str] | dict[str, str] | None = None,
    tracer_kwargs: Mapping[str, Any] | None = None,
    suppress_diff_warning: bool = False,
    concrete_args: Mapping[str, Any] | None = None,
    *,
    auto_leaf: bool = True,
    example_inputs: Any = None,
    tracer: str = "auto",
    keep_traces: bool = False,
    dynamic_shapes: Any = None,
    edits: Mapping[str, Any] | None = None,
) -> FeatureExtractor | CaptureExtractor:
    """Build a pruned extractor whose forward returns the requested intermediate values.

    Same signature and semantics as torchvision's ``create_feature_extractor``, with fixes:
    each query resolves on its own, returned values are the values at the node even when a
    later op writes in place, and shape asserts on pruned code do not keep it alive.

    Args:
        model: the model; never modified (its training flags are restored).
        return_nodes: list of node names, or dict node name -> output key, for both modes.
            A partial name (``"layer1"``) selects the last node under that dotted prefix;
            ``"NAME:input"`` taps the first input of module NAME and ``":output"`` keeps the
            model's own output.
        train_return_nodes: like ``return_nodes``, for train mode only.
        eval_return_nodes: like ``return_nodes``, for eval mode only.
        tracer_kwargs: ``NodePathTracer`` options (``leaf_modules``, ``autowrap_functions``...).
        suppress_diff_warning: accepted for torchvision compatibility.
        concrete_args: torch.fx's ``concrete_args``.
        auto_leaf: keep untraceable submodules and functions opaque and warn, instead of
            raising ``TraceError`` (docs/tracing.md). When the root forward itself cannot be
            traced, a ``CaptureExtractor`` is returned instead: it runs the whole model
            (nothing pruned) and captures the values on the way.
        example_inputs: inputs to check each graph against eager execution, module by module;
            a module that mis-traces is made a leaf, or ``MistraceError`` raised. On the
            export path, the inputs to export with: a tensor, a tuple, or a dict of keyword
            inputs (``{"input_ids": ids, "attention_mask": mask}``).
        tracer: ``"auto"`` (torch.fx; torch.export when torch.fx cannot trace the root and
            ``example_inputs`` are given or the model's config implies them, as for Hugging
            Face models; else capture), ``"fx"`` (torch.fx, else capture) or ``"export"``
            (torch.export only). See docs/tracing.md.
        keep_traces: keep the unpruned traces in ``ex.full`` (for ``render`` and ``compare``);
            they hold the whole model, so by default they are dropped and the extractor
            keeps only what it runs.
        dynamic_shapes: on the export path, torch.export's ``dynamic_shapes``, keyed as
            ``example_inputs`` are (``{"input_ids": {1: Dim("seq", max=512)}}``). By default
            every input dimension is ``Dim.AUTO``: dynamic unless the model fixes it; a call
            whose shape the graph was not exported for raises ``InputShapeError``.
        edits: node query -> edit (``fxtap.edits``), as in ``fxtap.edit``: the values
            returned are those of the edited model, and a tap at an edited node returns its
            edited value. On the capture path the edits run as forward hooks, so only module
            outputs can be edited there (docs/editing.md).

    Returns:
        A ``FeatureExtractor`` in the mode ``model`` was in (or a ``CaptureExtractor``).

    Raises:
        InvalidArgumentError: bad ``return_nodes`` combinations or types.
        NodeNotFoundError: a query matches no node.
        TraceError: the model cannot be traced.

    >>> import torchvision
    >>> m = torchvision.models.resnet18()
    >>> ex = create_feature_extractor(m, {"layer2": "mid", "layer4": "out"})
    >>> {k: tuple(v.shape) for k, v in ex(torch.rand(1, 3, 64, 64)).items()}
    {'mid': (1, 128, 8, 8), 'out': (1, 512, 2, 2)}
    """
    del suppress_diff_warning  # mode differences are explicit in ex.outputs; nothing to warn about
    options = TraceOptions(
        tracer,
        tracer_kwargs,
        concrete_args,
        auto_leaf,
        example_inputs,
        dynamic_shapes=dynamic_shapes,
    )
    requests = requests_by_mode(return_nodes, train_return_nodes, eval_return_nodes)
    return build_extractor(model, requests, options, keep_traces=keep_traces, edits=edits)


def build_extractor(
    model: nn.Module,
    requests: Mapping[str, list[Request]],
    options: TraceOptions,
    *,
    keep_traces: bool = False,
    edits: Mapping[str, Any] | None = None,
) -> FeatureExtractor | CaptureExtractor:
    """``create_feature_extractor`` with requests by mode and ``TraceOptions``: the path
    (torch.fx, torch.export or capture) is ``route``'s (``compare`` passes ``check`` off)."""
    check_model(model)
    if edits is not None:
        check_edits(edits)
    chosen = route(model, options, none_fixed=True)
    if chosen.error is not None:
        return build_capture_extractor(
            model,
            requests,
            error=chosen.error,
            tracer_kwargs=options.tracer_kwargs,
            example_inputs=options.checked_inputs,
            edits=edits,
        )
    name = type(model).__name__
    traces = chosen.traces
    if edits is not None:
        traces = apply_edits(traces, edits, model_name=name)
    outputs: dict[str, dict[OutputKey, str]] = {}
    pruned: dict[str, fx.GraphModule] = {}
    for mode, traced in traces.items():
        selected = resolve_in_mode(requests, traces, mode, model_name=name)
        pruned[mode] = prune(traced, selected, class_name=name)
        outputs[mode] = {key: output_name(value, traced) for key, value in selected.items()}
    fixed = prune_fixed_to_none(chosen.none_fixed, requests, edits, outputs, model_name=name)
    leaves = [leaf for t in traces.values() for leaf in t.leaves] + list(
        fixed.leaves if fixed else ()
    )
    opaque = tuple(dict.fromkeys(leaves))
    full = dict(traces) if keep_traces else {}
    info = ExtractorInfo(outputs, opaque, full, fixed.fixed_to_none() if fixed else None)
    every = {**pruned, **{f"{m}_none": gm for m, gm in (fixed.pruned if fixed else {}).items()}}
    graphs = {mode: gm.graph for mode, gm in pruned.items()}
    return FeatureExtractor(
        union_root(every), graphs, class_name=name, training=model.training, info=info
    )


def _rebuild(
    graphs: Mapping[str, GraphState],
    state: Mapping[str, Any],
    info: ExtractorInfo,
    training: bool,
    class_name: str,
    fixed_to_none: FixedState | None = None,
) -> FeatureExtractor:
    root = nn.Module()
    root._modules = dict(state["modules"])
    root._parameters = dict(state["parameters"])
    root._buffers = dict(state["buffers"])
    root._non_persistent_buffers_set = set(state["non_persistent"])
    rebuilt = {mode: rebuild_graph(graph) for mode, graph in graphs.items()}
    if fixed_to_none is not None:
        info = dataclasses.replace(info, fixed_to_none=FixedToNone.rebuilt(fixed_to_none))
    return FeatureExtractor(root, rebuilt, class_name=class_name, training=training, info=info)
