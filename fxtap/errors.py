"""The fxtap exception tree: one base class, each leaf also a builtin a torchvision user catches."""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable
from pathlib import Path

import torch.fx.proxy

__all__ = [
    "CutError",
    "DotNotFoundError",
    "DroppedModuleError",
    "FxtapError",
    "InputShapeError",
    "InputTypeError",
    "InvalidArgumentError",
    "LoadError",
    "MissingExtraError",
    "MistraceError",
    "NodeNotFoundError",
    "NotReachedError",
    "OutputPathError",
    "ResourceError",
    "TraceError",
    "UnsafeOutputError",
    "close_matches",
    "ensure_output_dir",
    "format_choices",
    "unknown_choice",
]


class FxtapError(Exception):
    """Base class of every error fxtap raises on purpose."""


class InvalidArgumentError(FxtapError, ValueError):
    """An argument has the wrong type or value (also a ``ValueError``, as torchvision raises)."""


class NodeNotFoundError(InvalidArgumentError, KeyError):
    """A requested node name matches no node of the traced graph."""

    def __str__(self) -> str:
        # NOTE: KeyError.__str__ quotes its message; show it as a sentence instead.
        return str(self.args[0]) if self.args else ""


class TraceError(FxtapError, torch.fx.proxy.TraceError):
    """torch.fx could not trace the model; the message names the module, source line and fix.

    Subclasses torch.fx's own ``TraceError`` (itself a ``ValueError``).

    Attributes:
        module_path: dotted path of the innermost module being traced when it failed
            (``""`` for the root module).
        source: ``file:line`` of the user's code that failed, when known.
        reason: the message torch.fx gave.
        function: qualified name of the plain function that failed, when the failure was in one.
    """

    def __init__(
        self,
        message: str,
        *,
        module_path: str | None = None,
        source: str | None = None,
        reason: str = "",
        function: str | None = None,
    ) -> None:
        super().__init__(message)
        self.module_path = module_path
        self.source = source
        self.reason = reason
        self.function = function


class MissingExtraError(FxtapError, ImportError):
    """An optional package is missing; the message names it and the ``pip install`` that adds it.

    Attributes:
        extra: the fxtap extra that provides it (``"dataset"``, ``"plot"``, ...).
        packages: the missing distributions.
    """

    def __init__(self, message: str, *, extra: str, packages: tuple[str, ...]) -> None:
        super().__init__(message)
        self.extra = extra
        self.packages = packages


class MistraceError(TraceError):
    """The traced graph computes something other than the eager model and no fallback fixed it."""


class CutError(InvalidArgumentError):
    """``split`` cannot cut the model where asked; the message gives the reason and a cut it can make.

    Attributes:
        query: the cut as the user wrote it.
        nearest: the nearest node name ``split`` can cut at, or ``None`` when there is none.
    """

    def __init__(self, message: str, *, query: str = "", nearest: str | None = None) -> None:
        super().__init__(message)
        self.query = query
        self.nearest = nearest


class InputShapeError(InvalidArgumentError):
    """An example input does not fit the model."""


class InputTypeError(InvalidArgumentError, TypeError):
    """An input is not a tensor, or not of the dtype the model computes in."""


class OutputPathError(FxtapError, OSError):
    """An output path cannot be written."""


class UnsafeOutputError(OutputPathError):
    """An output path is a symbolic link, folder, FIFO, device node or socket.

    Writing there would replace or feed something that is not fxtap's, so it is refused before
    anything is written; the command line treats it as bad usage (exit 2).
    """


class LoadError(FxtapError, ValueError):
    """A saved extractor is corrupted, truncated, or needs an explicit trust opt-in."""


class DotNotFoundError(FxtapError, FileNotFoundError):
    """Graphviz's ``dot`` program is not installed; the ``.dot`` file was still written."""


class ResourceError(FxtapError, MemoryError):
    """A request needs more memory than is available."""


class NotReachedError(FxtapError, RuntimeError):
    """A call of a capture extractor never reached a requested module (a branch skipped it)."""


