"""Count what a graph costs without timing it: FLOPs per node, parameters, liveness."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn
from torch.utils.flop_counter import FlopCounterMode

from fxtap import _compat
from fxtap._fx import node_name, shares_storage

__all__ = [
    "FlopCount",
    "ParamCount",
    "count_flops",
    "count_params",
    "output_bytes",
    "param_fields",
    "peak_liveness",
    "profiler_peak",
    "time_nodes",
]


@dataclass(frozen=True)
class FlopCount:
    """FLOPs of one run of a graph, attributed to its nodes.

    Attributes:
        per_node: node -> FLOPs counted while that node ran; sums exactly to ``total``.
        per_op: aten op -> FLOPs, from the counter's own totals (also sums to ``total``).
        uncounted: aten ops the counter has no formula for -> number of calls (counted as 0).
        total: ``FlopCounterMode.get_total_flops()`` for the whole run.
    """

    per_node: dict[fx.Node, int]
    per_op: dict[str, int]
    uncounted: dict[str, int]
    total: int


@dataclass(frozen=True)
class ParamCount:
    """Parameters and bytes of a module, each storage counted once.

    Attributes:
        params: elements of the distinct parameter tensors.
        param_bytes: bytes of the distinct storages behind the parameters.
        buffer_bytes: bytes of the distinct storages behind the buffers (not shared with params).
        storages: ids (data pointers) of every storage counted, to compare two modules.
    """

    params: int
    param_bytes: int
    buffer_bytes: int
    storages: frozenset[int]


def count_flops(gm: fx.GraphModule, inputs: Sequence[Any]) -> FlopCount:
    """Run ``gm`` node by node under one ``FlopCounterMode`` and read its total after each node.

    Autograd stays enabled and attention runs on its math backend while counting: fused
    kernels (the inference fast path of ``nn.MultiheadAttention``, the CPU flash attention op)
    would otherwise hide their matrix products from the counter. The arithmetic is the same;
    nothing is backpropagated.

    >>> gm = fx.symbolic_trace(nn.Linear(3, 4))
    >>> count_flops(gm, (torch.randn(2, 3),)).total  # 2 * batch * in * out
    48
    """
    counter = FlopCounterMode(display=False)
    recorder = _compat.op_recorder()
    per_node: dict[fx.Node, int] = {}

    class _Counting(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            before = counter.get_total_flops()
            result = super().run_node(n)
            per_node[n] = counter.get_total_flops() - before
            return result

    from torch.nn.attention import SDPBackend, sdpa_kernel

    with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH), counter, recorder:
        _Counting(gm).run(*inputs)
    known = set(counter.flop_registry)
    per_op = {str(op): int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}
    uncounted = {str(op): n for op, n in recorder.calls.items() if op not in known}
    return FlopCount(per_node, per_op, dict(sorted(uncounted.items())), counter.get_total_flops())


def count_params(modules: Iterable[nn.Module]) -> ParamCount:
    """Count the parameters and bytes of ``modules`` together, each storage once.

    Tied weights (one ``Parameter`` in two places) and distinct ``Parameter`` objects sharing
    one storage both count once.
    """
    seen_tensors: set[tuple[Any, ...]] = set()
    param_storages: dict[int, int] = {}
    buffer_storages: dict[int, int] = {}
    params = 0
    for module in modules:
        for p in module.parameters():
            key = (p.untyped_storage().data_ptr(), p.storage_offset(), tuple(p.shape), p.stride())
            if key not in seen_tensors:
                seen_tensors.add(key)
                params += p.numel()
            param_storages[p.untyped_storage().data_ptr()] = p.untyped_storage().nbytes()
        for b in module.buffers():
            ptr = b.untyped_storage().data_ptr()
            if ptr not in param_storages:
                buffer_storages[ptr] = b.untyped_storage().nbytes()
    return ParamCount(
        params=params,
        param_bytes=sum(param_storages.values()),
        buffer_bytes=sum(buffer_storages.values()),
        storages=frozenset(param_storages) | frozenset(buffer_storages),
    )


def output_bytes(node: fx.Node) -> int:
    """Bytes of the tensors a node produces, from ``node.meta['tensor_meta']`` (0 if unknown)."""
    return _meta_bytes(node.meta.get("tensor_meta"))


def peak_liveness(graph: fx.Graph, *, keep_alive: Iterable[str] = ()) -> tuple[int, str]:
    """Estimate peak activation memory: a value lives from its producer to its last user.

    Parameters (``get_attr``) are not activations and are left out. Views and in-place ops
    (``relu_``, ``inplace=True`` modules, ``operator.iadd``, ``getitem``) allocate nothing and
    extend the life of the value they alias. Names in ``keep_alive`` live to the end, as values
    captured by forward hooks do.

    Returns:
        ``(peak_bytes, name of the node running when the peak is reached)``.
    """
    nodes = [n for n in graph.nodes if n.op != "output"]
    index = {n: i for i, n in enumerate(nodes)}
    end = len(nodes)
    owner: dict[fx.Node, fx.Node] = {}
    size: dict[fx.Node, int] = {}
    last: dict[fx.Node, int] = {}
    pinned = set(keep_alive)
    gm = graph.owning_module
    for n in nodes:
        if n.op == "get_attr":
            continue
        base = shares_storage(n, gm)
        if base is not None and base in owner:
            owner[n] = owner[base]
        else:
            owner[n] = n
            size[n] = output_bytes(n)
        root = owner[n]
        last[root] = max(last.get(root, index[n]), index[n])
        if node_name(n) in pinned:
            last[root] = end
    for n in graph.nodes:
        for arg in n.all_input_nodes:
            if arg in owner:
                root = owner[arg]
                last[root] = max(last[root], end if n.op == "output" else index[n])
    delta = [0] * (end + 2)
    for root, nbytes in size.items():
        delta[index[root]] += nbytes
        delta[last[root] + 1] -= nbytes
    peak, at, live = 0, "", 0
    for i, n in enumerate(nodes):
        live += delta[i]
        if live > peak:
            peak, at = live, node_name(n)
    return peak, at


def profiler_peak(fn: Callable[[], Any]) -> int | None:
    """Peak of the CPU allocations ``torch.profiler`` records during one call of ``fn``.

    Each op's own allocations (``self_cpu_memory_usage``) count from its start; frees come as
    separate ``[memory]`` events. Their running sum in time order peaks at the value returned;
    ``None`` when the profiler records no memory on this build.
    """
    from torch.profiler import ProfilerActivity, profile

    # NOTE: the profiler's C++ side prints start/stop and CUDA probing lines straight to file
    # descriptor 2, past Python's sys.stderr; silence the descriptor for this one call.
    with _quiet_fd(2), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    changes = sorted(
        (
            e.time_range.start,
            e.cpu_memory_usage if e.name == "[memory]" else e.self_cpu_memory_usage,
        )
        for e in prof.events()
    )
    if not any(delta for _, delta in changes):
        return None
    live = peak = 0
    for _, delta in changes:
        live += delta
        peak = max(peak, live)
    return int(peak)


@contextlib.contextmanager
def _quiet_fd(fd: int) -> Iterator[None]:
    sys.stderr.flush()
    saved = os.dup(fd)
    try:
        with open(os.devnull, "w") as sink:
            os.dup2(sink.fileno(), fd)
            yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)


def time_nodes(gm: fx.GraphModule, inputs: Sequence[Any], *, repeats: int) -> dict[fx.Node, float]:
    """Median seconds each node takes when ``gm`` runs node by node, over ``repeats`` runs.

    The interpreter adds a fixed overhead per node, so use the shares, not the sums.
    """
    samples: dict[fx.Node, list[float]] = {}
    sync = _synchronizer(inputs)

    class _Timing(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            sync()
            start = time.perf_counter()
            result = super().run_node(n)
            sync()
            samples.setdefault(n, []).append(time.perf_counter() - start)
            return result

    with torch.no_grad():
        for _ in range(repeats):
            _Timing(gm).run(*inputs)
    return {n: sorted(ts)[len(ts) // 2] for n, ts in samples.items()}


def _meta_bytes(meta: Any) -> int:
    if meta is None:
        return 0
    shape, dtype = getattr(meta, "shape", None), getattr(meta, "dtype", None)
    if isinstance(shape, torch.Size) and isinstance(dtype, torch.dtype):
        # NOTE: TensorMetadata is a NamedTuple: test it before the tuple case.
        return shape.numel() * dtype.itemsize
    if isinstance(meta, (list, tuple)):
        return sum(_meta_bytes(m) for m in meta)
    if isinstance(meta, dict):
        return sum(_meta_bytes(m) for m in meta.values())
    return 0


def _synchronizer(inputs: Sequence[Any]) -> Callable[[], None]:
    devices = {t.device for t in inputs if isinstance(t, torch.Tensor)}
    cuda = next((d for d in devices if d.type == "cuda"), None)
    if cuda is None:
        return lambda: None
    return lambda: torch.cuda.synchronize(cuda)


def param_fields(full: nn.Module, extractor: nn.Module) -> dict[str, int]:
    """``CostReport``'s parameter fields: counts and bytes of ``full`` and ``extractor``, and
    the bytes of the storages they share (each storage once)."""
    full_params, kept_params = count_params([full]), count_params([extractor])
    shared = kept_params.storages & full_params.storages
    sizes = {}
    for t in (*extractor.parameters(), *extractor.buffers()):
        ptr = t.untyped_storage().data_ptr()
        if ptr in shared:
            sizes[ptr] = t.untyped_storage().nbytes()
    return {
        "full_params": full_params.params,
        "kept_params": kept_params.params,
        "full_bytes": full_params.param_bytes + full_params.buffer_bytes,
        "kept_bytes": kept_params.param_bytes + kept_params.buffer_bytes,
        "shared_bytes": sum(sizes.values()),
    }
