"""The cost of a pruning extractor: its graph's nodes counted and timed against the full trace."""

from __future__ import annotations

from typing import Any

from torch import fx

from fxtap._fx import node_name, node_scope, owned_params, target_text
from fxtap._protocol import CostJob
from fxtap._shapes import propagate_shapes
from fxtap.cost._count import count_flops, output_bytes, param_fields, peak_liveness, time_nodes
from fxtap.cost._report import CostReport, NodeCost
from fxtap.cost._variants import measure_variants, resolve_taps, variant_functions

__all__ = ["measure_graphs"]


def measure_graphs(extractor: Any, job: CostJob) -> CostReport:
    """Count and time a pruning extractor's graph against its model's full trace.

    FLOPs, parameters and output sizes come from the full trace (``extractor.full``), one row
    per node, kept when the pruned graph runs it; peak memory is a liveness estimate.
    """
    work, mode, inputs, show, opts = job.model, job.mode, job.inputs, job.progress, job.options
    dev, threads = job.device, job.threads
    traced: Any = extractor.full[mode]  # type: ignore[index]
    gm: fx.GraphModule = traced.graph_module
    kept = extractor.kept[mode]  # type: ignore[index]
    outputs = dict(extractor.outputs[mode])  # type: ignore[index]
    show.show("shapes")
    training = mode == "train"
    propagate_shapes(gm, inputs, model_name=type(work).__name__, training=training)
    propagate_shapes(extractor, inputs, model_name=type(work).__name__, training=training)  # type: ignore[arg-type]
    show.show("counting FLOPs")
    flops = count_flops(gm, inputs)
    times: dict[fx.Node, float] = {}
    if opts["node_repeats"]:
        show.show("timing nodes of the full graph")
        times = time_nodes(gm, inputs, repeats=opts["node_repeats"])
    nodes = tuple(
        NodeCost(
            name=node_name(n),
            op=n.op,
            target=target_text(n),
            module=node_scope(n),
            flops=flops.per_node.get(n, 0),
            params=owned_params(gm, n),
            output_bytes=output_bytes(n),
            kept=node_name(n) in kept,
            time_s=times.get(n),
        )
        for n in gm.graph.nodes
        if n.op != "output"
    )
    taps = resolve_taps(work, gm, job.return_nodes, outputs)
    variants = variant_functions(work, extractor, inputs, taps)
    tapped = set(outputs.values())
    live = {
        "full": peak_liveness(gm.graph),
        "hooks": peak_liveness(gm.graph, keep_alive=tapped),
        "extractor": peak_liveness(extractor.graph),  # type: ignore[arg-type]
    }
    results = measure_variants(
        variants, device=dev, threads=threads, opts=opts, show=show, estimated=live
    )
    notes: tuple[str, ...] = ()
    if taps.missing:
        notes = (
            "hooks not timed: forward hooks cannot capture "
            + ", ".join(repr(m) for m in taps.missing)
            + " (not the output of a module)",
        )
    return CostReport(
        model=type(work).__name__,
        mode=mode,
        device=str(dev),
        threads=threads,
        outputs=outputs,
        nodes=nodes,
        op_flops=flops.per_op,
        uncounted_ops=flops.uncounted,
        total_flops=flops.total,
        **param_fields(work, extractor),
        variants=tuple(results),
        notes=notes,
        environment=dict(job.environment),
    )
