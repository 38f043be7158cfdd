"""The export path checks itself: the exported graph against the eager model, as on the fx path.

torch.export runs the model once, on fake tensors, and records ATen ops. What the model computes
outside torch (a mask drawn with numpy or Python's ``random``, a value read with ``.item()`` and
used as a Python number) is recorded as the constant it had then, and the graph returns it on
every call while the model computes it afresh. ``check_export`` runs graph and model side by
side on the example inputs, from two seeds of every generator (torch, numpy, ``random``), and
refuses a graph that differs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from fxtap._compat import distribution_checks, pytree
from fxtap.errors import TraceError
from fxtap.trace._export_regions import is_grad_region, region_graphs
from fxtap.trace._mistrace import Mismatch, difference, find_mistrace, frozen_state
from fxtap.trace._options import restore_training
from fxtap.trace._tracer import Traced

try:
    import numpy as np
except ImportError:  # pragma: no cover - torch runs without numpy
    np = None  # type: ignore[assignment]

__all__ = [
    "SEEDS",
    "check_export",
    "check_higher_order_ops",
    "exact_on_example",
    "first_mismatch",
    "kept_rng",
    "leaf_outputs",
]

#: Seeds of the two runs: two draws of every source of randomness.
SEEDS = (0, 1)


def check_export(
    model: nn.Module, traced: Traced, args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> None:
    """Raise ``TraceError`` unless ``traced`` computes what ``model`` does on these inputs.

    Runs ``first_mismatch``; the model's buffers, every RNG state and its training flags are
    left as they were. The error names the module whose value differs and the generator it
    draws from, and is a root failure, so ``create_feature_extractor`` falls back to the
    capture path with a warning that says so.

    Raises:
        TraceError: the graph differs from the model on some seed.
    """
    found = first_mismatch(model, leaf_outputs(model, traced), args, kwargs)
    if found is not None:
        bad, seed = found
        name = type(model).__name__
        where = f"module {bad.module_path!r}" if bad.module_path else f"the root {name}"
        source = _random_source(model, traced.training, args, kwargs)
        why = (
            f"{name} draws from {source}, which torch.export records as the constant drawn "
            "while exporting, so the graph would return the same values on every call"
            if source
            else "the graph holds a value the model computes afresh on each call (read "
            "as a Python number while exporting)"
        )
        fix = (
            "turn that randomness off in the model's config for train mode (for SpecAugment: "
            "mask_time_prob=0.0, mask_feature_prob=0.0), tap in eval mode, or use tracer='fx' "
            "to take the capture path"
        )
        reason = f"{where}: {bad.reason} (seed {seed})"
        raise TraceError(
            f"the {traced.mode} graph that torch.export gave for {name} differs from the model: "
            f"{reason}; {why}. Fix: {fix}.",
            module_path="",
            reason=reason,
        )


def exact_on_example(
    model: nn.Module, traced: Traced, args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> bool:
    """Whether ``traced`` gives bitwise the model's values on the example inputs (leaf modules
    and the output, from the first seed), not only values within the check's tolerances."""
    compared = leaf_outputs(model, traced)
    return find_mistrace(model, compared, args, keywords=kwargs, seed=SEEDS[0], exact=True) is None


