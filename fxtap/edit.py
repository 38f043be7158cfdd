"""Edit a model: replace a node's value, for all of its users, by ``edit(value)``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import fx, nn

from fxtap._edit_pass import Edit, apply_edits, check_edits
from fxtap._fx import union_root
from fxtap.errors import TraceError
from fxtap.extractor import MODES, ExtractorInfo, FeatureExtractor
from fxtap.prune import prune, unwrap_output
from fxtap.trace import TraceOptions, check_model, is_root_failure, route

__all__ = ["edit"]


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
    options = TraceOptions(tracer, tracer_kwargs, concrete_args, auto_leaf, example_inputs)
    try:
        traces = route(model, options, capture=False).traces
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
