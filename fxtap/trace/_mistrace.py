"""The mis-trace check: run a traced graph and the eager model side by side, module by module."""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

from fxtap._compat import vmap_levels_kept
from fxtap._fx import node_scope
from fxtap.errors import InputShapeError
from fxtap.trace._options import restore_training
from fxtap.trace._tracer import Traced

try:
    import numpy as np
except ImportError:  # pragma: no cover - torch runs without numpy
    np = None  # type: ignore[assignment]

__all__ = ["Mismatch", "difference", "find_mistrace", "frozen_state", "shorten"]

#: Tolerances of the eager check: a faithful graph runs the very same ops, so any real
#: mis-trace shows up far above them.
RTOL, ATOL = 1e-4, 1e-5


@dataclass(frozen=True)
class Mismatch:
    """The first module whose traced value differs from its eager value."""

    module_path: str
    reason: str


def find_mistrace(
    model: nn.Module,
    traced: Traced,
    example_inputs: Any,
    *,
    keywords: Mapping[str, Any] | None = None,
    seed: int | None = None,
    draws: list[bool] | None = None,
    exact: bool = False,
) -> Mismatch | None:
    """Run ``model`` eagerly and ``traced`` on the same inputs; find the first module that differs.

    Modules are compared in the order their first call finishes (inner before outer). When a
    module's output differs but its input agrees, the module itself mis-traced; when the input
    differs too, the enclosing module's own code did, so the closest ancestor whose input still
    agrees is reported. Both runs start from the same RNG state and buffers, without gradients;
    buffers, RNG state and training flags are put back afterwards. With ``seed``, both runs
    start from that seed of torch's, numpy's and Python's generators (a second draw of every
    source of randomness). ``keywords`` are keyword inputs, as the export path takes them: the
    graph's placeholders are the positional inputs, then the keyword ones by name. ``draws``,
    when given, gets whether the eager run drew from any CPU generator (torch's, numpy's,
    Python's); a run that drew from none runs the same from every seed. With ``exact``,
    floating-point values must be bitwise equal, not within the tolerances.

    Raises:
        InputShapeError: the eager model rejects ``example_inputs``.
    """
    inputs = example_inputs if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    keywords = dict(keywords or {})
    gm = traced.graph_module
    eager_in: dict[str, Any] = {}
    eager_out: dict[str, Any] = {}
    handles = []
    for path, module in model.named_modules():

        def hook(_m: nn.Module, args: Any, out: Any, path: str = path) -> None:
            if path not in eager_out:
                eager_in[path] = _detached(args[0]) if args else None
                eager_out[path] = _detached(out)

        handles.append(module.register_forward_hook(hook))
    with frozen_state(model), restore_training(model), torch.no_grad():
        model.train(traced.training)
        if seed is not None:
            _seed_all(seed)
        rng = torch.get_rng_state()
        seeded = _rng_states() if draws is not None else None
        try:
            final = _detached(model(*inputs, **keywords))
            if draws is not None:
                draws.append(not _same_states(seeded, _rng_states()))
        except Exception as exc:
            raise InputShapeError(
                f"example inputs do not fit {type(model).__name__}: {type(exc).__name__}: {exc}. "
                "Pass inputs the model accepts, e.g. (torch.randn(1, 3, 224, 224),)"
            ) from exc
        finally:
            for h in handles:
                h.remove()
    wanted = _nodes_in(traced)
    with frozen_state(model), restore_training(model), torch.no_grad():
        model.train(traced.training)
        if seed is not None:
            _seed_all(seed)
        torch.set_rng_state(rng)
        recorder = _Recorder(gm, wanted)
        try:
            with vmap_levels_kept():
                recorder.run(*_graph_inputs(gm, inputs, keywords))
        except Exception as exc:
            node = recorder.current
            scope = node_scope(node) if node is not None else ""
            return Mismatch(scope, f"the graph raised {type(exc).__name__} where the model runs")
    values = recorder.values
    eager_out[""] = final
    outputs = dict(traced.module_outputs)
    outputs[""] = next(n for n in reversed(gm.graph.nodes) if n.op == "output").args[0]
    for path, out in outputs.items():
        if path not in eager_out:
            continue
        diff = difference(_fill(out, values), eager_out[path], exact=exact)
        if diff is None:
            continue
        if path and not _input_differs(path, traced, values, eager_in):
            return Mismatch(path, f"traced value differs from eager execution: {diff}")
        culprit = path.rpartition(".")[0] if path else ""
        while culprit and _input_differs(culprit, traced, values, eager_in):
            culprit = culprit.rpartition(".")[0]
        return Mismatch(
            culprit, f"traced value differs from eager execution in its own code: {diff}"
        )
    return None


class frozen_state:
    """Context manager putting buffers and the CPU RNG states (torch's, numpy's, Python's)
    back on exit."""

    def __init__(self, model: nn.Module) -> None:
        self.buffers = [(b, b.detach().clone()) for b in model.buffers()]
        self.rng = torch.get_rng_state()
        self.py_rng = random.getstate()
        self.np_rng = np.random.get_state() if np is not None else None

    def __enter__(self) -> frozen_state:
        return self

    def __exit__(self, *exc: object) -> None:
        with torch.no_grad():
            for b, saved in self.buffers:
                b.copy_(saved)
        torch.set_rng_state(self.rng)
        random.setstate(self.py_rng)
        if np is not None:
            np.random.set_state(self.np_rng)


