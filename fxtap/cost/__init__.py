"""Measure what an extractor costs next to the full model, against the physical limit."""

from __future__ import annotations

import copy
import os
import platform
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from fxtap._budget import budget_problem
from fxtap._protocol import CostJob
from fxtap._query import requests_by_mode
from fxtap.cost._report import CostReport, NodeCost, VariantCost
from fxtap.cost._time import Progress, bimodal
from fxtap.errors import InvalidArgumentError
from fxtap.extractor import build_extractor
from fxtap.split import tail_keys
from fxtap.trace import TraceOptions, check_model, check_tracer, restore_training

__all__ = ["VARIANTS", "CostReport", "NodeCost", "VariantCost", "compare"]

#: The variants compared, in table order.
VARIANTS = ("full", "hooks", "extractor")


def compare(  # noqa: PLR0913 - keyword options, one per timing and tracing choice
    model: nn.Module,
    return_nodes: list[str] | dict[str, str],
    example_inputs: torch.Tensor | Sequence[torch.Tensor] | Mapping[str, Any],
    *,
    device: str | torch.device = "cpu",
    threads: int | None = None,
    min_run_time: float = 0.2,
    rounds: int = 10,
    warmup: int = 3,
    training: bool = False,
    tracer_kwargs: Mapping[str, Any] | None = None,
    node_repeats: int = 5,
    profile_memory: bool = True,
    noise_threshold: float | None = 0.1,
    progress: bool = True,
    tracer: str = "auto",
    auto_leaf: bool = True,
) -> CostReport:
    """Compare the full model, the full model with forward hooks, and the fxtap extractor.

    FLOPs come from ``FlopCounterMode`` per node of the full graph; parameters count each
    storage once; peak activation memory is a liveness estimate from the graph (plus the
    profiler's figure on CPU and ``max_memory_allocated`` on CUDA); latency is timed with
    ``torch.utils.benchmark.Timer`` in interleaved rounds. Every forward pass runs without
    autograd. The model is left as it was (mode, buffers, hooks, device).

    Args:
        model: the full model.
        return_nodes: the taps, as for ``create_feature_extractor``.
        example_inputs: a tensor or a tuple of tensors for one forward pass; for the tail of
            a ``split``, the boundary dict its head returns (``head(x)``).
        device: where to run (the model is copied there if it lives elsewhere).
        threads: intra-op threads for every timing (default: ``torch.get_num_threads()``).
        min_run_time: seconds each variant is timed per round.
        rounds: interleaved rounds; medians and paired ratios are over rounds.
        warmup: untimed calls of each variant before timing.
        training: measure the train-mode graphs instead of the eval-mode ones.
        tracer_kwargs: ``NodePathTracer`` options.
        node_repeats: node-by-node timed runs of the full graph for the kept time share
            (0 skips them).
        profile_memory: on CPU, also record peak allocations with ``torch.profiler``.
        noise_threshold: warn when a variant's IQR exceeds this fraction of its median
            (``None`` never warns).
        progress: show progress on stderr, when stderr is a terminal (a redrawn line).
        tracer: ``"auto"`` (torch.fx; torch.export on ``example_inputs`` when torch.fx cannot
            trace the root forward, as for Hugging Face models), ``"fx"`` or ``"export"``
            (docs/tracing.md).
        auto_leaf: keep untraceable submodules opaque, and measure the capture path when the
            root forward cannot be traced, as ``create_feature_extractor`` does.

    Returns:
        A ``CostReport``: ``print(report.table())``, ``report.to_json(path)``, ``.plot(path)``.

    Raises:
        InvalidArgumentError: bad ``threads``, ``rounds``, ``min_run_time`` or ``device``.
        NodeNotFoundError: a tap matches no node.
        InputShapeError: the inputs do not fit the model.

    >>> model = torchvision.models.resnet18()
    >>> report = compare(model, ["layer2"], torch.rand(1, 3, 224, 224), threads=2, progress=False)
    >>> round(report.kept_fraction, 3)
    0.547
    """
    check_model(model)
    check_tracer(tracer)
    if isinstance(example_inputs, torch.Tensor):
        inputs: tuple[Any, ...] = (example_inputs,)
    elif isinstance(example_inputs, Mapping) and tail_keys(model) is not None:
        inputs = (example_inputs,)  # the boundary, the one argument of a split's tail
    elif isinstance(example_inputs, Sequence) and not isinstance(example_inputs, str):
        inputs = tuple(example_inputs)
    else:
        raise InvalidArgumentError(
            f"example_inputs {example_inputs!r:.80} is a {type(example_inputs).__name__}; "
            "compare runs the model, so it needs a tensor or a tuple of tensors, e.g. "
            "example_inputs=(torch.randn(1, 3, 224, 224),) (the tail of a split takes the "
            "dict its head returns: example_inputs=head(x))"
        )
    dev = _check_options(device, threads, rounds, min_run_time, warmup, node_repeats)
    threads = threads if threads is not None else torch.get_num_threads()
    inputs = tuple(t.to(dev) if isinstance(t, torch.Tensor) else t for t in inputs)
    show = Progress(progress)
    work = model if all(t.device == dev for t in _tensors(model)) else _moved(model, dev)
    saved = {k: b.detach().clone() for k, b in work.named_buffers()}
    mode = "train" if training else "eval"
    try:
        with restore_training(work):
            work.train(training)
            show.show("tracing")
            # NOTE: the inputs are timed and exported with, not run for torch.fx's eager check
            tracing = TraceOptions(
                tracer=tracer,
                tracer_kwargs=tracer_kwargs,
                auto_leaf=auto_leaf,
                example_inputs=inputs,
                check=False,
            )
            requests = requests_by_mode(return_nodes, None, None)
            extractor = build_extractor(work, requests, tracing, keep_traces=True)
            extractor.train(training)
            options = {
                "min_run_time": min_run_time,
                "rounds": rounds,
                "warmup": warmup,
                "node_repeats": node_repeats,
                "profile_memory": profile_memory,
            }
            environment = _environment(dev, threads)
            job = CostJob(
                work, mode, inputs, dev, threads, return_nodes, show, environment, options
            )
            report = extractor.measure(job)
    finally:
        with torch.no_grad():
            for k, b in work.named_buffers():
                b.copy_(saved[k])
        show.done()
    for message in _noise_messages(report, noise_threshold):
        warnings.warn(message, UserWarning, stacklevel=2)
    return report


