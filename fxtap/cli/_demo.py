"""The main job on one model: node table, extractor, drawings and cost report in one folder."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import torch

from fxtap._io import check_output, write_atomic
from fxtap.errors import DotNotFoundError, ensure_output_dir

__all__ = ["DemoResult", "run"]


@dataclass(frozen=True)
class DemoResult:
    """What ``run`` wrote.

    Attributes:
        out_dir: the folder written to.
        files: label -> path of each file written, in the order written.
        notes: what could not be done, and why (empty when everything ran).
    """

    out_dir: Path
    files: dict[str, Path] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def summary(self) -> str:
        """A short text listing every file written and any notes."""
        width = max((len(k) for k in self.files), default=0)
        lines = [f"fxtap demo wrote {len(self.files)} files to {self.out_dir}/:"]
        lines += [f"  {label.ljust(width)}  {path}" for label, path in self.files.items()]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def run(
    *,
    model_spec: str = "torchvision:resnet18",
    out_dir: str | os.PathLike[str] = "out",
    nodes: Sequence[str] = ("layer2", "layer4"),
    input: str | None = None,
    quick: bool = False,
    stream: TextIO | None = None,
) -> DemoResult:
    """Run every stage on one model and write the results to ``out_dir``.

    Writes ``nodes.txt`` and ``nodes.json`` (the eval node table with shapes), ``NAME.fxtap``
    (the extractor, reloaded once to check its outputs are identical), ``NAME.train.svg`` and
    ``NAME.eval.svg`` (drawings of the kept and pruned nodes; ``NAME.both.svg`` puts them side
    by side), ``cost.json`` and ``cost.txt``
    (the cost report). Needs no network: models are built with ``weights=None``.

    Args:
        model_spec: a model spec, as on the command line.
        out_dir: folder to write to (created when missing).
        nodes: the nodes to tap.
        input: example input shape such as ``1x3x224x224`` (default: that one).
        quick: time fewer rounds (for tests and a fast look).
        stream: where progress lines go (default: stderr).

    Returns:
        A ``DemoResult`` listing the files written; ``.summary()`` gives the text printed.

    Raises:
        OutputPathError: ``out_dir`` cannot be created or written.
        ModelSpecError, NodeNotFoundError: a bad model spec or node name.
    """
    from fxtap.cli._examples import make_inputs, parse_input
    from fxtap.cli._models import load_spec
    from fxtap.cli._output import format_table, progress, quiet_stderr
    from fxtap.extractor import create_feature_extractor
    from fxtap.names import node_table
    from fxtap.save import load, save

    folder = ensure_output_dir(out_dir, hint="Pick another with -o DIR")
    stem = model_spec.rpartition(":")[2].replace("/", "_").removesuffix(".py")
    for name in _NAMES + tuple(f"{stem}.{part}" for part in _STEM_PARTS):
        check_output(folder / name, hint="Pass another folder with -o DIR.")
    inputs = make_inputs([parse_input(input)] if input else None)
    files: dict[str, Path] = {}
    notes: list[str] = []
    total = 6

    def step(i: int, label: str) -> progress:
        return progress(f"demo [{i}/{total}] {label}", after=0, stream=stream)

    with step(1, f"building {model_spec}"):
        model = load_spec(model_spec)

    with step(2, "node table"):
        with quiet_stderr():
            rows = node_table(model, example_inputs=inputs)
        files["node table"] = _write(folder / "nodes.txt", format_table(rows, shapes=True) + "\n")
        data = [
            {**r.__dict__, "shape": list(r.shape) if r.shape is not None else None} for r in rows
        ]
        files["node table (JSON)"] = _write(folder / "nodes.json", json.dumps(data, indent=1))

    with step(3, f"extractor for {', '.join(nodes)}"):
        # saved for inference, as `fxtap extract` saves it
        extractor = create_feature_extractor(model, list(nodes), keep_traces=True).eval()
        path = save(extractor, folder / f"{stem}.fxtap")
        files["extractor"] = path
        reloaded = load(path)
        with torch.no_grad():
            a, b = extractor.eval()(*inputs), reloaded.eval()(*inputs)
        if not all(torch.equal(a[k], b[k]) for k in a):  # pragma: no cover - a save bug
            notes.append(f"{path} reloads with different outputs; please report it")

    with step(4, "drawing the train and eval graphs"):
        from fxtap.render import render

        try:
            result = render(extractor, out_dir=folder, name=stem, example_inputs=inputs)
        except DotNotFoundError:
            result = render(extractor, out_dir=folder, name=stem, example_inputs=inputs, fmt="dot")
            notes.append(
                "Graphviz's dot is not installed: wrote DOT text instead of SVGs "
                "(install it with 'apt-get install graphviz')"
            )
        files.update(_drawing_files(result.drawings))

    with step(5, "cost report (full model, hooks, extractor)"):
        from fxtap.cost import compare

        # The demo shows the report, it does not publish it: a few short rounds suffice.
        timing: dict[str, Any] = {"rounds": 3, "min_run_time": 0.05, "node_repeats": 1}
        if not quick:
            timing = {"rounds": 5, "min_run_time": 0.1, "node_repeats": 2}
        # NOTE: a few short rounds are noisy by design here; the report shows the IQR anyway.
        report = compare(model, list(nodes), inputs, progress=False, noise_threshold=None, **timing)
        cost_json = folder / "cost.json"
        report.to_json(cost_json)
        files["cost report"] = cost_json
        files["cost table"] = _write(folder / "cost.txt", report.table() + "\n")

    with step(6, "dataset job over generated images"):
        try:
            from fxtap.dataset import demo_job
        except ImportError as exc:  # pragma: no cover - zarr is in the dataset extra
            notes.append(f"dataset job skipped: {exc}; install the 'dataset' extra")
        else:
            job = demo_job(folder / "dataset", progress=(stream or sys.stderr).isatty())
            files["dataset images"] = folder / "dataset" / "images"
            files["feature store"] = folder / "dataset" / "features"
            notes.append(job.summary())
    return DemoResult(folder, files, tuple(notes))


#: Files the demo writes under fixed names, and the parts after the model's stem.
_NAMES = ("nodes.txt", "nodes.json", "cost.json", "cost.txt")
_STEM_PARTS = tuple(f"{m}.{ext}" for m in ("train", "eval", "both") for ext in ("svg", "dot"))
_STEM_PARTS += ("fxtap",)


def _drawing_files(drawings: Sequence[Any]) -> dict[str, Path]:
    """Label -> file of each drawing and its DOT text."""
    files = {}
    for drawing in drawings:
        label = "train and eval drawing" if drawing.mode == "both" else "drawing"
        label = f"{drawing.mode} {label}".removeprefix("both ")
        if drawing.path is not None:
            files[label] = drawing.path
        files[f"{label} (DOT)"] = drawing.dot_path
    return files


def _write(path: Path, text: str) -> Path:
    return write_atomic(path, text, hint="Pass a writable folder with -o DIR.")
