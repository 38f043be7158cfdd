"""Where in the user's code a traced op or a tracing failure comes from.

Frames of torch and of fxtap itself are skipped: a node's source and a ``TraceError``'s line
are the user's model code.
"""

from __future__ import annotations

import os
import types

import torch

__all__ = [
    "PACKAGE_DIR", "failing_user_frame", "plain_function_name", "source_line", "user_source",
]  # fmt: skip

#: fxtap's own directory (with a trailing separator).
PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
_OWN_DIRS = (os.path.dirname(torch.__file__) + os.sep, PACKAGE_DIR)


def _is_own(filename: str) -> bool:
    return filename.startswith(_OWN_DIRS) or filename.startswith("<")


def user_source(frame: types.FrameType | None) -> str | None:
    while frame is not None:
        if not _is_own(frame.f_code.co_filename):
            return f"{frame.f_code.co_filename}:{frame.f_lineno}"
        frame = frame.f_back
    return None


def failing_user_frame(tb: types.TracebackType | None) -> types.FrameType | None:
    found = None
    while tb is not None:
        if not _is_own(tb.tb_frame.f_code.co_filename):
            found = tb.tb_frame
        tb = tb.tb_next
    return found


def source_line(filename: str, lineno: int) -> str | None:
    import linecache

    line = linecache.getline(filename, lineno).strip()
    return line or None


def plain_function_name(frame: types.FrameType) -> str | None:
    """``module.function`` when ``frame`` runs a module-level function, not a method."""
    code = frame.f_code
    if "self" in code.co_varnames[: code.co_argcount]:
        return None
    fn = frame.f_globals.get(code.co_name)
    if getattr(fn, "__code__", None) is code:
        return f"{frame.f_globals.get('__name__', '?')}.{code.co_name}"
    return None
