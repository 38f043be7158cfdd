"""The variants a cost report times: full model, forward hooks, extractor."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from fxtap._fx import node_name
from fxtap._query import OutputKey, normalize_return_nodes, parse_query
from fxtap.cost._count import profiler_peak
from fxtap.cost._report import VariantCost
from fxtap.cost._time import Progress, bootstrap_median_ci, iqr, median, time_rounds

__all__ = ["Taps", "cuda_peak", "measure_variants", "resolve_taps", "variant_functions"]


@dataclass(frozen=True)
class Taps:
    """How the hooks variant captures each output, or why it cannot."""

    forward: dict[str, OutputKey] = field(default_factory=dict)  # module path -> key
    pre: dict[str, OutputKey] = field(default_factory=dict)  # module path -> key (":input" taps)
    model_output: OutputKey | None = None
    missing: tuple[str, ...] = ()


def resolve_taps(
    model: nn.Module, gm: fx.GraphModule, return_nodes: Any, outputs: Mapping[OutputKey, str]
) -> Taps:
    """Find, for each tap, the module whose forward (pre-)hook sees the same value."""
    modules = dict(model.named_modules())
    by_name = {node_name(n): n for n in gm.graph.nodes}
    taps = Taps()
    missing = []
    for req in normalize_return_nodes(return_nodes, argument="return_nodes"):
        query, key = parse_query(req.query), req.key
        node = by_name.get(outputs[key])
        if query.port == "model":
            taps = Taps(taps.forward, taps.pre, key, ())
        elif query.port == "input" and query.path in modules:
            taps.pre[query.path] = key
        elif query.port == "node" and query.path in modules and query.path:
            taps.forward[query.path] = key
        elif node is not None and node.op == "call_module":
            taps.forward[str(node.target)] = key
        else:
            missing.append(outputs[key])
    return Taps(taps.forward, taps.pre, taps.model_output, tuple(missing))


def variant_functions(
    model: nn.Module, extractor: nn.Module, inputs: tuple[Any, ...], taps: Taps
) -> dict[str, Any]:
    def full() -> Any:
        with torch.no_grad():
            return model(*inputs)

    def pruned() -> Any:
        with torch.no_grad():
            return extractor(*inputs)

    variants = {"full": full}
    if not taps.missing:
        variants["hooks"] = _hooked(model, inputs, taps)
    variants["extractor"] = pruned
    return variants


def _hooked(model: nn.Module, inputs: tuple[Any, ...], taps: Taps) -> Any:
    """The full model with forward hooks storing the taps: what users write by hand.

    Hooks go on a copy of the module tree sharing every tensor, so the caller's model and the
    ``full`` variant run without them.
    """
    memo: dict[int, Any] = {id(t): t for t in (*model.parameters(), *model.buffers())}
    clone = copy.deepcopy(model, memo)
    captured: dict[OutputKey, Any] = {}
    modules = dict(clone.named_modules())
    for path, key in taps.forward.items():
        modules[path].register_forward_hook(
            lambda m, a, out, key=key: captured.__setitem__(key, out)
        )
    for path, key in taps.pre.items():
        modules[path].register_forward_pre_hook(
            lambda m, a, key=key: captured.__setitem__(key, a[0])
        )

    def hooks() -> Any:
        captured.clear()
        with torch.no_grad():
            out = clone(*inputs)
        if taps.model_output is not None:
            captured[taps.model_output] = out
        return dict(captured)

    return hooks


def cuda_peak(fn: Any, dev: torch.device) -> int:
    torch.cuda.synchronize(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    base = torch.cuda.memory_allocated(dev)
    result = fn()
    torch.cuda.synchronize(dev)
    del result
    return int(torch.cuda.max_memory_allocated(dev) - base)


def measure_variants(
    variants: Mapping[str, Any],
    *,
    device: torch.device,
    threads: int,
    opts: Mapping[str, Any],
    show: Progress,
    estimated: Mapping[str, tuple[int, str]] | None = None,
) -> tuple[VariantCost, ...]:
    """Peak memory and interleaved timing of each variant, as ``VariantCost`` rows.

    Args:
        variants: name -> callable, ``"full"`` among them (ratios are to it).
        device: where they run (CUDA peaks there, else the profiler's with ``profile_memory``).
        threads: intra-op threads of the timing.
        opts: ``compare``'s ``min_run_time``, ``rounds``, ``warmup`` and ``profile_memory``.
        show: progress lines.
        estimated: name -> (peak bytes, peak node) estimated from a graph; without it the
            measured peak is the row's peak (no node).
    """
    profiled: dict[str, int | None] = {}
    cuda_peaks: dict[str, int | None] = {}
    for name, fn in variants.items():
        show.show(f"peak memory: {name}")
        if device.type == "cuda":
            cuda_peaks[name] = cuda_peak(fn, device)
        elif opts["profile_memory"]:
            profiled[name] = profiler_peak(fn)
    samples = time_rounds(
        variants,
        threads=threads,
        min_run_time=opts["min_run_time"],
        rounds=opts["rounds"],
        warmup=opts["warmup"],
        device=device,
        progress=show,
    )
    full_wall = samples.wall["full"]
    results = []
    for name in variants:
        wall = samples.wall[name]
        ratios = [t / f for t, f in zip(wall, full_wall)]
        measured = cuda_peaks.get(name) or profiled.get(name) or 0
        peak_bytes, peak_node = estimated[name] if estimated is not None else (measured, "")
        results.append(
            VariantCost(
                name=name,
                samples=tuple(wall),
                device_samples=tuple(samples.device.get(name, ())),
                runs=tuple(samples.runs[name]),
                median=median(wall),
                iqr=iqr(wall),
                ratio=median(ratios),
                ratio_ci=bootstrap_median_ci(ratios),
                peak_bytes=peak_bytes,
                peak_node=peak_node,
                profiler_peak_bytes=profiled.get(name),
                cuda_peak_bytes=cuda_peaks.get(name),
            )
        )
    return tuple(results)
