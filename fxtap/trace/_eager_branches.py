"""Export the code a model runs eagerly, not the branch it keeps for torch.export.

Some models ask ``torch.compiler.is_exporting()`` and, when exporting, compute the same thing
another way: transformers' gated delta rule (qwen3.5, qwen3-next, olmo-hybrid) solves its
triangular system by forward substitution instead of ``torch.linalg.solve_triangular``, for
export targets that lack the solver. The two ways round differently, so an extractor built
from that branch differs from the model (and from forward hooks) in the last bits. fxtap
promises the model's eager values, so ``eager_branches`` makes the question answer ``False``
to code outside torch while torch.export runs; torch's own code still gets the true answer.
When the eager branch cannot be exported (a branch on tensor values), the caller exports
again with the model's export branch (``asked`` says whether the model asked at all).
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Callable, Iterator

import torch

__all__ = ["eager_branches"]

_LOCK = threading.Lock()
_users = 0
_real: Callable[[], bool] | None = None
_asked: list[list[str]] = []


def _is_exporting() -> bool:
    """``torch.compiler.is_exporting`` as ``eager_branches`` installs it."""
    assert _real is not None
    exporting = _real()
    if not exporting:
        return False
    caller = sys._getframe(1).f_globals.get("__name__", "")
    if caller == "torch" or caller.startswith("torch."):
        return True
    for asked in _asked:
        asked.append(caller)
    return False


@contextlib.contextmanager
def eager_branches(asked: list[str]) -> Iterator[None]:
    """While inside, ``torch.compiler.is_exporting()`` is ``False`` for code outside torch.

    ``asked`` gets the module name of every caller that was told ``False`` during an export.
    Threads share the replacement: it is installed by the first user and removed by the last,
    and it answers as torch does whenever no export runs.
    """
    global _users, _real
    with _LOCK:
        if _users == 0:
            _real = torch.compiler.is_exporting
            torch.compiler.is_exporting = _is_exporting
        _users += 1
        _asked.append(asked)
    try:
        yield
    finally:
        with _LOCK:
            _asked[:] = [a for a in _asked if a is not asked]
            _users -= 1
            if _users == 0:
                assert _real is not None
                torch.compiler.is_exporting = _real
                _real = None
