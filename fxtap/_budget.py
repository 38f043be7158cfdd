"""Timing budgets of the cost stage (``compare``, ``fxtap bench``): finite, positive, bounded.

Checked before any work starts, by the command line's parser and by ``compare`` alike, so
``--min-run-time inf`` is refused at once instead of timing for ever. Imports nothing heavy:
the parser uses it before torch loads.
"""

from __future__ import annotations

import math

__all__ = ["BUDGETS", "budget_problem"]

#: name -> (smallest, largest, unit): seconds each variant is timed per round, and counts.
BUDGETS: dict[str, tuple[float, float, str]] = {
    "min_run_time": (0.0, 60.0, "seconds"),
    "rounds": (1, 1000, "rounds"),
    "warmup": (0, 1000, "calls"),
    "node_repeats": (0, 1000, "calls"),
}


def budget_problem(name: str, value: object) -> str | None:
    """What ``name`` expects when ``value`` is out of its bounds; ``None`` when it is fine.

    ``min_run_time`` must be a finite number above 0; the counts whole numbers. Each has an
    upper bound, so that a typo cannot keep a run going for days.

    >>> budget_problem("min_run_time", float("inf"))
    'expected a finite number of seconds above 0 and at most 60'
    >>> budget_problem("rounds", 10) is None
    True
    """
    low, high, unit = BUDGETS[name]
    if name == "min_run_time":
        ok = (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and math.isfinite(value)
            and low < value <= high
        )
        wanted = f"a finite number of {unit} above {low:g} and at most {high:g}"
    else:
        ok = isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
        wanted = f"a whole number of {unit} from {low:g} to {high:g}"
    return None if ok else f"expected {wanted}"