def _check_options(
    device: Any, threads: Any, rounds: Any, min_run_time: Any, warmup: Any, node_repeats: Any
) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InvalidArgumentError(
            f"device {device!r} is not a torch device; expected 'cpu', 'cuda' or 'cuda:1'"
        ) from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InvalidArgumentError(
            f"device {device!r} was requested but CUDA is not available here; use device='cpu'"
        )
    if not (threads is None or (isinstance(threads, int) and threads >= 1)):
        raise InvalidArgumentError(
            f"threads={threads!r} is out of range; expected a whole number of 1 or more "
            "(e.g. threads=2), or None for torch's default"
        )
    budgets = {
        "rounds": rounds,
        "warmup": warmup,
        "node_repeats": node_repeats,
        "min_run_time": min_run_time,
    }
    for name, value in budgets.items():
        problem = budget_problem(name, value)
        if problem is not None:
            raise InvalidArgumentError(
                f"{name}={value!r} is out of range: {problem} (e.g. rounds=10, "
                "min_run_time=0.2); checked before anything is traced or timed"
            )
    return dev


def _noise_messages(report: CostReport, threshold: float | None) -> list[str]:
    messages = []
    for v in report.variants:
        spread = v.iqr / v.median if v.median > 0 else 0.0
        if threshold is not None and spread > threshold:
            messages.append(
                f"latency of {v.name!r} is noisy: IQR is {spread:.0%} of the median over "
                f"{len(v.samples)} rounds (threshold {threshold:.0%}); another process may be "
                "using the CPU. Use more rounds=, a longer min_run_time=, or fewer threads="
            )
        if bimodal(v.samples):
            messages.append(
                f"latency of {v.name!r} is bimodal over {len(v.samples)} rounds (two separate "
                "groups of timings); the machine changed state while timing. Re-run on an idle "
                "machine or with more rounds="
            )
    return messages


def _environment(dev: torch.device, threads: int) -> dict[str, Any]:
    load = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    env: dict[str, Any] = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(dev),
        "threads": threads,
        "cpu_count": os.cpu_count(),
        "loadavg": load,
    }
    if dev.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(dev)
    return env


def _tensors(model: nn.Module) -> list[torch.Tensor]:
    return [*model.parameters(), *model.buffers()]


def _moved(model: nn.Module, dev: torch.device) -> nn.Module:
    # NOTE: .to() moves in place; a copy keeps the caller's model where it was.
    return copy.deepcopy(model).to(dev)