class DroppedModuleError(FxtapError, RuntimeError):
    """A call reached a module that a capture extractor dropped after its build-time probe."""


def close_matches(word: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """Return up to ``n`` candidates closest to ``word``, best first.

    Case is ignored (``Layer4`` finds ``layer4``). Dotted names are compared whole, by their
    last components (``layer1.relu`` finds ``layer1.0.relu``) and by their shape: a name of the
    same depth ending in the same component (``stages.2`` finds ``features.2``).

    >>> close_matches("layer1.relu", ["layer1.0.relu", "layer2.0.relu", "fc"])
    ['layer1.0.relu', 'layer2.0.relu']
    >>> close_matches("stages.2", ["features.1", "features.2", "classifier.2.weight"])
    ['features.2']
    """
    pool = list(dict.fromkeys(candidates))
    folded: dict[str, str] = {}
    for c in pool:
        folded.setdefault(c.lower(), c)
    key = word.lower()
    found = [c for c in pool if c.lower() == key]
    found += [
        folded[m]
        for m in difflib.get_close_matches(key, folded, n=n, cutoff=0.6)
        if folded[m] not in found
    ]
    # A shortened or lengthened spelling: 'evaluation' -> 'eval', 'conv' -> 'conv1'.
    found += [
        c
        for c in pool
        if c not in found
        and len(c) >= 2
        and (key.startswith(c.lower()) or c.lower().startswith(key))
    ]
    if "." in word:
        parts = key.split(".")
        head, tail = parts[0], parts[-1]
        extra = [
            c
            for c in pool
            if c.lower().startswith(head) and c.lower().endswith("." + tail) and c not in found
        ]
        same_shape = [
            c
            for c in pool
            if c not in found
            and c not in extra
            and len(c.split(".")) == len(parts)
            and c.lower().rsplit(".", 1)[1] == tail
        ]
        same_shape.sort(key=lambda c: -difflib.SequenceMatcher(None, key, c.lower()).ratio())
        found += extra + same_shape
    return found[:n]


def format_choices(names: Iterable[str]) -> str:
    """Format names as ``'a', 'b'`` for an error message, or ``(none)``."""
    names = list(names)
    return ", ".join(repr(n) for n in names) if names else "(none)"


def ensure_output_dir(path: str | os.PathLike[str], *, hint: str) -> Path:
    """Create the folder ``path`` if needed; ``OutputPathError`` (with ``hint``) if unwritable."""
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputPathError(
            f"cannot create the output folder {str(folder)!r}: {exc.strerror or exc}. {hint}"
        ) from exc
    if not os.access(folder, os.W_OK):
        raise OutputPathError(f"output folder {str(folder)!r} is not writable. {hint}")
    return folder


def unknown_choice(
    what: str,
    value: object,
    choices: Iterable[str],
    *,
    fix: str,
    error: type[FxtapError] | None = None,
) -> FxtapError:
    """The error for a value that is not among ``choices``: names it, lists close matches.

    Args:
        what: the input as the user wrote it, e.g. ``"tracer_kwargs key"`` or ``"--format"``.
        value: the bad value.
        choices: every accepted value.
        fix: the sentence saying what to do, in the words of the interface used.
        error: the error class (default ``InvalidArgumentError``).

    >>> str(unknown_choice("mode", "evaluation", ["train", "eval"], fix="Pass 'eval'."))
    "mode 'evaluation' is unknown. Expected one of 'train', 'eval'; closest: 'eval'. Pass 'eval'."
    """
    pool = [str(c) for c in choices]
    close = close_matches(str(value), pool)
    if not close:
        # Case and abbreviation: 'Eval', 'evaluation' and 'ev' all mean 'eval'.
        word = str(value).lower()
        close = [
            c
            for c in pool
            if c.lower() and (word.startswith(c.lower()) or c.lower().startswith(word))
        ]
    return (error or InvalidArgumentError)(
        f"{what} {value!r} is unknown. Expected one of {format_choices(pool)}; closest: "
        f"{format_choices(close)}. {fix}"
    )
