"""Stage packages that can be called as their front-door function (``fxtap.render(...)``)."""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from typing import Any

__all__ = ["make_callable"]


class _CallableStage(types.ModuleType):
    """A package module whose call runs its front door; attribute access is unchanged."""

    __front_door__: Callable[..., Any]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.__front_door__(*args, **kwargs)


def make_callable(module_name: str, front_door: Callable[..., Any]) -> None:
    """Let ``fxtap.NAME(...)`` call ``front_door`` while ``fxtap.NAME.x`` stays the package.

    NOTE: a package and a function of the same name cannot both be attributes of ``fxtap``;
    binding the function would hide the package (``fxtap.trace._fallback`` breaks), binding the
    package would make ``fxtap.trace(model)`` fail. A callable package keeps both spellings.
    """
    module = sys.modules[module_name]
    module.__class__ = _CallableStage
    module.__front_door__ = front_door  # type: ignore[attr-defined]
