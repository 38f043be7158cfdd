"""Print how the running interpreter's packages differ from a lock file (used by make test-latest).

Usage: python tests/support/lockdiff.py requirements.lock
"""

from __future__ import annotations

import importlib.metadata
import re
import sys


def read_lock(path: str) -> dict[str, str]:
    """Return ``{normalized name: version}`` of the ``name==version`` lines of a lock file."""
    pins: dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if "==" in line:
                name, version = line.split("==", 1)
                pins[_norm(name)] = version.strip()
    return pins


def installed() -> dict[str, str]:
    """Return ``{normalized name: version}`` of every distribution this interpreter sees."""
    return {_norm(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def main(argv: list[str]) -> int:
    lock, now = read_lock(argv[0]), installed()
    now.pop("fxtap", None)
    rows = [
        (name, lock.get(name, "-"), now.get(name, "-"))
        for name in sorted(set(lock) | set(now))
        if lock.get(name) != now.get(name)
    ]
    if not rows:
        print(f"the newest releases are the locked ones ({len(lock)} packages)")
        return 0
    print(f"{len(rows)} of {len(set(lock) | set(now))} packages differ from {argv[0]}:")
    width = max(len(r[0]) for r in rows)
    for name, old, new in rows:
        print(f"  {name:<{width}}  {old} -> {new}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
