"""The one file writer every stage uses: atomic, regular files only, typed errors."""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from fxtap.errors import OutputPathError, UnsafeOutputError

__all__ = ["check_output", "write_atomic"]


def write_atomic(
    path: str | os.PathLike[str],
    data: str | bytes | Callable[[IO[bytes]], None],
    *,
    hint: str = "Pick a path in a folder that exists and that you can write to.",
) -> Path:
    """Write ``data`` to a temporary file next to ``path``, then rename it over ``path``.

    A reader never sees a half-written file, and an interrupted write leaves the old file (or
    none). Only regular files are replaced (``check_output``): a symbolic link, folder, FIFO,
    socket or device node at ``path`` is refused, so writing as root can never clobber
    ``/dev/...`` and a link and the file it points to are both left as they are.

    Args:
        path: the file to write.
        data: text (written as UTF-8), bytes, or a function that writes into a binary file.
        hint: the fix to append to an error, in the words of the interface being used.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        UnsafeOutputError: ``path`` is a link, folder, FIFO, socket or device node.
        OutputPathError: its folder does not exist, or it cannot be written.
    """
    target = check_output(path, hint=hint)
    folder = target.parent if str(target.parent) else Path(".")
    tmp = None
    try:
        handle, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
        with os.fdopen(handle, "wb") as f:
            if isinstance(data, str):
                f.write(data.encode("utf-8"))
            elif isinstance(data, bytes):
                f.write(data)
            else:
                data(f)
        # NOTE: mkstemp creates files readable by their owner only; give the usual mode.
        mask = os.umask(0o022)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        # NOTE: a rename never follows a link: a link made at ``path`` since the check above is
        # replaced itself, and the file it points to is not touched.
        os.replace(tmp, target)
        tmp = None
    except OSError as exc:
        raise OutputPathError(
            f"cannot write {str(target)!r}: {exc.strerror or exc}. {hint}"
        ) from exc
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return target


def check_output(
    path: str | os.PathLike[str],
    *,
    hint: str = "Pick a path in a folder that exists and that you can write to.",
) -> Path:
    """Refuse an output path that is not a regular file or a new path in an existing folder.

    The path itself is examined, not what a link points to (``os.lstat``).

    Returns:
        ``path`` as a ``Path``.

    Raises:
        UnsafeOutputError: ``path`` is a symbolic link, folder, FIFO, socket or device node.
        OutputPathError: its folder does not exist or cannot be examined.

    >>> check_output("/dev/null")
    Traceback (most recent call last):
    fxtap.errors.UnsafeOutputError: cannot write '/dev/null': it is a device node, not a regular file; fxtap writes only regular files or new paths. Pick a path in a folder that exists and that you can write to.
    """
    target = Path(path)
    try:
        mode = os.lstat(target).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as exc:
        raise OutputPathError(
            f"cannot write {str(target)!r}: {exc.strerror or exc}. {hint}"
        ) from exc
    if mode is not None and stat.S_ISLNK(mode):
        raise UnsafeOutputError(
            f"cannot write {str(target)!r}: it is a symbolic link (to {_link(target)!r}); fxtap "
            f"writes only regular files or new paths, and never replaces a link or writes "
            f"through it. {hint}"
        )
    if mode is not None and not stat.S_ISREG(mode):
        raise UnsafeOutputError(
            f"cannot write {str(target)!r}: it is {_kind(mode)}, not a regular file; fxtap "
            f"writes only regular files or new paths. {hint}"
        )
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise OutputPathError(
            f"cannot write {str(target)!r}: folder {str(folder)!r} does not exist. {hint}"
        )
    return target


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device node"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a special file"


def _link(path: Path) -> str:
    try:
        return os.readlink(path)
    except OSError:  # removed since: say so rather than fail
        return "?"
