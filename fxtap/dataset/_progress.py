"""Rank 0's progress bar: the samples every rank has computed in this run, and their rate."""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

import zarr

import fxtap.dataset._store as _store

__all__ = ["Progress"]


class Progress:
    """A tqdm bar on rank 0 counting the samples of all ranks, so its rate is the global one.

    Rank 0's own samples are counted batch by batch (``add``). The other ranks' work is read
    from the store they all write: a thread looks at the ``checksums`` records every
    ``interval`` seconds and counts the samples of the chunks other ranks finished in this
    run. The bar stays open, and keeps counting, while rank 0 waits for the other ranks. Used
    as a context manager; with ``label=None`` (no bar: another rank, or ``progress=False``)
    it does nothing.

    Args:
        label: the bar's description, None for no bar.
        out: the store's folder.
        todo: the chunks left to compute by all ranks, with their number of samples.
        mine: the chunks this rank computes.
        interval: seconds between two looks at the store.
    """

    def __init__(
        self,
        label: str | None,
        out: Path,
        todo: dict[int, int],
        mine: list[int],
        interval: float = 0.5,
    ) -> None:
        self._out = out
        self._theirs = {k: n for k, n in todo.items() if k not in set(mine)}
        self._own = self._others = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._bar: Any = None
        if label is None:
            return
        from tqdm.auto import tqdm

        self._bar = tqdm(
            total=sum(todo.values()),
            unit="sample",
            desc=label,
            file=sys.stderr,
            dynamic_ncols=True,
        )
        if self._theirs:
            self._thread = threading.Thread(
                target=self._watch, args=(interval,), name="fxtap-progress", daemon=True
            )
            self._thread.start()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add(self, samples: int) -> None:
        """Count ``samples`` computed by rank 0."""
        with self._lock:
            self._own += samples
            self._show()

    def finished(self, computed: int) -> None:
        """Show ``computed``, the samples all ranks computed (gathered once every rank is done)."""
        with self._lock:
            self._own, self._others = computed, 0
            self._show()

    def close(self) -> None:
        """Stop watching the store and close the bar."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._bar is not None:
            self._bar.close()

    def _watch(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                done = _store.done_chunks(zarr.open_group(self._out, mode="r"))
            except Exception:  # a look that fails is retried at the next tick
                continue
            with self._lock:
                self._others = sum(n for k, n in self._theirs.items() if k in done)
                self._show()
                self._bar.refresh()  # shown while rank 0 waits for the others, too

    def _show(self) -> None:
        if self._bar is None:
            return
        n = min(self._own + self._others, self._bar.total)
        if n != self._bar.n:
            self._bar.update(n - self._bar.n)