def first_mismatch(
    model: nn.Module, compared: Traced, args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> tuple[Mismatch, int] | None:
    """The first module where ``compared`` differs from ``model``, and the seed, or ``None``.

    Runs ``find_mistrace`` (module by module) from each seed of ``SEEDS``; a model whose run
    from the first seed drew from no generator runs the same from any seed, so the second
    run is left out.

    Raises:
        InputShapeError: the model itself refuses the inputs.
    """
    for seed in SEEDS:
        draws: list[bool] = []
        bad = find_mistrace(model, compared, args, keywords=kwargs, seed=seed, draws=draws)
        if bad is not None:
            return bad, seed
        if not any(draws):
            return None
    return None


def leaf_outputs(model: nn.Module, traced: Traced) -> Traced:
    """``traced`` with the module outputs ``check_export`` compares: those of leaf modules."""
    # NOTE: the last node of a non-leaf module's call is not always its output (its output
    # may be a tuple built elsewhere), so only leaf modules, named by their path, and the
    # graph's output are compared
    modules = dict(model.named_modules())
    leaves = {name: node for node, name in traced.names.items() if name in modules and name}
    leaves = {k: v for k, v in leaves.items() if v.op != "placeholder"}
    return dataclasses.replace(traced, module_outputs=leaves)


def check_higher_order_ops(ep: Any, model: nn.Module, mode: str) -> None:
    """Raise ``TraceError`` when the exported program holds a higher-order op it cannot carry.

    Grad-mode regions (``torch.no_grad()``: ``wrap_with_set_grad_enabled``) are inlined by
    ``fxtap.trace._export_regions``; ``cond``, ``map`` and the others call a subgraph the
    export path does not carry over, and refusing them with a root ``TraceError`` lets
    ``create_feature_extractor`` fall back to the capture path.
    """
    for node, _ in region_graphs(ep.graph_module):
        # NOTE: torch.ops.higher_order's operators say so in their namespace (their class,
        # HigherOrderOperator, is not public)
        if (
            node.op == "call_function"
            and getattr(node.target, "namespace", None) == "higher_order"
            and not is_grad_region(node.target)
        ):
            stack = node.meta.get("nn_module_stack") or {}
            path = next(reversed(stack.values()))[0] if stack else ""
            where = f" in module {path!r}" if path else ""
            target: Any = node.target
            kind = target.name() if callable(getattr(target, "name", None)) else target
            raise TraceError(
                f"torch.export recorded the higher-order op {kind!r}{where} of "
                f"{type(model).__name__} ({mode} mode): a region such as cond or map, which "
                "the export path does not carry over. Fix: use tracer='fx' to "
                "take the capture path (create_feature_extractor does so by default)",
                module_path="",
                reason=f"higher-order op {kind}",
            )


@contextlib.contextmanager
def kept_rng() -> Iterator[None]:
    """Seed numpy's and Python's generators with 0, and put every CPU generator back on exit.

    Around each ``torch.export`` attempt: a model that draws with numpy while exporting
    (SpecAugment) takes another path on each draw, so every build starts from the same
    state and ends the same way, and the caller's generators are left as they were.

    ``torch.distributions`` skip their argument checks meanwhile: a check is a branch on
    the data (``if not constraint.check(value).all(): raise``) that export cannot trace
    (GroupViT's Gumbel noise, BLT's entropy), and it never changes a value.
    """
    torch_state, py_state = torch.get_rng_state(), random.getstate()
    np_state = np.random.get_state() if np is not None else None
    checks = distribution_checks()
    random.seed(0)
    if np is not None:
        np.random.seed(0)
    torch.distributions.Distribution.set_default_validate_args(False)
    try:
        yield
    finally:
        torch.distributions.Distribution.set_default_validate_args(checks)
        torch.set_rng_state(torch_state)
        random.setstate(py_state)
        if np is not None:
            np.random.set_state(np_state)


def _random_source(
    model: nn.Module, training: bool, args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> str | None:
    """``"numpy's random generator"`` or ``"Python's random module"`` when the model's output
    changes with that generator's seed alone, else ``None``."""
    seeders: list[tuple[str, Any]] = [("Python's random module", random.seed)]
    if np is not None:
        seeders.insert(0, ("numpy's random generator", np.random.seed))
    with frozen_state(model), restore_training(model), torch.no_grad():
        model.train(training)
        for label, seeder in seeders:
            outputs = []
            for seed in SEEDS:
                torch.manual_seed(0)
                random.seed(0)
                if np is not None:
                    np.random.seed(0)
                seeder(seed)
                outputs.append(pytree.tree_map(_copy, model(*args, **kwargs)))
            if difference(outputs[0], outputs[1]) is not None:
                return label
    return None


def _copy(value: Any) -> Any:
    return value.detach().clone() if isinstance(value, torch.Tensor) else value
