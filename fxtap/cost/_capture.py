"""The cost of a capture extractor (a real forward up to its early exit) next to the model."""

from __future__ import annotations

from typing import Any

from torch import nn

from fxtap._protocol import CostJob
from fxtap._query import OutputKey, normalize_return_nodes, parse_query
from fxtap.capture._probe import probe
from fxtap.cost._count import param_fields
from fxtap.cost._report import CostReport, NodeCost
from fxtap.cost._variants import Taps, measure_variants, variant_functions

__all__ = ["OTHER_CODE", "measure_capture"]

#: Name of the report's rows for code outside the drawn module calls (the untraced forwards).
OTHER_CODE = "(untraced code between module calls)"


def measure_capture(extractor: Any, job: CostJob) -> CostReport:
    """Time and count a ``CaptureExtractor``'s call against the full model's forward.

    FLOPs come from ``FlopCounterMode`` over a real run of each (no graph of the root exists):
    the report has one row per module call of the full forward (an island, a leaf module, an
    untraced module), kept when the extractor's call reaches it, plus rows for the code in
    between, so ``kept_flops`` is the extractor's count and ``total_flops`` the model's.
    Peak memory is the profiler's figure (or CUDA's), not a liveness estimate.
    """
    work, mode, inputs, show = job.model, job.mode, job.inputs, job.progress
    show.show("counting FLOPs of both runs")
    found = probe(extractor, inputs, mode=mode)
    modules = dict(work.named_modules())
    nodes: list[NodeCost] = []
    for call in found.calls:
        params = sum(p.numel() for p in modules[call.path].parameters())
        rows = [(call.path, call.ran_flops, True)] if call.ran else []
        if call.flops - call.ran_flops > 0 or not call.ran:
            rows.append(
                (
                    f"{call.path} (after the exit)" if call.ran else call.path,
                    call.flops - call.ran_flops,
                    False,
                )
            )
        for name, flops, kept in rows:
            nodes.append(
                NodeCost(name, "call_module", call.module_type, call.path, flops, params, 0, kept)
            )
    ran = sum(n.flops for n in nodes if n.kept)
    skipped = sum(n.flops for n in nodes if not n.kept)
    kept_rest = max(found.extractor_flops - ran, 0)
    rest = max(found.full_flops - found.extractor_flops - skipped, 0)
    for flops, kept in ((kept_rest, True), (rest, False)):
        name = OTHER_CODE if kept else f"{OTHER_CODE} (after the exit)"
        nodes.append(NodeCost(name, "call_function", "", "", flops, 0, 0, kept))
    taps = _taps(work, job.return_nodes)
    variants = variant_functions(work, extractor, inputs, taps)
    results = measure_variants(
        variants, device=job.device, threads=job.threads, opts=job.options, show=show
    )
    notes = [
        f"capture extractor: the root forward of {type(work).__name__} cannot be traced; FLOPs "
        "and memory are measured on real runs, rows are module calls"
        + ("" if found.stopped_early else "; the extractor runs the whole forward (no early exit)")
    ]
    if taps.missing:
        notes.append(
            "hooks not timed: forward hooks cannot capture "
            + ", ".join(repr(m) for m in taps.missing)
            + " (not the output of a module)"
        )
    return CostReport(
        model=type(work).__name__,
        mode=mode,
        device=str(job.device),
        threads=job.threads,
        outputs=dict(extractor.outputs[mode]),
        nodes=tuple(nodes),
        op_flops=dict(found.op_flops),
        uncounted_ops={},
        total_flops=found.full_flops,
        **param_fields(work, extractor),
        variants=tuple(results),
        notes=tuple(notes),
        environment=dict(job.environment),
    )


def _taps(model: nn.Module, return_nodes: Any) -> Taps:
    """The hooks variant's taps: module outputs and inputs; nodes inside islands are missing."""
    modules = dict(model.named_modules())
    forward: dict[str, OutputKey] = {}
    pre: dict[str, OutputKey] = {}
    output: OutputKey | None = None
    missing: list[str] = []
    for req in normalize_return_nodes(return_nodes, argument="return_nodes"):
        query = parse_query(req.query)
        if query.port == "model":
            output = req.key
        elif query.port == "input" and query.path in modules:
            pre[query.path] = req.key
        elif query.port == "node" and query.path in modules and query.path:
            forward[query.path] = req.key
        else:
            missing.append(req.query)
    return Taps(forward, pre, output, tuple(missing))
