"""Export the code a model runs eagerly, not the branch it keeps for torch.export.

Some models ask ``torch.compiler.is_exporting()`` and, when exporting, compute the same thing
another way: transformers' gated delta rule (qwen3.5, qwen3-next, olmo-hybrid) solves its
triangular system by forward substitution instead of ``torch.linalg.solve_triangular``, for
export targets that lack the solver. The two ways round differently, so an extractor built
from that branch differs from the model (and from forward hooks) in the last bits. fxtap
promises the model's eager values. ``exporting_asked`` records which code outside torch asked
while torch.export ran and, with ``eager=True``, answers it ``False``; torch's own code always
gets the true answer. The export path exports the model as it asks to be exported first, and
only when the model asked and the graph is not bitwise its eager self does it export again
with the eager answer: a model may also test ``is_compiling() and not is_exporting()`` for a
path of torch.compile's own (mamba's and zamba's associative scan), which ``False`` would pick.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Callable, Iterator

import torch

__all__ = ["exporting_asked"]

_LOCK = threading.Lock()
_users = 0
_real: Callable[[], bool] | None = None
_asked: list[tuple[int, list[str], bool]] = []


def _is_exporting() -> bool:
    """``torch.compiler.is_exporting`` as ``exporting_asked`` installs it."""
    assert _real is not None
    exporting = _real()
    if not exporting:
        return False
    caller = sys._getframe(1).f_globals.get("__name__", "")
    if caller == "torch" or caller.startswith("torch."):
        return True
    eager = False
    me = threading.get_ident()
    for thread, asked, answer_false in list(_asked):
        if thread == me:
            asked.append(caller)
            eager = eager or answer_false
    return not eager


@contextlib.contextmanager
def exporting_asked(asked: list[str], *, eager: bool) -> Iterator[None]:
    """While inside, ``asked`` gets the module of every caller outside torch that asked
    ``torch.compiler.is_exporting()`` during an export; with ``eager``, they are told ``False``.

    Threads share the replacement: it is installed by the first user and removed by the last,
    answers each thread by that thread's own entries, and answers as torch does whenever no
    export runs.
    """
    global _users, _real
    with _LOCK:
        if _users == 0:
            _real = torch.compiler.is_exporting
            torch.compiler.is_exporting = _is_exporting
        _users += 1
        _asked.append((threading.get_ident(), asked, eager))
    try:
        yield
    finally:
        with _LOCK:
            _asked[:] = [a for a in _asked if a[1] is not asked]
            _users -= 1
            if _users == 0:
                assert _real is not None
                torch.compiler.is_exporting = _real
                _real = None
