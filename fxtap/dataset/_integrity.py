"""What keeps a store honest: chunk checksums, the job marker, no symlinks, deleting only our files.

Every chunk's record (in the ``checksums`` array) maps each file the chunk wrote to its
SHA-256 and size; a chunk counts as done once its record is written. The marker file
``.fxtap-job.json`` is written before anything else, so a folder fxtap created can be told
from one it did not: only a folder with the marker or fxtap's metadata is ever cleared, and
then only the names fxtap writes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fxtap.errors import InvalidArgumentError, OutputPathError

__all__ = [
    "MARKER",
    "chunk_problem",
    "clear_own",
    "digest_bytes",
    "has_marker",
    "marker_bytes",
    "parse_record",
    "refuse_symlinks",
    "remove_own_partials",
]

MARKER = ".fxtap-job.json"
#: The temporary files ``write_file`` makes: ``NAME.<32 hex>.partial``.
OWN_PARTIAL = re.compile(r"\.[0-9a-f]{32}\.partial$")
#: A chunk file's key inside the store, as zarr v3 writes it: ``array/c/0/0``.
#: The array's name is an output key (no "/", never "." or ".."); the rest is chunk coordinates.
_KEY = re.compile(r"[^/\\\x00.][^/\\\x00]*(/[A-Za-z0-9_]+)+")


def digest_bytes(data: bytes) -> list[Any]:
    """``[sha256 hex, size]`` of a file's bytes, as a chunk record holds it."""
    return [hashlib.sha256(data).hexdigest(), len(data)]


def parse_record(text: Any) -> dict[str, list[Any]] | None:
    """A chunk's record (file key -> ``[sha256, size]``), or None when the chunk is not done.

    Keys are checked: a record never names a file outside its store.
    """
    if not isinstance(text, str) or not text:
        return None
    try:
        record = json.loads(text)
    except ValueError:
        return {}
    if not isinstance(record, dict):
        return {}
    out = {}
    for key, value in record.items():
        ok = isinstance(key, str) and _KEY.fullmatch(key)
        if not ok or not isinstance(value, list) or len(value) != 2:
            return {}
        out[key] = value
    return out


def chunk_problem(folder: Path, record: dict[str, list[Any]] | None, *, full: bool) -> str | None:
    """What is wrong with a done chunk's files (missing, other size, other bytes), or None.

    ``full=False`` checks presence and size only (a stat per file); ``full=True`` hashes.
    """
    if not record:
        return "has no valid checksum record"
    for key, (sha, size) in record.items():
        path = folder / key
        try:
            stat = path.lstat()
        except OSError:
            return f"file {key!r} is missing"
        if stat.st_size != size:
            return f"file {key!r} has {stat.st_size} bytes, {size} were written"
        if full:
            try:
                data = path.read_bytes()
            except OSError as exc:
                return f"file {key!r} cannot be read ({exc.strerror or exc})"
            if hashlib.sha256(data).hexdigest() != sha:
                return f"file {key!r} does not match its checksum"
    return None


def refuse_symlinks(folder: Path) -> None:
    """Raise ``OutputPathError`` when anything inside the store is a symbolic link."""
    for root, dirs, files in os.walk(folder):
        for name in [*dirs, *files]:
            path = Path(root) / name
            if path.is_symlink():
                raise OutputPathError(
                    f"{str(path)!r} inside the feature store is a symbolic link; a store holds "
                    "only its own files, so that no write lands outside it. Remove the link, or "
                    "pass another out= (--out)"
                )


def marker_bytes(job_digest: str) -> bytes:
    return json.dumps({"fxtap": "feature store", "job_sha256": job_digest}).encode()


def has_marker(folder: Path) -> bool:
    """True when ``folder`` holds fxtap's marker, or only the temporaries of writing it."""
    names = [p.name for p in folder.iterdir()]
    if names and all(n.startswith(MARKER + ".") and OWN_PARTIAL.search(n) for n in names):
        return True  # killed while writing the marker, the first file of a store
    try:
        data = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("fxtap") == "feature store"


def clear_own(folder: Path, arrays: Iterable[str]) -> None:
    """Delete what fxtap wrote in ``folder``: its metadata, marker, arrays and temporaries.

    Anything else stays, so the caller can refuse a folder that still holds other files.
    """
    for name in arrays:
        path = folder / name
        if path.is_dir() and not path.is_symlink() and (path / "zarr.json").is_file():
            shutil.rmtree(path)
    remove_own_partials(folder)
    for name in ("zarr.json", MARKER):
        with contextlib.suppress(FileNotFoundError):
            (folder / name).unlink()


def remove_own_partials(folder: Path) -> None:
    """Delete the temporaries of interrupted writes (``NAME.<32 hex>.partial``) only."""
    for path in folder.rglob("*.partial"):
        if OWN_PARTIAL.search(path.name) and not path.is_symlink():
            with contextlib.suppress(OSError):
                path.unlink()


def damaged(folder: Path, problems: list[tuple[int, str]]) -> InvalidArgumentError:
    """The error for a finished store whose chunks are missing or damaged."""
    shown = "; ".join(f"chunk {k}: {why}" for k, why in problems[:3])
    more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
    return InvalidArgumentError(
        f"the feature store {str(folder)!r} is damaged: {shown}{more}. Run the same job again "
        "(the same extract_dataset call or fxtap run command) to recompute damaged chunks"
    )
