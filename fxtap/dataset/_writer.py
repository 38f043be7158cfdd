"""A background thread that writes finished chunks while the next ones are computed."""

from __future__ import annotations

import json
import queue
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr

__all__ = ["Chunk", "Writer"]


@dataclass(frozen=True)
class Chunk:
    """Rows ``start:stop`` of every array, ready to write; ``index`` is the chunk's number."""

    index: int
    start: int
    stop: int
    arrays: dict[str, np.ndarray]

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays.values())


class Writer:
    """Writes chunks in a thread behind a queue of ``depth`` chunks, so memory stays bounded.

    Each chunk's arrays are written first and its ``checksums`` record (every file it wrote,
    with its SHA-256 and size) last, so a chunk counts as done only once all of it is on disk.
    An error in the thread is raised by the next ``put`` or by ``close``.
    """

    def __init__(self, group: zarr.Group, store: Any, names: list[str], *, depth: int = 2) -> None:
        # NOTE: empty chunks are written too, so that every done chunk has all its files.
        config: Any = {"write_empty_chunks": True}
        self._arrays: dict[str, Any] = {
            name: group[name].with_config(config)  # type: ignore[union-attr]
            for name in names
        }
        self._done: Any = group["checksums"]
        self._store = store
        self._queue: queue.Queue[Chunk | None] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self.written = 0
        self._thread = threading.Thread(target=self._run, name="fxtap-writer", daemon=True)
        self._thread.start()

    def put(self, chunk: Chunk) -> None:
        """Queue a chunk, waiting while the queue is full; raises the thread's error if any."""
        self._put(chunk)

    def close(self) -> None:
        """Write what is queued, stop the thread, and raise its error if it had one."""
        self._put(None)
        self._thread.join()
        self._raise()

    def abort(self) -> None:
        """Stop after the chunk being written; queued chunks are dropped (they are not done)."""
        self._error = self._error or _Aborted()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._queue.put(None)
        self._thread.join()

    def _put(self, item: Chunk | None) -> None:
        while True:
            self._raise()
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _raise(self) -> None:
        if self._error is not None and not isinstance(self._error, _Aborted):
            raise self._error

    def _run(self) -> None:
        while True:
            chunk = self._queue.get()
            if chunk is None:
                return
            if self._error is not None:
                continue
            try:
                record = {}
                for name, rows in chunk.arrays.items():
                    array = self._arrays[name]
                    array[chunk.start : chunk.stop] = rows
                    self._store.check()
                    coords = (chunk.index,) + (0,) * (array.ndim - 1)
                    key = f"{name}/{array.metadata.encode_chunk_key(coords)}"
                    record[key] = self._store.written.pop(key)
                self._done[chunk.index] = json.dumps(record, sort_keys=True)
                self._store.check()
                self.written += chunk.nbytes
            except BaseException as exc:  # raised again in the main thread
                self._error = exc


class _Aborted(Exception):
    pass
