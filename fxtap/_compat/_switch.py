"""The switch that forces every fallback of ``fxtap._compat``, and its error."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from fxtap.errors import FxtapError

__all__ = ["CompatError", "public_only", "use_private"]

_FORCED = os.environ.get("FXTAP_COMPAT_PUBLIC_ONLY", "") not in ("", "0")
_STATE = {"public_only": _FORCED}


class CompatError(FxtapError, NotImplementedError):
    """A torch internal fxtap needs has no public equivalent and the fallbacks are forced."""


def use_private() -> bool:
    """Whether the private paths are taken (not forced off by ``FXTAP_COMPAT_PUBLIC_ONLY``)."""
    return not _STATE["public_only"]


@contextlib.contextmanager
def public_only(on: bool = True) -> Iterator[None]:
    """Force (or, with ``on=False``, lift) the public-only fallbacks inside the block."""
    before = _STATE["public_only"]
    _STATE["public_only"] = on
    try:
        yield
    finally:
        _STATE["public_only"] = before


def _no_public(what: str) -> CompatError:
    return CompatError(
        f"{what} needs a torch internal with no public equivalent, and the public-only "
        "fallbacks are forced; unset FXTAP_COMPAT_PUBLIC_ONLY to use it"
    )
