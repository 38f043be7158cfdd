"""The one file writer every stage uses: atomic, regular files only, typed errors."""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from fxtap.errors import OutputPathError

__all__ = ["write_atomic"]


def write_atomic(
    path: str | os.PathLike[str],
    data: str | bytes | Callable[[IO[bytes]], None],
    *,
    hint: str = "Pick a path in a folder that exists and that you can write to.",
) -> Path:
    """Write ``data`` to a temporary file next to ``path``, then rename it over ``path``.

    A reader never sees a half-written file, and an interrupted write leaves the old file (or
    none). Only regular files are replaced: a folder, FIFO, socket or device node at ``path`` is
    refused, so writing as root can never clobber ``/dev/...``.

    Args:
        path: the file to write.
        data: text (written as UTF-8), bytes, or a function that writes into a binary file.
        hint: the fix to append to an error, in the words of the interface being used.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        OutputPathError: ``path`` is not a regular file or new path, or cannot be written.
    """
    target = Path(path)
    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as exc:
        raise OutputPathError(
            f"cannot write {str(target)!r}: {exc.strerror or exc}. {hint}"
        ) from exc
    if mode is not None and not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file"
        raise OutputPathError(
            f"cannot write {str(target)!r}: it is {kind}; fxtap writes only regular files or "
            f"new paths. {hint}"
        )
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise OutputPathError(
            f"cannot write {str(target)!r}: folder {str(folder)!r} does not exist. {hint}"
        )
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
