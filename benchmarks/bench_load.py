"""Benchmark the safe loader on synthetic files: time and peak memory against modules and nodes.

Each file is written directly (a manifest and an empty weights member): ``modules`` files hold N
top-level ``ReLU`` modules called one after another (N ``call_module`` nodes), ``nodes`` files
one module and a chain of N ``operator.add`` nodes in the train graph (the eval graph returns
its input), ``values`` files one node whose argument
is a list of N references to the input (the costliest argument value), ``strings`` files
such a list of N strings of the longest length allowed. Wall seconds and the child's CPU
seconds are both reported: on a shared machine the CPU seconds are what the load costs. Every file is loaded in a fresh child process (one torch thread)
that reports the load's wall seconds and its peak resident memory above the process before
the load (``VmHWM`` after resetting it through ``/proc/self/clear_refs``). The rows at the
caps (``fxtap.save._schema.MAX_MODULES`` and ``MAX_NODES``, ``fxtap.save._safe_load.MAX_VALUES``
and ``MAX_MANIFEST_BYTES``) are what docs/saving.md promises: under 10 s and under 500 MB.

Run:  python benchmarks/bench_load.py [--sizes 10000 20000 40000] [--at-caps] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import list_option  # noqa: E402
from fxtap.save._schema import MAX_STRING  # noqa: E402

__all__ = ["main", "manifest", "measure", "write"]

KINDS = ("modules", "nodes", "values", "strings")
SIZES = (10_000, 20_000, 40_000)


def _node(name: str, op: str, target: Any, args: list[Any]) -> dict[str, Any]:
    return {"name": name, "op": op, "target": target, "args": {"tuple": args},
            "kwargs": {"dict": []}}  # fmt: skip


def manifest(kind: str, n: int) -> dict[str, Any]:
    """A valid manifest of ``kind`` and size ``n`` (see the module docstring)."""
    import torch

    from fxtap.save import FORMAT_NAME, FORMAT_VERSION

    relu = {"class": "torch.nn.modules.activation:ReLU", "training": False,
            "config": {"inplace": False}, "parameters": {}, "buffers": {},
            "non_persistent": [], "modules": {}}  # fmt: skip
    count = n if kind == "modules" else 1
    modules = {f"m{i}": relu for i in range(count)}
    nodes = [_node("x", "placeholder", "x", [])]
    last = "x"
    if kind == "modules":
        for i in range(n):
            nodes.append(_node(f"m{i}", "call_module", f"m{i}", [{"node": last}]))
            last = f"m{i}"
    elif kind == "nodes":
        for i in range(n):
            add = {"function": "operator:add"}
            nodes.append(_node(f"add{i}", "call_function", add, [{"node": last}, 1]))
            last = f"add{i}"
    else:  # one node whose argument holds n references to the input, or n long strings
        items: list[Any] = [{"node": "x"}] * n if kind == "values" else ["s" * MAX_STRING] * n
        getitem = {"function": "operator:getitem"}
        nodes.append(_node("pick", "call_function", getitem, [items, 0]))
        last = "pick" if kind == "values" else "x"
    nodes.append(_node("output", "output", "output", [{"dict": [["out", {"node": last}]]}]))
    # a nodes file holds its chain in the train graph only: both would pass the values cap
    eval_nodes = [
        nodes[0],
        _node("output", "output", "output", [{"dict": [["out", {"node": "x"}]]}]),
    ]
    if kind != "nodes":
        eval_nodes = nodes
    eval_out = "x" if kind == "nodes" else last
    return {
        "format": FORMAT_NAME, "version": FORMAT_VERSION, "torch": torch.__version__,
        "class_name": "Chain", "training": False, "graphs": {"train": nodes, "eval": eval_nodes},
        "modules": modules, "attributes": {}, "tensors": {},
        "outputs": {"train": {"out": last}, "eval": {"out": eval_out}},
        "kept": {"train": [], "eval": []}, "opaque": [],
    }  # fmt: skip


def write(path: Path, data: dict[str, Any]) -> int:
    """Write a ``.fxtap`` file holding ``data`` and no tensors; its size in bytes."""
    # stored, not deflated: repetitive JSON deflates past the loader's ratio limit
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("fxtap.json", json.dumps(data))
        archive.writestr("weights.safetensors", b"")
    return path.stat().st_size


def _child(path: str) -> None:
    import torch

    from fxtap.errors import LoadError
    from fxtap.save import load

    torch.set_num_threads(1)
    Path("/proc/self/clear_refs").write_text("5")
    before = _status("VmRSS")
    start, cpu = time.perf_counter(), time.process_time()
    try:
        extractor = load(path)
        outcome = "loaded"
    except LoadError as exc:
        outcome = f"refused: {str(exc)[:120]}"
        extractor = None
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    peak = _status("VmHWM") - before
    if extractor is not None:
        extractor(torch.zeros(2))
    row = {"seconds": seconds, "cpu_seconds": cpu, "peak_mb": peak / 2**20, "outcome": outcome}
    print(json.dumps(row))


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def measure(kind: str, n: int, folder: Path) -> dict[str, Any]:
    """Write and load one file in a child process; its row."""
    path = folder / f"{kind}-{n}.fxtap"
    size = write(path, manifest(kind, n))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, __file__, "--child", str(path)],
        capture_output=True, text=True, env=env, check=True, timeout=600,
    )  # fmt: skip
    row = json.loads(run.stdout.strip().splitlines()[-1])
    path.unlink()
    return {"kind": kind, "n": n, "file_mb": size / 2**20, **row}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    list_option(parser, "--sizes", SIZES, "sizes of each kind", type=int)
    list_option(parser, "--kinds", KINDS, "kinds of file", choices=KINDS)
    parser.add_argument(
        "--at-caps", action="store_true", help="add one file of each kind at its cap (default: off)"
    )
    parser.add_argument("--json", action="store_true", help="also write bench_load-*.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # fmt: skip
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child)
        return 0
    from fxtap.save import _safe_load, _schema

    # a graph's placeholder and output count as nodes; a reference counts as two JSON
    # values, and both modes hold the graph
    caps = {"modules": _schema.MAX_MODULES, "nodes": _schema.MAX_NODES - 2,
            "values": _safe_load.MAX_VALUES // 4 - 500,
            "strings": _safe_load.MAX_MANIFEST_BYTES // (2 * (MAX_STRING + 3)) - 50}  # fmt: skip
    rows = []
    print(f"{'kind':8} {'n':>8} {'file MB':>8} {'load s':>8} {'CPU s':>8} {'peak MB':>8}  outcome")
    with tempfile.TemporaryDirectory() as folder:
        for kind in args.kinds:
            sizes = [*args.sizes, caps[kind]] if args.at_caps else args.sizes
            for n in sizes:
                row = measure(kind, n, Path(folder))
                rows.append(row)
                print(f"{kind:8} {n:>8} {row['file_mb']:>8.2f} {row['seconds']:>8.2f} "
                      f"{row['cpu_seconds']:>8.2f} {row['peak_mb']:>8.0f}  {row['outcome']}",
                      flush=True)  # fmt: skip
    if args.json:
        import torch

        name = f"bench_load-{platform.machine()}-torch{torch.__version__}.json"
        Path(name).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
