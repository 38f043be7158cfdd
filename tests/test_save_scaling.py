"""Loading grows linearly with a file's modules and nodes, and files past the caps are refused.

The files are those of benchmarks/bench_load.py (N ``ReLU`` modules called in a chain, or a
chain of N ``operator.add`` nodes). Python-level work is counted exactly (function calls seen by
``sys.setprofile``): eight times the modules or nodes must take at most about eight times the
calls. Work inside C calls (a ``frozenset`` rebuilt per module) is invisible to that count, so
the schema check, where such a rebuild once made loading quadratic, is also timed (CPU time,
best of three) at two sizes. The benchmark itself shows a file at each cap loading in under
10 s and 500 MB (docs/benchmarks.md).
"""

from __future__ import annotations

import json
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_load  # noqa: E402

from fxtap.errors import LoadError  # noqa: E402
from fxtap.save import _manifest, _safe_load, _schema, load  # noqa: E402


def _calls(path: Path) -> int:
    count = 0

    def profile(frame: Any, event: str, arg: Any) -> None:
        nonlocal count
        count += event == "call"

    sys.setprofile(profile)
    try:
        load(path)
    finally:
        sys.setprofile(None)
    return count


@pytest.mark.parametrize("kind", ["modules", "nodes"])
def test_python_work_grows_linearly(kind: str, tmp_path: Path) -> None:
    counts = []
    for n in (100, 800):
        path = tmp_path / f"{kind}-{n}.fxtap"
        bench_load.write(path, bench_load.manifest(kind, n))
        load(path)  # first-use caches (nn.Module's attribute names) are not counted
        counts.append(_calls(path))
    assert counts[1] < 8.5 * counts[0], counts


def _check_seconds(data: dict[str, Any]) -> float:
    best = float("inf")
    for _ in range(3):
        start = time.process_time()
        _manifest.check(data, trust=False)
        best = min(best, time.process_time() - start)
    return best


def test_schema_check_time_grows_linearly() -> None:
    small, large = (bench_load.manifest("modules", n) for n in (1000, 8000))
    _manifest.check(small, trust=False)
    ratio = _check_seconds(large) / _check_seconds(small)
    assert ratio < 14, f"8x the modules took {ratio:.1f}x the time"


@pytest.mark.parametrize(
    ("kind", "n", "message"),
    [
        ("modules", _schema.MAX_MODULES + 1, f"more than {_schema.MAX_MODULES} modules"),
        ("nodes", _schema.MAX_NODES + 1, f"more than {_schema.MAX_NODES}"),
        ("values", _safe_load.MAX_VALUES // 4 + 10, f"more than {_safe_load.MAX_VALUES}"),
    ],
)
def test_files_past_a_cap_are_refused(kind: str, n: int, message: str, tmp_path: Path) -> None:
    path = tmp_path / f"{kind}.fxtap"
    data = bench_load.manifest(kind, n)
    bench_load.write(path, data)
    with pytest.raises(LoadError, match=message):
        load(path)


def test_long_paths_are_refused(tmp_path: Path) -> None:
    data = bench_load.manifest("modules", 1)
    deep = ".".join(["a"] * (_schema.MAX_PATH_PARTS + 1))
    data["modules"][deep] = data["modules"].pop("m0")
    path = tmp_path / "deep.fxtap"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("fxtap.json", json.dumps(data))
        archive.writestr("weights.safetensors", b"")
    with pytest.raises(LoadError, match=f"more than {_schema.MAX_PATH_PARTS} parts"):
        load(path)
