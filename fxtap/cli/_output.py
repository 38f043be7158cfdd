"""What the command line shows and writes: tables, progress, one-line errors, checked paths."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import torch

from fxtap._io import check_output, write_atomic
from fxtap.cli._parser import PROG
from fxtap.cli._words import cli_words
from fxtap.errors import FxtapError, UnsafeOutputError

__all__ = [
    "PROG",
    "check_outputs",
    "cli_words",
    "describe_extractor",
    "file_size",
    "format_table",
    "one_line",
    "one_line_text",
    "progress",
    "quiet_stderr",
    "row_dict",
    "show_warning",
    "write_text",
]


class progress:
    """Context manager printing ``fxtap: LABEL ...`` on stderr if the work takes over ``after`` s.

    Quick steps print nothing; slow ones say what they are doing and, at the end, how long
    they took.
    """

    def __init__(self, label: str, *, after: float = 2.0, stream: TextIO | None = None) -> None:
        self.label = label
        self.after = after
        self.stream = stream
        self.shown = False
        self.start = 0.0
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> progress:
        self.start = time.perf_counter()
        # The stream is fixed now, so that quiet_stderr() inside the block does not hide it.
        self.stream = self.stream if self.stream is not None else sys.stderr
        if self.after <= 0:
            self._show()
        else:
            self._timer = threading.Timer(self.after, self._show)
            self._timer.daemon = True
            self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._timer is not None:
            self._timer.cancel()
        with self._lock:
            if self.shown:
                elapsed = time.perf_counter() - self.start
                self._out().write(f"{PROG}: {self.label}: done in {elapsed:.1f} s\n")
                self._out().flush()
            self.shown = True  # a late timer must not print after the end

    def _show(self) -> None:
        with self._lock:
            if not self.shown:
                self.shown = True
                self._out().write(f"{PROG}: {self.label} ...\n")
                self._out().flush()

    def _out(self) -> TextIO:
        return self.stream if self.stream is not None else sys.stderr


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Hide what libraries print on stderr inside the block (torch.fx's ShapeProp prints a
    traceback for every failed node before fxtap turns the failure into one clear error)."""
    with contextlib.redirect_stderr(io.StringIO()):
        yield


def format_table(rows: Sequence[Any], *, shapes: bool) -> str:
    """The node table as aligned text columns, one node a line."""
    header = ["name", "op", "target", "module", "params"]
    if shapes:
        header += ["shape", "dtype"]
    lines = [header]
    for r in rows:
        line = [r.name, r.op, r.target, r.module_type or "-", f"{r.num_params:,}"]
        if shapes:
            shape = "x".join(map(str, r.shape)) if r.shape is not None else None
            line += [shape or getattr(r, "value", None) or "-", r.dtype or "-"]
        lines.append(line)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    right = {4}
    out = []
    for line in lines:
        cells = [
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths))
        ]
        out.append("  ".join(cells).rstrip())
    return "\n".join(out)


def describe_extractor(extractor: Any, values: dict[str, Any]) -> str:
    """One line per output: key, node, shape and dtype; then kept nodes and parameters."""
    mode = "train" if extractor.training else "eval"
    outputs = extractor.outputs[mode]
    lines = [f"{type(extractor).__name__} extractor in {mode} mode, {len(outputs)} output(s):"]
    width = max(len(str(k)) for k in outputs)
    for key, node in outputs.items():
        value = values.get(key)
        detail = (
            f"{'x'.join(map(str, value.shape))} {str(value.dtype).removeprefix('torch.')}"
            if isinstance(value, torch.Tensor)
            else type(value).__name__
        )
        lines.append(f"  {str(key).ljust(width)}  <- {node}  {detail}")
    other = "eval" if mode == "train" else "train"
    if extractor.outputs.get(other, outputs) != outputs:  # --train-nodes and --eval-nodes
        taps = ", ".join(f"{k} <- {n}" for k, n in extractor.outputs[other].items())
        lines.append(f"  in {other} mode instead: {taps}")
    params = sum(p.numel() for p in extractor.parameters())
    kept = getattr(extractor, "kept", None)
    if kept:
        lines.append(
            f"kept {len(kept['train'])} train / {len(kept['eval'])} eval nodes, "
            f"{params:,} parameters"
        )
    else:  # a CaptureExtractor runs the whole model
        lines.append(f"runs the whole model ({params:,} parameters) and captures the taps")
    return "\n".join(lines)


def check_outputs(args: Any) -> None:
    """Refuse, before any work, the output paths of a command that fxtap would not write.

    A file (``-o FILE``, ``--json``, ``--csv``, ``--plot``) must be a regular file or a new path
    in a folder that exists; a folder (``-o DIR``) must be a folder or a new path. A symbolic
    link, FIFO, socket or device node is refused (``UnsafeOutputError``, exit 2).
    """
    for flag, attr in (("-o", "output"), ("--json", "json"), ("--csv", "csv"), ("--plot", "plot")):
        value = getattr(args, attr, None)
        if value:
            check_output(value, hint=f"Pass another path with {flag} FILE.")
    folder = getattr(args, "out_dir", None)
    if folder and os.path.lexists(folder) and not os.path.isdir(folder):
        raise UnsafeOutputError(
            f"cannot write into {str(folder)!r}: it is not a folder. Pass a folder, or a new "
            "path to create, with -o DIR."
        )


def write_text(path: str, text: str) -> None:
    write_atomic(path, text, hint="Pick a path in a folder that exists.")


def row_dict(row: Any) -> dict[str, Any]:
    data = dataclasses.asdict(row)
    if data.get("shape") is not None:
        data["shape"] = list(data["shape"])
    return data


def file_size(path: Path) -> str:
    size = float(path.stat().st_size)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1000
    return ""  # pragma: no cover


def one_line(exc: BaseException) -> str:
    text = cli_words(" ".join(str(exc).split()))
    if not isinstance(exc, FxtapError | OSError):
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
        text += " (run with --debug for the traceback)"
    return text


def show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    text = one_line_text(str(message))
    source = _warning_source(message, category, filename)
    if source is None:
        print(f"{PROG}: warning: {cli_words(text)}", file=file or sys.stderr)
    else:  # another package's warning, in that package's words and under its name
        print(f"{PROG}: {source} warns: {category.__name__}: {text}", file=file or sys.stderr)


def _warning_source(message: Warning | str, category: type[Warning], filename: str) -> str | None:
    """The installed package that issued a warning (torchvision); ``None`` for fxtap's own.

    fxtap's warnings point at their caller (``stacklevel``), which may be any file, so only a
    warning raised inside another installed package is attributed to that package.
    """
    kind = type(message) if isinstance(message, Warning) else category
    path = Path(filename)
    if kind.__module__.split(".")[0] == "fxtap" or _PACKAGE in path.parents:
        return None
    parts = path.parts
    for marker in ("site-packages", "dist-packages"):
        if marker in parts[:-1]:
            return parts[parts.index(marker) + 1].removesuffix(".py")
    return None


_PACKAGE = Path(__file__).resolve().parents[1]


def one_line_text(text: str) -> str:
    return " ".join(text.split())
