"""Per-call state of the capture path, and the hook objects that fill it.

Hooks are registered once, on the extractor's structural copy of the model; each forward of
the extractor pushes a ``Call`` onto a context variable, and the hooks write into the
innermost call of their own extractor. Threads each see their own calls (a context variable
starts empty in every thread), and a call made from inside another sees only itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from fxtap import _compat
from fxtap.prune import clone_tensors

__all__ = [
    "Call",
    "Channel",
    "InputTap",
    "OutputTap",
    "Stop",
    "current",
    "current_call",
    "running",
    "suspended",
]


class Channel:
    """The identity shared by one extractor and its hooks (copied and pickled with them)."""

    __slots__ = ()

    def __getstate__(self) -> tuple[()]:
        return ()

    def __setstate__(self, _state: tuple[()]) -> None:
        return None


class Stop(BaseException):
    """Raised once every requested value of a call is captured, to skip the rest of the model.

    A ``BaseException`` so that model code catching ``Exception`` does not swallow it.
    """


@dataclass
class Call:
    """One forward of a ``CaptureExtractor``: its mode, what it still waits for, what it got.

    Attributes:
        channel: the extractor's channel; hooks of other extractors ignore this call.
        mode: ``'train'`` or ``'eval'``; hooks of the other mode ignore it.
        wanted: output keys served by hooks in this call.
        stop_early: whether the forward may stop once ``wanted`` is complete.
        store: output key -> captured value.
        served: taps (module paths, with ``':input'`` for inputs) already served this call.
    """

    channel: Channel
    mode: str
    wanted: frozenset[str | int]
    stop_early: bool
    store: dict[str | int, Any] = field(default_factory=dict)
    served: set[str] = field(default_factory=set)

    def first(self, tap: str) -> bool:
        """True the first time ``tap`` is served in this call."""
        if tap in self.served:
            return False
        self.served.add(tap)
        return True

    def maybe_stop(self) -> None:
        """Raise ``Stop`` when nothing more is wanted from the rest of the forward."""
        if self.stop_early and self.wanted.issubset(self.store):
            raise Stop


_CALLS: ContextVar[tuple[Call, ...]] = ContextVar("fxtap_capture_calls", default=())


def current_call(channel: Channel) -> Call | None:
    """The innermost running call of ``channel``, if any."""
    for call in reversed(_CALLS.get()):
        if call.channel is channel:
            return call
    return None


def current(channel: Channel, mode: str) -> Call | None:
    """The innermost running call of ``channel`` if it runs in ``mode``."""
    call = current_call(channel)
    return call if call is not None and call.mode == mode else None


@contextlib.contextmanager
def running(call: Call) -> Iterator[Call]:
    """Make ``call`` the innermost call for the block."""
    token = _CALLS.set((*_CALLS.get(), call))
    try:
        yield call
    finally:
        _CALLS.reset(token)


@contextlib.contextmanager
def suspended() -> Iterator[None]:
    """Hide every running call for the block (the eager check of an island)."""
    token = _CALLS.set(())
    try:
        yield
    finally:
        _CALLS.reset(token)


class InputTap:
    """Forward pre-hook: copies the first argument of a module's first call in a forward."""

    def __init__(self, channel: Channel, mode: str, path: str, keys: tuple[str | int, ...]) -> None:
        self.channel, self.mode, self.path, self.keys = channel, mode, path, keys

    def __call__(self, _module: nn.Module, args: Any, kwargs: Any) -> None:
        call = current(self.channel, self.mode)
        if call is None or not call.first(f"{self.path}:input"):
            return
        # NOTE: copied because the module (an in-place ReLU) or later code may write into its
        # input; the input itself cannot be swapped, other code of the model may hold it
        value = clone_tensors(args[0] if args else next(iter(kwargs.values()), None))
        for key in self.keys:
            call.store[key] = value
        call.maybe_stop()


class OutputTap:
    """Forward hook: keeps the output of a module's first call and hands a copy on."""

    def __init__(self, channel: Channel, mode: str, path: str, keys: tuple[str | int, ...]) -> None:
        self.channel, self.mode, self.path, self.keys = channel, mode, path, keys

    def __call__(self, _module: nn.Module, args: Any, kwargs: Any, output: Any) -> Any:
        call = current(self.channel, self.mode)
        if call is None or not call.first(self.path):
            return None
        if aliases(output, (args, kwargs)):
            # the output shares memory with an input (an in-place module, Identity): a later
            # write through that input would reach it, so a copy is kept instead
            for key in self.keys:
                call.store[key] = clone_tensors(output)
            call.maybe_stop()
            return None
        # NOTE: later model code may write into the output in place (``out += identity``);
        # the copy goes on as the module's output, so the kept value stays as the call
        # returned it, on the autograd path to everything computed after it.
        for key in self.keys:
            call.store[key] = output
        call.maybe_stop()
        return clone_tensors(output)


def aliases(output: Any, inputs: Any) -> bool:
    """True when a tensor of ``output`` shares memory with a tensor of ``inputs``."""
    seen = {_storage(t) for t in _compat.tree_leaves(inputs) if _strided(t)}
    return any(_storage(t) in seen for t in _compat.tree_leaves(output) if _strided(t))


def _strided(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.layout == torch.strided


def _storage(tensor: torch.Tensor) -> int:
    return int(tensor.untyped_storage().data_ptr())
