"""Export once for both modes where the two graphs cannot differ.

The train and eval graphs of a model differ only through what its code does with the mode,
and ``nn.Module.train`` changes one thing: the ``training`` flag of every module (unless a
class overrides ``train``). So while the first mode is exported, every read of a module's
``training`` flag is recorded (``read_flags``). When the model's code read none, and switching
modes changes nothing else in any module, exporting the other mode would run the very same
Python code on the very same values: its program is the first one, and the export path reuses
it (``one_export``). A read that cannot change what runs is not counted: ``nn.Dropout`` and its
siblings with ``p == 0`` return their input in either mode.

This is decided from the code that actually ran, not from module types or source text: a
Dropout with ``p > 0``, a BatchNorm that tracks running statistics, transformers' attention
(``dropout=0.0 if not self.training else ...``) and its LayerDrop all read the flag, and each
mode is then exported on its own.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from fxtap.trace._flag_reads import harmless

__all__ = [
    "FlagReads",
    "SharedExport",
    "batch_only",
    "one_export",
    "read_flags",
    "remember_batch_only",
    "shared_export",
]


@dataclass
class FlagReads:
    """Where the model's code read a ``training`` flag while it was exported.

    Attributes:
        reads: ``"module path (file:line)"`` of each read that could change what runs.
        other_state: a module whose ``train()`` changes more than its flag, or ``None``.
    """

    reads: list[str] = field(default_factory=list)
    other_state: str | None = None

    @property
    def mode_independent(self) -> bool:
        """True when the exported program is the program of either mode."""
        return not self.reads and self.other_state is None


@dataclass(frozen=True)
class SharedExport:
    """The checked trace of a program exported in one mode that serves both modes."""

    traced: Any


def one_export() -> contextlib.AbstractContextManager[None]:
    """Within this context, ``export_trace`` exports each model at most once when its two
    modes' programs cannot differ (``trace_modes`` opens it around both modes)."""
    return _sharing()


def shared_export(model: nn.Module) -> SharedExport | None:
    """The program exported for ``model`` in the other mode, when it serves this one too."""
    table = _SHARED.get()
    return None if table is None else table.get(id(model), (None, None))[1]


def remember_export(model: nn.Module, shared: SharedExport) -> None:
    """Keep ``shared`` for ``model``'s other mode (only inside ``one_export``)."""
    table = _SHARED.get()
    if table is not None:
        table[id(model)] = (model, shared)


def remember_batch_only(model: nn.Module) -> None:
    """Note that ``model``'s export ran over its budget (``fxtap.trace._export_budget``), so
    that its other mode exports only the batch dims dynamic at once (inside ``one_export``)."""
    narrowed = _BATCH_ONLY.get()
    if narrowed is not None:
        narrowed.add(id(model))


def batch_only(model: nn.Module) -> bool:
    """Whether ``model``'s other mode ran over its budget in this ``one_export`` context."""
    narrowed = _BATCH_ONLY.get()
    return narrowed is not None and id(model) in narrowed


def sharing() -> bool:
    """True inside ``one_export``: worth recording the flag reads of an export."""
    return _SHARED.get() is not None


@contextlib.contextmanager
def read_flags(model: nn.Module, *, record: bool = True) -> Iterator[FlagReads]:
    """Record the reads of every submodule's ``training`` flag made inside the context.

    For the length of the context ``nn.Module.training`` is a data descriptor (``_Flag``),
    which takes precedence over the flag in each module's ``__dict__``: a read returns the
    flag as before and, for this model's modules, notes where it was read (torch.fx's patch
    of ``nn.Module.__getattr__`` while torch.export traces never sees the flag). With
    ``record=False``, or when another thread records the same modules, nothing is recorded
    and the result says the reads are unknown.
    """
    result = FlagReads()
    modules = dict(model.named_modules(remove_duplicate=False))
    result.other_state = _train_side_effects(model) if record else "not recorded"
    if result.other_state is not None:
        yield result
        return
    with _LOCK:
        if any(id(m.__dict__) in _WATCHED for m in modules.values()):
            result.other_state = "recorded by another export"
            paths: dict[int, str] = {}
        else:
            paths = {id(m.__dict__): path for path, m in reversed(modules.items())}
            for key, path in paths.items():
                _WATCHED[key] = (path, result)
            if paths and "training" not in nn.Module.__dict__:
                nn.Module.training = _Flag()  # type: ignore[assignment]
    try:
        yield result
    finally:
        with _LOCK:
            for key in paths:
                del _WATCHED[key]
            if not _WATCHED and isinstance(nn.Module.__dict__.get("training"), _Flag):
                del nn.Module.training


