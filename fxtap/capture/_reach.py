"""Reach: which modules an early-exit capture runs, probed once at build, and dropping the rest.

A capture extractor whose calls all stop at the last tap never runs the modules after it (a
detection model's RPN, RoI heads or box head when only ``backbone`` is tapped). Built with
``example_inputs=``, the extractor runs one probe forward per mode on them, records every module
called before the stop, and replaces each largest subtree that was never called with a
``Dropped`` stub: the extractor then holds only the parameters the taps need. A later call
whose control flow differs from the probe's and does reach a dropped module gets a
``DroppedModuleError`` that says how to rebuild, never a wrong value.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import torch
from torch import nn

from fxtap._query import MODEL_OUTPUT
from fxtap.errors import DroppedModuleError, format_choices
from fxtap.trace import split_example_inputs

__all__ = ["Dropped", "count_tensors", "drop_after_probe", "drop_unreached", "probe_reach"]


class Dropped(nn.Module):
    """Stands in for a module that the build-time probe never reached; any use raises.

    Attributes:
        path: the module's path in the model.
        kind: the class name of the module it replaces.
        model_name: the class name of the model.
    """

    def __init__(self, path: str, kind: str, model_name: str) -> None:
        super().__init__()
        self.path, self.kind, self.model_name = path, kind, model_name

    def forward(self, *_args: Any, **_kwargs: Any) -> NoReturn:
        raise self.error("called")

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name in ("path", "kind", "model_name"):
            return super().__getattr__(name)  # nn.Module's own lookups (pickle, deepcopy)
        if name == "parametrizations":
            # NOTE: torch's parametrize.is_parametrized looks for it: a stub has none
            raise AttributeError(name)
        raise self.error(f"asked for its attribute {name!r}")

    def __iter__(self) -> Iterator[Any]:
        raise self.error("iterated over")

    def __len__(self) -> int:
        raise self.error("asked for its length")

    def __getitem__(self, _key: Any) -> NoReturn:
        raise self.error("indexed")

    def extra_repr(self) -> str:
        return f"{self.path!r}, was {self.kind}"

    def error(self, what: str) -> DroppedModuleError:
        """The error for a use of this stub; ``what`` says how it was used."""
        path, kind, model = (self.__dict__.get(k, "?") for k in ("path", "kind", "model_name"))
        return DroppedModuleError(
            f"module {path!r} ({kind}) of {model} was {what}, but this capture extractor "
            "dropped it: the probe run on example_inputs= at build time stopped at the last "
            "tap without reaching it, and this call's control flow differs from the probe's. "
            "Rebuild with example_inputs= that take the same path as these inputs, or without "
            "example_inputs= (nothing is dropped), or request ':output' to keep the whole model"
        )


def probe_reach(model: nn.Module, run: Callable[[], Any]) -> tuple[set[str], BaseException | None]:
    """Paths of the modules called while ``run()`` runs in one mode, and what it raised.

    ``run`` runs the model in the mode the caller set. Every buffer (BatchNorm statistics),
    training flag and the RNG state are put back afterwards, so the probe leaves no trace on
    the model the structure shares its tensors with.
    """
    reached: set[str] = set()
    handles = [
        # NOTE: prepended, so that a module is recorded even when a tap's own pre-hook
        # ends the forward at that module (an input tap)
        module.register_forward_pre_hook(lambda *_a, path=path: reached.add(path), prepend=True)
        for path, module in model.named_modules()
        if path
    ]
    failure: BaseException | None = None
    try:
        with _state_kept(model), torch.no_grad():
            run()
    except Exception as exc:  # the reason is shown in the build warning
        failure = exc
    finally:
        for handle in handles:
            handle.remove()
    return reached, failure


def drop_unreached(model: nn.Module, reached: set[str], *, model_name: str) -> tuple[str, ...]:
    """Replace each largest never-reached subtree of ``model`` by a ``Dropped`` stub.

    A module is kept when it or a module below it was reached (a ``ModuleList`` is never
    called itself). ``model`` must be a structural copy owned by the caller: its module
    dictionaries are rewritten.

    Returns:
        The paths of the dropped modules, in module order.
    """
    needed = {""}
    for path in reached:
        parts = path.split(".")
        needed.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    dropped: list[str] = []
    todo: list[tuple[str, nn.Module]] = [("", model)]
    while todo:
        prefix, parent = todo.pop()
        for name, child in list(parent._modules.items()):
            if child is None:
                continue
            path = f"{prefix}.{name}" if prefix else name
            if path in needed:
                todo.append((path, child))
            elif _holds_tensors(child):
                parent._modules[name] = Dropped(path, type(child).__name__, model_name)
                dropped.append(path)
    order = {p: i for i, (p, _) in enumerate(model.named_modules())}
    return tuple(sorted(dropped, key=lambda p: order.get(p, len(order))))


def count_tensors(model: nn.Module) -> int:
    """Number of parameter and buffer elements under ``model``."""
    return sum(t.numel() for t in (*model.parameters(), *model.buffers()))


def _holds_tensors(module: nn.Module) -> bool:
    # a module without parameters or buffers costs nothing to keep, and keeping it keeps its
    # attributes readable (a transform's settings read by code that does not call it)
    return any(True for _ in module.parameters()) or any(True for _ in module.buffers())


@contextlib.contextmanager
def _state_kept(model: nn.Module) -> Iterator[None]:
    training = {m: m.training for m in model.modules()}
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    rng = torch.get_rng_state()
    try:
        yield
    finally:
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
        torch.set_rng_state(rng)
        for m, flag in training.items():
            m.training = flag


def drop_after_probe(ex: Any, example_inputs: Any, model_name: str) -> str:
    """Probe each mode of capture extractor ``ex`` on ``example_inputs`` and drop what no probe
    reached; the text says what happened (for the build warning)."""
    if any(MODEL_OUTPUT in plan.outputs.values() for plan in ex._plans.values()):
        return ""  # the whole model runs: every module may be reached
    if example_inputs is None:
        return (
            "Every call stops at the last tap; pass example_inputs= to drop the modules "
            "after it (the extractor keeps the whole model). "
        )
    args, kwargs = split_example_inputs(ex.model, example_inputs)
    reached: set[str] = set()
    training = ex.training
    try:
        for mode in ex._plans:
            ex.train(mode == "train")
            seen, failure = probe_reach(ex.model, lambda: ex(*args, **kwargs))
            if failure is not None:
                why = _first_line_of(f"{type(failure).__name__}: {failure}")
                return (
                    f"Nothing dropped: the {mode}-mode probe run on example_inputs= raised "
                    f"{why}; pass example_inputs= that the model accepts in both modes. "
                )
            reached |= seen
    finally:
        ex.train(training)
    before = count_tensors(ex.model)
    ex.dropped = drop_unreached(ex.model, reached, model_name=model_name)
    if not ex.dropped:
        return "The probe run on example_inputs= reached every module: nothing dropped. "
    return (
        f"Dropped after the probe run on example_inputs= (never reached before the last "
        f"tap): {format_choices(ex.dropped)}; {count_tensors(ex.model):,} of {before:,} "
        "parameter and buffer elements kept. "
    )


def _first_line_of(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= 120 else line[:117] + "..."