def _rng_states() -> tuple[Any, ...]:
    """The CPU generators' states, and CUDA's once it is in use (a model on the GPU draws
    its dropout masks there)."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []
    numpy = np.random.get_state() if np is not None else None
    return (torch.get_rng_state(), *cuda, random.getstate(), numpy)


def _same_states(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same_states(x, y) for x, y in zip(a, b))
    if np is not None and isinstance(a, np.ndarray):
        return bool(np.array_equal(a, b))
    return bool(a == b)


def _seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    if np is not None:
        np.random.seed(seed)


def _graph_inputs(gm: fx.GraphModule, inputs: Any, keywords: Mapping[str, Any]) -> list[Any]:
    """Values of the graph's placeholders: the positional inputs, then keyword ones by name."""
    if not keywords:
        return list(inputs)
    names = [n.target for n in gm.graph.nodes if n.op == "placeholder"]
    return [*inputs, *(keywords[str(name)] for name in names[len(inputs) :])]


class _Recorder(fx.Interpreter):
    """Run a graph, keeping a detached copy of each wanted node's value as it is produced."""

    def __init__(self, gm: fx.GraphModule, wanted: set[fx.Node]) -> None:
        super().__init__(gm, garbage_collect_values=True)
        self.wanted = wanted
        self.values: dict[fx.Node, Any] = {}
        self.current: fx.Node | None = None

    def run_node(self, n: fx.Node) -> Any:
        self.current = n
        out = super().run_node(n)
        if n in self.wanted:
            self.values[n] = _detached(out)
        return out


def _nodes_in(traced: Traced) -> set[fx.Node]:
    found: set[fx.Node] = set(traced.module_inputs.values())

    def visit(node: fx.Node) -> fx.Node:
        found.add(node)
        return node

    for out in traced.module_outputs.values():
        fx.node.map_arg(out, visit)
    # NOTE: the graph output's own nodes too: code of the root forward outside any submodule
    # (``self.lin(x) * random.random()``) has no module output to compare it by.
    output = next(n for n in reversed(traced.graph_module.graph.nodes) if n.op == "output")
    fx.node.map_arg(output.args[0], visit)
    return found


def _fill(structure: Any, values: Mapping[fx.Node, Any]) -> Any:
    return fx.node.map_aggregate(
        structure, lambda a: values.get(a, _MISSING) if isinstance(a, fx.Node) else a
    )


def _input_differs(
    path: str, traced: Traced, values: Mapping[fx.Node, Any], eager_in: Mapping[str, Any]
) -> bool:
    node = traced.module_inputs.get(path)
    if node is None or eager_in.get(path) is None or node not in values:
        return False
    return difference(values[node], eager_in[path]) is not None


_MISSING = object()


def difference(traced: Any, eager: Any, *, exact: bool = False) -> str | None:
    """A short description of how ``traced`` differs from ``eager``, or ``None`` when equal
    (``exact``: bitwise, else within the check's tolerances)."""
    if traced is _MISSING or isinstance(traced, fx.Proxy) or eager is None:
        # NOTE: an output that is None when the model runs (a ModelOutput field, a dict value
        # the graph fills in) is the same structure whatever the graph holds there
        return None
    if isinstance(eager, torch.Tensor) or isinstance(traced, torch.Tensor):
        if not (isinstance(eager, torch.Tensor) and isinstance(traced, torch.Tensor)):
            return f"{type(traced).__name__} instead of {type(eager).__name__}"
        if traced.shape != eager.shape or traced.dtype != eager.dtype:
            return f"shape {tuple(traced.shape)} instead of {tuple(eager.shape)}"
        if traced.is_floating_point() or traced.is_complex():
            if exact and torch.equal(traced, eager):
                return None
            if not exact and torch.allclose(traced, eager, rtol=RTOL, atol=ATOL, equal_nan=True):
                return None
            gap = (traced - eager).abs().nan_to_num(0).max().item()
            return f"max abs diff {gap:.3g}"
        return None if torch.equal(traced, eager) else "integer values differ"
    if isinstance(eager, Mapping) and isinstance(traced, Mapping):
        # keys holding None are left out: transformers' ModelOutput drops them from its keys
        eager = {k: v for k, v in eager.items() if v is not None}
        traced = {k: v for k, v in traced.items() if v is not None}
        if list(eager) != list(traced):
            return f"keys {list(traced)[:4]} instead of {list(eager)[:4]}"
        return next((d for k in eager if (d := difference(traced[k], eager[k], exact=exact))), None)
    if isinstance(eager, (list, tuple)) and isinstance(traced, (list, tuple)):
        if len(eager) != len(traced):
            return f"{len(traced)} items instead of {len(eager)}"
        return next(
            (d for a, b in zip(traced, eager) if (d := difference(a, b, exact=exact))), None
        )
    if isinstance(eager, (int, float, bool, str, type(None))):
        try:
            same = bool(traced == eager)
        except Exception:  # pragma: no cover - exotic comparisons
            return None
        return None if same else f"{traced!r:.40} instead of {eager!r:.40}"
    return None


def _detached(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(_detached(v) for v in value))
    if isinstance(value, (list, tuple)):
        return type(value)(_detached(v) for v in value)
    if isinstance(value, dict):
        return {k: _detached(v) for k, v in value.items()}
    return value


def shorten(text: str, limit: int = 160) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."