#: Per ``one_export`` context: id(model) -> (model, its shared export or None).
_SHARED: ContextVar[dict[int, tuple[Any, SharedExport | None]] | None] = ContextVar(
    "fxtap_shared_exports", default=None
)
#: Per ``one_export`` context: id of each model whose export ran over its budget.
_BATCH_ONLY: ContextVar[set[int] | None] = ContextVar("fxtap_batch_only", default=None)
_LOCK = threading.Lock()
#: id(module.__dict__) -> (its path, the FlagReads of the export watching it). Keyed by the
#: ``__dict__``: while torch.export traces, modules are seen through proxies that share it.
_WATCHED: dict[int, tuple[str, FlagReads]] = {}

#: Modules whose flag changes nothing when ``p`` is 0: dropout returns its input in eval mode,
#: and with ``p == 0`` in train mode too (no random numbers are drawn).
_DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
             nn.FeatureAlphaDropout)  # fmt: skip


class _Flag:
    """``nn.Module.training`` while flags are watched: each module's flag stays in its
    ``__dict__``; reads of watched modules are noted in their ``FlagReads``."""

    def __get__(self, module: nn.Module | None, owner: type | None = None) -> Any:
        if module is None:
            return self
        try:
            flag = module.__dict__["training"]
        except KeyError:
            raise AttributeError(
                f"{type(module).__name__!r} object has no attribute 'training'"
            ) from None
        watched = _WATCHED.get(id(module.__dict__))
        if watched is not None and not (isinstance(module, _DROPOUTS) and module.p == 0):
            caller = sys._getframe(1)
            if not harmless(caller):
                path, result = watched
                where = f"{caller.f_code.co_filename.rpartition('/')[2]}:{caller.f_lineno}"
                result.reads.append(f"{path or 'the root'} ({where})")
        return flag

    def __set__(self, module: nn.Module, value: bool) -> None:
        module.__dict__["training"] = value


@contextlib.contextmanager
def _sharing() -> Iterator[None]:
    token, narrowed = _SHARED.set({}), _BATCH_ONLY.set(set())
    try:
        yield
    finally:
        _SHARED.reset(token)
        _BATCH_ONLY.reset(narrowed)


def _train_side_effects(model: nn.Module) -> str | None:
    """The first module whose mode is more than its flag, or ``None``.

    A class that overrides ``nn.Module.train`` may change more than the flag: the modules'
    attributes are compared across a switch to the other mode and back. A class that defines
    ``training`` itself would hide its reads from ``_Flag``.
    """
    for path, m in model.named_modules():
        owner = next(c for c in type(m).__mro__ if "training" in c.__dict__ or c is nn.Module)
        if owner is not nn.Module:
            return f"{path or 'the root'} ({owner.__name__} defines 'training')"
    if all(type(m).train is nn.Module.train for m in model.modules()):
        return None
    before = {id(m): _state(m) for m in model.modules()}
    mode = model.training
    try:
        model.train(not mode)
        after = {id(m): _state(m) for m in model.modules()}
    finally:
        model.train(mode)
    for path, m in model.named_modules():
        if before.get(id(m)) != after.get(id(m)):
            return f"{path or 'the root'} ({type(m).__name__}.train changes more than its flag)"
    return None


def _state(module: nn.Module) -> dict[str, int]:
    return {k: id(v) for k, v in module.__dict__.items() if k != "training"}
