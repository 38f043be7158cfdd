"""Probe runs of a capture extractor: which module calls its model makes, and which it skips.

``render`` draws the calls and ``compare`` counts their FLOPs. A probe works on a deep copy of
the extractor, so the caller's extractor, its model and its buffers are never touched.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from fxtap import _compat
from fxtap._shapes import describe_value
from fxtap.errors import InvalidArgumentError, format_choices
from fxtap.trace import NodePathTracer

__all__ = ["ModuleCall", "Probe", "probe"]

#: Containers without a forward of their own: never drawn as a call.
_CONTAINERS = (nn.ModuleList, nn.ModuleDict)


@dataclass(frozen=True)
class ModuleCall:
    """The calls of one module outside the islands, or of one island, in a full forward.

    Attributes:
        path: the module's dotted path in the model.
        kind: ``'island'`` (run as its traced graph), ``'leaf'`` (a leaf module, such as
            ``nn.Conv2d``, run eagerly) or ``'opaque'`` (a module whose forward cannot be
            traced and that has no submodules, run eagerly).
        module_type: the module's class name.
        calls: how many times the full forward calls it.
        ran: whether the extractor's forward called it before its early exit.
        inputs: paths of the calls whose outputs its arguments are (``''``: the model's input),
            in argument order; empty when the data flow is not seen (values rebuilt in between).
        flops: FLOPs of all its calls in the full forward (``FlopCounterMode``).
        ran_flops: FLOPs of its calls in the extractor's forward.
        shape: what its first call returned (``describe_value``).
        first_args: the positional arguments of its first call (``None`` with keywords).
    """

    path: str
    kind: str
    module_type: str
    calls: int
    ran: bool
    inputs: tuple[str, ...]
    flops: int
    ran_flops: int
    shape: str | None = None
    first_args: tuple[Any, ...] | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class Probe:
    """One mode's probe runs of a capture extractor.

    Attributes:
        mode: ``'train'`` or ``'eval'``.
        calls: the drawn calls, in the order of their first call.
        containers: module path -> class name of each called module that is neither an island
            nor drawn as a call (its forward runs eagerly and calls the drawn ones).
        output_from: paths of the calls whose outputs the model's output holds.
        full_flops: FLOPs of the model's full forward.
        op_flops: aten op -> FLOPs of the full forward.
        extractor_flops: FLOPs of the extractor's call (up to its early exit).
        stopped_early: whether the extractor's call skipped calls of the full forward.
    """

    mode: str
    calls: tuple[ModuleCall, ...]
    containers: dict[str, str]
    output_from: tuple[str, ...]
    full_flops: int
    op_flops: dict[str, int]
    extractor_flops: int
    stopped_early: bool


def probe(extractor: Any, args: Sequence[Any], *, mode: str) -> Probe:
    """Run ``extractor``'s model once in full and the extractor once, recording module calls.

    Both runs go without autograd on a deep copy of the extractor; the global RNG state is
    restored afterwards. Exceptions of the model (an input it refuses) propagate.

    Args:
        extractor: a ``CaptureExtractor``.
        args: positional inputs of one forward.
        mode: ``'train'`` or ``'eval'``.

    Raises:
        InvalidArgumentError: the extractor dropped modules after its build-time probe, so
            its model cannot run in full.
    """
    dropped = getattr(extractor, "dropped", ())
    if dropped:
        name = type(extractor.model).__name__
        raise InvalidArgumentError(
            f"this capture extractor of {name} cannot run its model in full, as drawing and "
            f"measuring it need: it dropped {format_choices(dropped)} after its probe run on "
            "example_inputs= at build time. Pass the model itself with the taps: "
            "render(model, nodes=[...], example_inputs=...) (fxtap render MODEL --nodes NAME "
            "--input SHAPE), or build the extractor without example_inputs="
        )
    work = copy.deepcopy(extractor)
    work.train(mode == "train")
    model = work.model
    islands = set(work.islands[mode])
    units, containers = _units(model, islands)
    rng = torch.get_rng_state()
    try:
        counter = FlopCounterMode(display=False)
        full = _Recorder(model, units, containers, counter)
        with full, torch.no_grad(), counter:
            full.watch_inputs(args)
            output = model(*args)
        full_flops = int(counter.get_total_flops())
        op_flops = {str(k): int(v) for k, v in counter.get_flop_counts().get("Global", {}).items()}
        torch.set_rng_state(rng)
        with torch.no_grad():
            work(*args)  # NOTE: the first call of a mode also checks each island's graph
        torch.set_rng_state(rng)
        counter = FlopCounterMode(display=False)
        cut = _Recorder(model, units, containers, counter)
        with cut, torch.no_grad(), counter:
            work(*args)
        extractor_flops = int(counter.get_total_flops())
    finally:
        torch.set_rng_state(rng)
    calls = tuple(
        ModuleCall(
            path=path,
            kind=units[path][0],
            module_type=units[path][1],
            calls=full.count[path],
            ran=path in cut.count,
            inputs=tuple(full.inputs[path]),
            flops=full.flops.get(path, 0),
            ran_flops=cut.flops.get(path, 0),
            shape=full.shapes.get(path),
            first_args=full.first_args.get(path),
        )
        for path in full.count
    )
    return Probe(
        mode=mode,
        calls=calls,
        containers={p: containers[p] for p in full.entered},
        output_from=tuple(full.producers(output)),
        full_flops=full_flops,
        op_flops=op_flops,
        extractor_flops=extractor_flops,
        stopped_early=set(cut.count) != set(full.count),
    )


def _units(
    model: nn.Module, islands: set[str]
) -> tuple[dict[str, tuple[str, str]], dict[str, str]]:
    """Drawn calls (path -> kind, class name) and the containers between them and the root."""
    judge = NodePathTracer()
    units: dict[str, tuple[str, str]] = {}
    containers: dict[str, str] = {}
    inside: str | None = None
    for path, module in model.named_modules():
        if not path or (inside is not None and path.startswith(inside)):
            continue
        inside = None
        name = type(module).__name__
        if path in islands:
            units[path] = ("island", name)
        elif isinstance(module, _CONTAINERS):
            continue
        elif judge.is_leaf_module(module, path):
            units[path] = ("leaf", name)
        elif not any(True for _ in module.children()):
            units[path] = ("opaque", name)
        else:
            containers[path] = name
            continue
        inside = path + "."
    return units, containers


class _Recorder:
    """Forward hooks on the drawn modules: call counts, FLOPs and data flow by tensor storage."""

    def __init__(
        self,
        model: nn.Module,
        units: Mapping[str, tuple[str, str]],
        containers: Mapping[str, str],
        counter: FlopCounterMode,
    ) -> None:
        self.model, self.units, self.containers = model, units, containers
        self.counter = counter
        self.count: dict[str, int] = {}
        self.flops: dict[str, int] = {}
        self.inputs: dict[str, dict[str, None]] = {}
        self.entered: dict[str, None] = {}
        self.shapes: dict[str, str] = {}
        self.first_args: dict[str, tuple[Any, ...] | None] = {}
        self._made: dict[int, str] = {}
        self._alive: list[torch.Tensor] = []  # keeps storages from being reused mid-run
        self._start: dict[str, int] = {}
        self._handles: list[Any] = []

    def __enter__(self) -> _Recorder:
        for path, module in self.model.named_modules():
            if path in self.units:
                self._handles += [
                    module.register_forward_pre_hook(self._pre(path), with_kwargs=True),
                    module.register_forward_hook(self._post(path), with_kwargs=True),
                ]
            elif path in self.containers:
                self._handles.append(module.register_forward_pre_hook(self._enter(path)))
        return self

    def __exit__(self, *exc: object) -> None:
        # a call cut short by the early exit (``Stop`` raised in its own hook) ends here
        for path, start in self._start.items():
            self.flops[path] = self.flops.get(path, 0) + self._flops() - start
        for handle in self._handles:
            handle.remove()

    def _flops(self) -> int:
        return int(self.counter.get_total_flops())

    def watch_inputs(self, args: Any) -> None:
        self._mark(args, "")

    def producers(self, value: Any) -> list[str]:
        out: dict[str, None] = {}
        for t in _tensors(value):
            made = self._made.get(_storage(t))
            if made is not None:
                out.setdefault(made, None)
        return list(out)

    def _enter(self, path: str) -> Any:
        def hook(_module: nn.Module, _args: Any) -> None:
            self.entered.setdefault(path, None)

        return hook

    def _pre(self, path: str) -> Any:
        def hook(_module: nn.Module, args: Any, kwargs: Any) -> None:
            self.count[path] = self.count.get(path, 0) + 1
            self.first_args.setdefault(path, None if kwargs else tuple(args))
            seen = self.inputs.setdefault(path, {})
            for made in self.producers((args, kwargs)):
                if made != path:
                    seen.setdefault(made, None)
            self._start[path] = self._flops()

        return hook

    def _post(self, path: str) -> Any:
        def hook(_module: nn.Module, _args: Any, _kwargs: Any, output: Any) -> None:
            done = self._flops() - self._start.pop(path)
            self.flops[path] = self.flops.get(path, 0) + done
            self.shapes.setdefault(path, describe_value(output))
            self._mark(output, path)

        return hook

    def _mark(self, value: Any, path: str) -> None:
        for t in _tensors(value):
            self._alive.append(t)
            self._made[_storage(t)] = path


def _tensors(value: Any) -> list[torch.Tensor]:
    """Strided tensors in ``value``, looking one level into plain objects (an ``ImageList``)."""
    out = []
    for leaf in _compat.tree_leaves(value):
        inner = _compat.tree_leaves(list(vars(leaf).values())) if _plain(leaf) else []
        for t in (leaf, *inner):
            if isinstance(t, torch.Tensor) and t.layout == torch.strided:
                out.append(t)
    return out


def _plain(value: Any) -> bool:
    return not isinstance(value, (torch.Tensor, nn.Module)) and hasattr(value, "__dict__")


def _storage(tensor: torch.Tensor) -> int:
    return int(tensor.untyped_storage().data_ptr())
